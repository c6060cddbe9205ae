import { Component, OnInit, inject, signal } from '@angular/core';
import { RouterLink } from '@angular/router';

import { AuthService } from './auth.service';
import { ReviewList, ReviewsService } from './reviews.service';

/**
 * The public landing page: says whether there is a session, without forcing a login, and shows
 * the reviews (a public API: personal when signed in, anonymous otherwise).
 */
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
    <h2>Reviews</h2>
    @if (reviews(); as list) {
      <p id="reviews-caller">
        @if (list.sub) { The reviews API saw <code>{{ list.sub }}</code>. }
        @else { The reviews API saw an anonymous visitor. }
      </p>
      <ul id="reviews">
        @for (review of list.reviews; track review.product) {
          <li>{{ review.stars }}/5: {{ review.text }}</li>
        }
      </ul>
    } @else if (reviewsError()) {
      <p id="reviews-error" class="error">{{ reviewsError() }}</p>
    }
  `,
})
export class HomePage implements OnInit {
  protected readonly auth = inject(AuthService);
  private readonly reviewsApi = inject(ReviewsService);

  protected readonly reviews = signal<ReviewList | null>(null);
  protected readonly reviewsError = signal<string | null>(null);

  ngOnInit(): void {
    this.auth.refreshSignedIn().subscribe();
    this.reviewsApi.list().subscribe({
      next: (list) => this.reviews.set(list),
      error: (error: { status?: number }) =>
        this.reviewsError.set(`The reviews could not be loaded (HTTP ${error.status ?? 'error'}).`),
    });
  }
}
