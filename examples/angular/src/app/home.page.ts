import { Component, OnInit, inject } from '@angular/core';
import { RouterLink } from '@angular/router';

import { AuthService } from './auth.service';

/** The public landing page: says whether there is a session, without forcing a login. */
@Component({
  selector: 'app-home',
  imports: [RouterLink],
  template: `
    <h1>oidc-bff example</h1>
    @switch (auth.signedIn()) {
      @case (true) {
        <p id="status">You are signed in.</p>
        <p><a routerLink="/products">See the products</a></p>
      }
      @case (false) {
        <p id="status">You are signed out.</p>
        <button id="sign-in" type="button" (click)="auth.login('/products')">Sign in</button>
      }
      @default {
        <p>Checking your session…</p>
      }
    }
  `,
})
export class HomePage implements OnInit {
  protected readonly auth = inject(AuthService);

  ngOnInit(): void {
    this.auth.refreshSignedIn().subscribe();
  }
}
