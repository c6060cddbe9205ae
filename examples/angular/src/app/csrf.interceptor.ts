import { HttpErrorResponse, HttpInterceptorFn } from '@angular/common/http';
import { inject } from '@angular/core';
import { Router } from '@angular/router';
import { catchError, throwError } from 'rxjs';

import { AuthService, LOGIN_ON_401 } from './auth.service';

/**
 * Two things for every call to the gateway's own origin:
 *
 * - `X-CSRF: 1`. oidc-bff refuses API calls without it (403): a cross-site form or image cannot
 *   set a custom header, and a cross-site script cannot either without a CORS preflight that the
 *   gateway never grants. The header is not a secret; it proves the call came from this app.
 * - A 401 means the session is gone (logged out elsewhere, expired, revoked at the provider):
 *   start the login again and come back to the page the user was on. A 401 with
 *   `insufficient_user_authentication` (RFC 9470 step-up: the route's policy wants a stronger or
 *   more recent sign-in) names the `loginUrl` that asks the provider for it: follow it instead.
 *
 * Calls to other origins are left alone: the header and the login are only for the gateway.
 */
export const csrfInterceptor: HttpInterceptorFn = (request, next) => {
  if (!isSameOrigin(request.url)) {
    return next(request);
  }
  const auth = inject(AuthService);
  const router = inject(Router);
  return next(request.clone({ setHeaders: { 'X-CSRF': '1' } })).pipe(
    catchError((error: unknown) => {
      if (error instanceof HttpErrorResponse && error.status === 401 && request.context.get(LOGIN_ON_401)) {
        const stepUp = stepUpLogin(error, router.url);
        if (stepUp) {
          window.location.assign(stepUp);
        } else {
          auth.login(router.url);
        }
      }
      return throwError(() => error);
    }),
  );
};

function isSameOrigin(url: string): boolean {
  return new URL(url, window.location.href).origin === window.location.origin;
}

/**
 * The gateway's step-up answer names a `loginUrl` (`/login?returnUrl=…&max_age=…`): the same,
 * coming back to `returnUrl`. Only a local `/login?…` is followed.
 */
function stepUpLogin(error: HttpErrorResponse, returnUrl: string): string | null {
  const body = error.error as { error?: string; loginUrl?: string } | null;
  if (body?.error !== 'insufficient_user_authentication' || !body.loginUrl?.startsWith('/login?')) {
    return null;
  }
  const url = new URL(body.loginUrl, window.location.origin);
  url.searchParams.set('returnUrl', returnUrl);
  return `${url.pathname}${url.search}`;
}
