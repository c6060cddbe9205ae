// A real OpenID provider for oidc-bff's demo and browser tests: the OpenID Certified npm package
// `oidc-provider`, configured like a production identity provider would be for a BFF:
//
// - one confidential client (`oidc-bff`, client_secret_basic) with authorization code + PKCE
//   (S256, required), refresh tokens that rotate on every use, RP-initiated logout and
//   back-channel logout with `sid`;
// - one resource server (`products-api`) that may only introspect tokens;
// - its own login and consent pages with one test user;
// - short access tokens (ACCESS_TOKEN_TTL seconds) so the refresh path is exercised.
//
// Configuration comes from the environment (see examples/stack.mjs, which starts it):
//   PROVIDER_ISSUER   https://127.0.0.1:9443     issuer; the port is taken from it
//   TLS_CERT/TLS_KEY  PEM files                   served certificate
//   GATEWAY_URL       https://localhost:8443      oidc-bff's public URL (redirect URIs)
//   CLIENT_SECRET     the oidc-bff client's secret
//   API_SECRET        the products-api client's secret
//   ACCESS_TOKEN_TTL  seconds (default 300)
//   DEMO_USER / DEMO_PASSWORD  the test user's credentials
//   TOKEN_LOG         tests only, see below
//   EXTRA_CLIENTS     more client registrations, a JSON array (bench/proxy.mjs uses it)
//   RESOURCE_SERVERS  RFC 8707 resource servers, a JSON object {"URI": "scope …"}: a refresh
//                     with resource=URI (named at sign-in) gets an access token whose audience
//                     is that URI alone, with those of its scopes the sign-in asked for
//
// One JSON line per protocol event goes to stdout (grant types, logouts, introspections), which
// the browser tests read to prove what happened server-side. Tokens are never printed.

import { createServer } from 'node:https';
import { generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { appendFileSync, readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    console.error(`provider: ${name} is required`);
    process.exit(64);
  }
  return value;
};

const issuer = env('PROVIDER_ISSUER');
const gateway = env('GATEWAY_URL').replace(/\/$/, '');
const accessTokenTtl = Number(env('ACCESS_TOKEN_TTL', '300'));
const user = {
  username: env('DEMO_USER', 'alice'),
  password: env('DEMO_PASSWORD'),
  claims: {
    name: 'Alice Example',
    preferred_username: 'alice',
    email: 'alice@example.test',
    email_verified: true,
  },
};
const accountId = `user-${user.username}`;
const resourceServers = JSON.parse(process.env.RESOURCE_SERVERS ?? '{}');

const log = (event, fields = {}) =>
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);

// A fresh signing key per start, as a provider that rotates keys would have. Tokens signed by a
// previous run stop validating, which is what a relying party must cope with anyway.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256' };

const configuration = {
  clients: [
    {
      client_id: 'oidc-bff',
      client_secret: env('CLIENT_SECRET'),
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [`${gateway}/signin-oidc`],
      post_logout_redirect_uris: [`${gateway}/`],
      backchannel_logout_uri: `${gateway}/backchannel-logout`,
      backchannel_logout_session_required: true,
    },
    // More clients, as JSON (the proxy benchmark registers Apache + mod_auth_openidc here).
    ...JSON.parse(process.env.EXTRA_CLIENTS ?? '[]'),
    {
      client_id: 'products-api',
      client_secret: env('API_SECRET'),
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  // Profile claims in the ID token too, as Keycloak, Entra ID and Auth0 do: oidc-bff reads the
  // user's claims from the ID token it validated.
  conformIdTokenClaims: false,
  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 24 * 3600,
    Interaction: 3600,
    Session: 24 * 3600,
    Grant: 24 * 3600,
  },
  // Rotate on every use: a reused refresh token then revokes the grant, which is why oidc-bff
  // must never run two refreshes of one session at once.
  rotateRefreshToken: true,
  // Like Keycloak: a refresh token for every code grant of a client that may refresh. Without an
  // explicit prompt=consent the OpenID spec drops `offline_access`, and such a refresh token then
  // lives only as long as the user's session at the provider (which is what a BFF wants: ending
  // that session ends the refresh token too).
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = page('Example Provider: sign out', `${form}
<p>Sign out of the Example Provider, and of every app you signed in to with it?</p>
<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = page('Example Provider: signed out', '<p>You are signed out.</p>');
      },
    },
    revocation: { enabled: true },
    // RFC 8707: tokens for one API alone. Without `resource` a token is the broad one (for
    // UserInfo); a resource never named at sign-in is refused (invalid_target).
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (ctx, indicator) => {
        const scope = resourceServers[indicator];
        if (!scope) throw new errors.InvalidTarget();
        return { scope, audience: indicator, accessTokenFormat: 'opaque', accessTokenTTL: accessTokenTtl };
      },
    },
    introspection: {
      enabled: true,
      // Only the resource server and the token's own client may look a token up.
      allowedPolicy: async (ctx, client, token) =>
        client.clientId === 'products-api' || client.clientId === token.clientId,
    },
  },
  findAccount: async (ctx, sub) =>
    sub === accountId
      ? { accountId, claims: async () => ({ sub: accountId, ...user.claims }) }
      : undefined,
  // Everything here runs on loopback; oidc-provider's SSRF guard (which refuses loopback
  // addresses for its own outgoing calls, such as back-channel logout) is for providers on a
  // network and would stop the demo's back-channel logout to https://localhost.
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Sign-in error', `<p class="error">${escape(out.error)}: ${escape(out.error_description ?? '')}</p>`);
  },
};

const provider = new Provider(issuer, configuration);

// Where the login and consent forms may lead: this provider and the clients' redirect URIs.
const clientOrigins = [...new Set(configuration.clients
  .flatMap((client) => client.redirect_uris ?? [])
  .map((uri) => new URL(uri).origin))].join(' ');
provider.proxy = false;

// Tests only: TOKEN_LOG names a file where every issued token is recorded, so the browser tests
// can prove that none of them ever reaches the browser. Never set it anywhere else.
const tokenLog = process.env.TOKEN_LOG;
provider.on('grant.success', (ctx) => {
  const { grant_type, resource } = ctx.oidc.params;
  log('grant', { grant_type, resource });
  if (tokenLog) {
    const { access_token, refresh_token, id_token } = ctx.body ?? {};
    appendFileSync(tokenLog, `${JSON.stringify({ grant_type, resource, access_token, refresh_token, id_token })}\n`, { mode: 0o600 });
  }
});
provider.on('grant.error', (ctx, error) =>
  log('grant.error', { grant_type: ctx.oidc.params?.grant_type, error: error.error }));
provider.on('end_session.success', () => log('end_session'));
provider.on('backchannel.success', (ctx, client) => log('backchannel', { client: client.clientId }));
provider.on('backchannel.error', (ctx, error, client) =>
  log('backchannel.error', { client: client.clientId, error: error.message }));
provider.on('introspection.error', (ctx, error) => log('introspection.error', { error: error.error }));
provider.on('server_error', (ctx, error) => log('server_error', { error: error.message }));

// --- login and consent pages -------------------------------------------------------------

const escape = (text) =>
  String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const page = (title, body) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem}
*{box-sizing:border-box}label,input,button{display:block;width:100%;margin:.4rem 0}input,button{padding:.5rem;font-size:1rem}
.error{color:#b00}.hint{color:#555;font-size:.9rem}</style></head>
<body><h1>${escape(title)}</h1>${body}</body></html>`;

const loginForm = (uid, error) => page('Example Provider: sign in', `
${error ? `<p class="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
  <label>Username <input name="username" autofocus required></label>
  <label>Password <input name="password" type="password" required></label>
  <button type="submit">Sign in</button>
</form>
<p class="hint">Test user: ${escape(user.username)} (the demo prints the password).</p>`);

const consentForm = (uid, client, scopes) => page('Example Provider: allow access', `
<p><b>${escape(client)}</b> asks for: ${scopes.map((s) => `<code>${escape(s)}</code>`).join(', ')}</p>
<form method="post" action="/interaction/${escape(uid)}/confirm">
  <button type="submit">Allow</button>
</form>`);

const readForm = (req) =>
  new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > 16 * 1024) {
        reject(new Error('form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });

const sameSecret = (given, expected) => {
  const a = Buffer.from(given ?? '');
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
};

const sendHtml = (res, status, html) => {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'x-frame-options': 'DENY',
    // form-action covers the redirects after a form post too: the consent form's answer ends
    // at the gateway's callback.
    'content-security-policy': `default-src 'none'; style-src 'unsafe-inline'; form-action 'self' ${clientOrigins}`,
  });
  res.end(html);
};

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    sendHtml(res, 400, page('Sign-in error', '<p class="error">This sign-in page has expired.</p>'));
    return;
  }
  const { prompt, params } = details;

  if (prompt.name === 'login') {
    if (req.method === 'GET') {
      sendHtml(res, 200, loginForm(uid));
      return;
    }
    if (action !== 'login') throw new Error('unexpected action');
    const form = await readForm(req);
    const ok = form.get('username') === user.username && sameSecret(form.get('password'), user.password);
    if (!ok) {
      log('login.failed');
      sendHtml(res, 200, loginForm(uid, 'Wrong username or password.'));
      return;
    }
    log('login', { sub: accountId });
    await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
    return;
  }

  if (prompt.name === 'consent') {
    const missing = prompt.details.missingOIDCScope ?? [];
    if (req.method === 'GET') {
      sendHtml(res, 200, consentForm(uid, params.client_id, params.scope.split(' ')));
      return;
    }
    if (action !== 'confirm') throw new Error('unexpected action');
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (missing.length) grant.addOIDCScope(missing.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    log('consent', { scopes: missing });
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }

  throw new Error(`unsupported prompt ${prompt.name}`);
}

const callback = provider.callback();
const interactionPath = /^\/interaction\/([\w-]+)(?:\/(login|confirm))?$/;

const server = createServer(
  { cert: readFileSync(env('TLS_CERT')), key: readFileSync(env('TLS_KEY')) },
  async (req, res) => {
    const { pathname } = new URL(req.url, issuer);
    const match = interactionPath.exec(pathname);
    const isForm = (match?.[2] && req.method === 'POST') || (!match?.[2] && req.method === 'GET');
    if (!match || !isForm) {
      callback(req, res);
      return;
    }
    try {
      await interaction(req, res, match[1], match[2]);
    } catch (error) {
      log('interaction.error', { error: error.message });
      if (!res.headersSent) {
        sendHtml(res, 400, page('Sign-in error', '<p class="error">This sign-in could not go on. Start again from the app.</p>'));
      }
    }
  },
);

const port = Number(new URL(issuer).port || 443);
server.listen(port, new URL(issuer).hostname.replace(/^\[|\]$/g, ''), () => log('listening', { issuer }));

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
