import { HttpClient } from '@angular/common/http';
import { Injectable, inject } from '@angular/core';
import { Observable } from 'rxjs';

export interface Product {
  id: number;
  name: string;
  price: number;
}

/** What the products API answers: the caller it saw, and the list. */
export interface ProductList {
  sub: string;
  products: Product[];
}

/** The seed's "OtherApi1", reached through the gateway, which adds the bearer token. */
@Injectable({ providedIn: 'root' })
export class ProductsService {
  private readonly http = inject(HttpClient);

  /** The products from `path` (another route to the same API: `/api/Admin/products`, …). */
  list(path = '/api/OtherApi1/products'): Observable<ProductList> {
    return this.http.get<ProductList>(path);
  }
}
