import { inject } from '@angular/core';
import { CanActivateFn } from '@angular/router';
import { map } from 'rxjs';

import { AuthService } from './auth.service';

/**
 * Lets a route open only with a session. Without one, the browser goes to the gateway's
 * `/login` with the URL it wanted, and comes back to it after signing in (a deep link survives
 * the login).
 */
export const authGuard: CanActivateFn = (_route, state) => {
  const auth = inject(AuthService);
  return auth.refreshSignedIn().pipe(
    map((signedIn) => {
      if (!signedIn) {
        auth.login(state.url);
      }
      return signedIn;
    }),
  );
};
