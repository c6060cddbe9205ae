import { HttpClient, HttpContext, HttpContextToken } from '@angular/common/http';
import { Injectable, inject, signal } from '@angular/core';
import { Observable, catchError, of, tap } from 'rxjs';

/**
 * Set to `false` on a request whose 401 the caller handles itself (e.g. `/api/user` on a public
 * page, where "no session" is an answer, not a reason to log in). See the interceptor.
 */
export const LOGIN_ON_401 = new HttpContextToken<boolean>(() => true);

/** What oidc-bff's `GET /api/user` answers: the user's claims, never a token. */
export interface User {
  sub: string;
  name?: string;
  preferred_username?: string;
  email?: string;
  /** `/logout?sid=…`: a plain navigation ends the session here and at the provider. */
  logoutUrl: string;
  /** Seconds until the session ends (idle or absolute), whichever comes first. */
  sessionExpiresIn: number;
  /** The gateway's policies this user satisfies (to hide what the user cannot use). */
  policies: string[];
}

/**
 * The app's view of the session that oidc-bff keeps. The browser holds only an HttpOnly cookie;
 * everything here is asked of the gateway.
 */
@Injectable({ providedIn: 'root' })
export class AuthService {
  private readonly http = inject(HttpClient);

  /** The signed-in user, once known. */
  readonly user = signal<User | null>(null);

  /** `GET /api/isAuth`: `true` or `false`, never a 401. */
  isAuthenticated(): Observable<boolean> {
    return this.http.get<boolean>('/api/isAuth').pipe(catchError(() => of(false)));
  }

  /** `GET /api/user`; `null` when there is no session. */
  loadUser(): Observable<User | null> {
    const context = new HttpContext().set(LOGIN_ON_401, false);
    return this.http.get<User>('/api/user', { context }).pipe(
      tap((user) => this.user.set(user)),
      catchError(() => {
        this.user.set(null);
        return of(null);
      }),
    );
  }

  /**
   * Starts the login at the gateway, which sends the browser on to the provider and back to
   * `returnUrl` (a path inside this app) afterwards. A full navigation, not an XHR: the login is
   * a chain of redirects across sites.
   */
  login(returnUrl: string): void {
    window.location.assign(`/login?returnUrl=${encodeURIComponent(returnUrl)}`);
  }

  /** Ends the session at the gateway and the provider (`logoutUrl` from `/api/user`). */
  logout(): void {
    const user = this.user();
    window.location.assign(user ? user.logoutUrl : '/');
  }

  /** Whether a session exists, as a plain boolean for templates. */
  readonly signedIn = signal<boolean | null>(null);

  /** Asks `/api/isAuth` and records the answer in `signedIn`. */
  refreshSignedIn(): Observable<boolean> {
    return this.isAuthenticated().pipe(tap((value) => this.signedIn.set(value)));
  }
}
