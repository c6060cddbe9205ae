import { Component, OnInit, inject } from '@angular/core';
import { RouterLink, RouterOutlet } from '@angular/router';

import { AuthService } from './auth.service';

@Component({
  selector: 'app-root',
  imports: [RouterLink, RouterOutlet],
  template: `
    <header>
      <a routerLink="/">oidc-bff example</a>
      <nav>
        <a routerLink="/products">Products</a>
        <a routerLink="/admin">Admin</a>
        <a routerLink="/account">Account</a>
      </nav>
      <span class="spacer"></span>
      @if (auth.user(); as user) {
        <span id="header-user">{{ user.name ?? user.sub }}</span>
        <button id="sign-out" type="button" (click)="auth.logout()">Sign out</button>
      }
    </header>
    <main><router-outlet /></main>
  `,
})
export class App implements OnInit {
  protected readonly auth = inject(AuthService);

  ngOnInit(): void {
    this.auth.loadUser().subscribe();
  }
}
