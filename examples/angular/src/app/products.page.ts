import { CurrencyPipe } from '@angular/common';
import { Component, OnInit, inject, signal } from '@angular/core';

import { AuthService } from './auth.service';
import { ProductList, ProductsService } from './products.service';

/** Behind the guard: the user (from `/api/user`) and the products (from the API, via the gateway). */
@Component({
  selector: 'app-products',
  imports: [CurrencyPipe],
  template: `
    <h1>Products</h1>
    @if (auth.user(); as user) {
      <p id="user">Signed in as <b id="user-name">{{ user.name ?? user.preferred_username ?? user.sub }}</b></p>
    }
    @if (list(); as list) {
      <p id="api-caller">The API saw the caller <code>{{ list.sub }}</code>.</p>
      <table id="products">
        <tr><th>Product</th><th>Price</th></tr>
        @for (product of list.products; track product.id) {
          <tr><td>{{ product.name }}</td><td>{{ product.price | currency: 'EUR' }}</td></tr>
        }
      </table>
    } @else if (error()) {
      <p id="products-error" class="error">{{ error() }}</p>
    } @else {
      <p>Loading products…</p>
    }
    <p><button id="reload" type="button" (click)="load()">Reload products</button></p>
  `,
})
export class ProductsPage implements OnInit {
  protected readonly auth = inject(AuthService);
  private readonly products = inject(ProductsService);

  protected readonly list = signal<ProductList | null>(null);
  protected readonly error = signal<string | null>(null);

  ngOnInit(): void {
    this.auth.loadUser().subscribe();
    this.load();
  }

  load(): void {
    this.list.set(null);
    this.error.set(null);
    this.products.list().subscribe({
      next: (list) => this.list.set(list),
      // A 401 has already sent the browser to the login (see the interceptor).
      error: (error: { status?: number }) =>
        this.error.set(`The products could not be loaded (HTTP ${error.status ?? 'error'}).`),
    });
  }
}
