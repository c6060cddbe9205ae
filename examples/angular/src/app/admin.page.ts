import { CurrencyPipe } from '@angular/common';
import { HttpErrorResponse } from '@angular/common/http';
import { Component, OnInit, inject, signal } from '@angular/core';

import { AuthService } from './auth.service';
import { ProductList, ProductsService } from './products.service';

/**
 * For administrators only: the gateway checks the route's policy (`admins`) and answers 403
 * `{"error":"forbidden","policy":"admins"}` to anyone else, before anything reaches the API. The
 * app renders that answer; `/api/user`'s `policies` tells it in advance.
 */
@Component({
  selector: 'app-admin',
  imports: [CurrencyPipe],
  template: `
    <h1>Administration</h1>
    @if (auth.user(); as user) {
      <p id="admin-policies">Your policies: {{ user.policies.length ? user.policies.join(', ') : 'none' }}.</p>
    }
    @if (list(); as list) {
      <table id="admin-products">
        <tr><th>Product</th><th>Price</th></tr>
        @for (product of list.products; track product.id) {
          <tr><td>{{ product.name }}</td><td>{{ product.price | currency: 'EUR' }}</td></tr>
        }
      </table>
    } @else if (forbidden()) {
      <p id="admin-forbidden" class="error">
        Only administrators may see this page (the gateway's policy <code>{{ forbidden() }}</code> refused your account).
      </p>
    } @else if (error()) {
      <p id="admin-error" class="error">{{ error() }}</p>
    } @else {
      <p>Loading…</p>
    }
  `,
})
export class AdminPage implements OnInit {
  protected readonly auth = inject(AuthService);
  private readonly products = inject(ProductsService);

  protected readonly list = signal<ProductList | null>(null);
  protected readonly forbidden = signal<string | null>(null);
  protected readonly error = signal<string | null>(null);

  ngOnInit(): void {
    this.auth.loadUser().subscribe();
    this.products.list('/api/Admin/products').subscribe({
      next: (list) => this.list.set(list),
      error: (error: HttpErrorResponse) => {
        const body = error.error as { error?: string; policy?: string } | null;
        if (error.status === 403 && body?.error === 'forbidden') {
          this.forbidden.set(body.policy ?? 'unknown');
        } else {
          this.error.set(`The page could not be loaded (HTTP ${error.status}).`);
        }
      },
    });
  }
}
