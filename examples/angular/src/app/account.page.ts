import { CurrencyPipe } from '@angular/common';
import { Component, OnInit, inject, signal } from '@angular/core';

import { ProductList, ProductsService } from './products.service';

/**
 * A page whose API route needs a recent sign-in (the gateway's policy `recent`, an `auth-age`
 * rule). When the sign-in is older, the gateway answers 401 with a step-up `loginUrl` (RFC 9470)
 * and the interceptor sends the browser through the provider again; the page then loads.
 */
@Component({
  selector: 'app-account',
  imports: [CurrencyPipe],
  template: `
    <h1>Your account</h1>
    <p>This page needs a recent sign-in.</p>
    @if (list(); as list) {
      <p id="account-caller">Recently signed in as <code>{{ list.sub }}</code>.</p>
      <table id="account-products">
        @for (product of list.products; track product.id) {
          <tr><td>{{ product.name }}</td><td>{{ product.price | currency: 'EUR' }}</td></tr>
        }
      </table>
    } @else if (error()) {
      <p id="account-error" class="error">{{ error() }}</p>
    } @else {
      <p>Loading…</p>
    }
  `,
})
export class AccountPage implements OnInit {
  private readonly products = inject(ProductsService);

  protected readonly list = signal<ProductList | null>(null);
  protected readonly error = signal<string | null>(null);

  ngOnInit(): void {
    this.products.list('/api/Account/products').subscribe({
      next: (list) => this.list.set(list),
      // A 401 (session gone, or a step-up) has already sent the browser on (the interceptor).
      error: (error: { status?: number }) => this.error.set(`HTTP ${error.status ?? 'error'}`),
    });
  }
}
