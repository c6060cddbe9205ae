import { HttpClient, HttpContext } from '@angular/common/http';
import { Injectable, inject } from '@angular/core';
import { Observable } from 'rxjs';

import { LOGIN_ON_401 } from './auth.service';

export interface Review {
  product: number;
  stars: number;
  text: string;
}

/** What the reviews API answers: the caller it saw (`null`: nobody signed in), and the list. */
export interface ReviewList {
  sub: string | null;
  reviews: Review[];
}

/**
 * A public API (`token=optional-user`): anyone may read it; a signed-in user's calls carry a
 * token meant for the reviews API alone, and the API answers them in person.
 */
@Injectable({ providedIn: 'root' })
export class ReviewsService {
  private readonly http = inject(HttpClient);

  list(): Observable<ReviewList> {
    const context = new HttpContext().set(LOGIN_ON_401, false);
    return this.http.get<ReviewList>('/api/Reviews/reviews', { context });
  }
}
