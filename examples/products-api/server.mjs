// A tiny products API behind oidc-bff (the seed's "OtherApi1"). It trusts nothing the gateway
// says: every call's bearer token is checked at the provider's introspection endpoint (RFC 7662)
// with the API's own client credentials. No valid token, no products: 401 with a
// WWW-Authenticate header, as a resource server answers (RFC 6750).
//
// Node's standard library only. Configuration from the environment (examples/stack.mjs sets it):
//   API_LISTEN          https://127.0.0.1:7002   where to listen
//   TLS_CERT/TLS_KEY    PEM files
//   PROVIDER_ISSUER     the provider; its discovery names the introspection endpoint
//   API_CLIENT_ID       products-api
//   API_SECRET          the API's client secret
//   EXPECTED_CLIENT     oidc-bff: tokens must have been issued to this client
//   EXPECTED_AUDIENCE   when set, tokens must be for this resource alone (`aud`, RFC 8707):
//                       a token meant for another API is refused here
//   API_KIND            products (default: GET /products) or reviews (GET /reviews)
//   ALLOW_ANONYMOUS     1: a call without a token is answered too, as an anonymous visitor's
//                       (a public API; a token that is there must still be valid)
//
// One JSON line per call goes to stdout (status and the caller's sub, never the token).

import { createServer } from 'node:https';
import { readFileSync } from 'node:fs';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    console.error(`products-api: ${name} is required`);
    process.exit(64);
  }
  return value;
};

const listen = new URL(env('API_LISTEN', 'https://127.0.0.1:7002'));
const issuer = env('PROVIDER_ISSUER');
const clientId = env('API_CLIENT_ID', 'products-api');
const secret = env('API_SECRET');
const expectedClient = env('EXPECTED_CLIENT', 'oidc-bff');
const expectedAudience = process.env.EXPECTED_AUDIENCE;
const kind = env('API_KIND', 'products');
const allowAnonymous = process.env.ALLOW_ANONYMOUS === '1';

const log = (fields) => process.stdout.write(`${JSON.stringify(fields)}\n`);

const data = {
  products: [
    { id: 1, name: 'Espresso machine', price: 249.0 },
    { id: 2, name: 'Burr grinder', price: 129.5 },
    { id: 3, name: 'Milk jug', price: 14.9 },
  ],
  reviews: [
    { product: 1, stars: 5, text: 'Makes a fine espresso.' },
    { product: 2, stars: 4, text: 'Even grind, a little loud.' },
  ],
};
if (!data[kind]) {
  console.error(`products-api: API_KIND must be products or reviews, not ${kind}`);
  process.exit(64);
}

let introspectionEndpoint;
async function introspectionUrl() {
  if (!introspectionEndpoint) {
    const response = await fetch(new URL('.well-known/openid-configuration', `${issuer.replace(/\/$/, '')}/`));
    if (!response.ok) throw new Error(`discovery answered ${response.status}`);
    introspectionEndpoint = (await response.json()).introspection_endpoint;
    if (!introspectionEndpoint) throw new Error('the provider has no introspection endpoint');
  }
  return introspectionEndpoint;
}

// Returns the token's introspection answer when it is active and meant for us, else undefined.
async function validate(token) {
  const response = await fetch(await introspectionUrl(), {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ token, token_type_hint: 'access_token' }),
    signal: AbortSignal.timeout(5000),
  });
  if (!response.ok) throw new Error(`introspection answered ${response.status}`);
  const claims = await response.json();
  const usable = claims.active === true
    && claims.token_type === 'Bearer'
    && claims.client_id === expectedClient
    && typeof claims.sub === 'string'
    && (!expectedAudience || [claims.aud].flat().includes(expectedAudience));
  return usable ? claims : undefined;
}

const send = (res, status, body, headers = {}) => {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
};

const server = createServer(
  { cert: readFileSync(env('TLS_CERT')), key: readFileSync(env('TLS_KEY')) },
  async (req, res) => {
    const { pathname } = new URL(req.url, listen);
    const bearer = /^Bearer ([\x21-\x7e]+)$/.exec(req.headers.authorization ?? '')?.[1];
    if (!bearer && allowAnonymous && req.method === 'GET' && pathname === `/${kind}`) {
      log({ path: pathname, status: 200, sub: null });
      send(res, 200, { sub: null, [kind]: data[kind] });
      return;
    }
    if (!bearer) {
      log({ path: pathname, status: 401, reason: 'no bearer token' });
      send(res, 401, { error: 'unauthorized' }, { 'www-authenticate': 'Bearer' });
      return;
    }
    let claims;
    try {
      claims = await validate(bearer);
    } catch (error) {
      log({ path: pathname, status: 503, reason: error.message });
      send(res, 503, { error: 'token validation unavailable' });
      return;
    }
    if (!claims) {
      log({ path: pathname, status: 401, reason: 'invalid token' });
      send(res, 401, { error: 'invalid_token' }, { 'www-authenticate': 'Bearer error="invalid_token"' });
      return;
    }
    if (req.method === 'GET' && pathname === `/${kind}`) {
      log({ path: pathname, status: 200, sub: claims.sub, aud: claims.aud });
      send(res, 200, { sub: claims.sub, [kind]: data[kind] });
      return;
    }
    log({ path: pathname, status: 404, sub: claims.sub });
    send(res, 404, { error: 'not found' });
  },
);

server.listen(Number(listen.port), listen.hostname.replace(/^\[|\]$/g, ''), () =>
  log({ event: 'listening', url: listen.href }));

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
