// End-to-end proof in a real browser: Debian's Chromium (driven by playwright-core) logs in to
// the example Angular app through oidc-bff against a real OpenID provider (oidc-provider) and
// calls a real API that checks every bearer token at the provider. Everything runs over TLS on
// loopback, with the provider (127.0.0.1) and the gateway (localhost) on different sites.
//
//   node tests/e2e/run.mjs        (tests/run-all.sh runs it after `cargo test`)
//
// Environment: OIDC_BFF_BIN (default target/debug/oidc-bff), CHROMIUM (default
// /usr/bin/chromium), E2E_ARTIFACTS (screenshots and logs; default tests/e2e/artifacts).
// The run is bounded: each wait has its own timeout and the whole suite stops after 5 minutes.

import { createHash, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

import { angularDist, repo, startStack } from '../../examples/stack.mjs';

const ACCESS_TOKEN_TTL = 20; // seconds, at the provider
// How recent a sign-in /api/Account wants: shorter than the time steps 2 to 4 take (step 4
// waits out the token lifetime), so the step-up in step 4d must send the user to sign in again.
const STEP_UP_AGE = '15s';
const SUITE_LIMIT_MS = 5 * 60_000;
const artifacts = process.env.E2E_ARTIFACTS ?? join(repo, 'tests', 'e2e', 'artifacts');
const gatewayBin = process.env.OIDC_BFF_BIN ?? join(repo, 'target', 'debug', 'oidc-bff');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';

for (const [what, path] of [['oidc-bff binary (cargo build)', gatewayBin], ['Chromium (apt-get install chromium)', chromiumPath],
  ['built Angular app (cd examples/angular && npm ci && npx ng build)', join(angularDist, 'index.html')]]) {
  if (!existsSync(path)) {
    console.error(`e2e: missing ${what}: ${path}`);
    process.exit(2);
  }
}

rmSync(artifacts, { recursive: true, force: true });
mkdirSync(artifacts, { recursive: true });
console.log(`e2e: screenshots and logs go to ${artifacts}`);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const expect = (condition, message) => {
  if (!condition) throw new Error(message);
};
/** Waits (bounded) for a condition fed by another process's log. */
const eventually = async (condition, ms, message) => {
  const until = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > until) throw new Error(message);
    await sleep(50);
  }
};

// --- the stack and the browser ---------------------------------------------------------------

const tokenLog = join(artifacts, 'issued-tokens.jsonl');
const stack = await startStack({
  dir: join(artifacts, 'stack'),
  gatewayBin,
  accessTokenTtl: ACCESS_TOKEN_TTL,
  tokenLog,
  stepUpAge: STEP_UP_AGE,
  // Refresh on demand only (a token is refreshed when it has less than 5 s left), so the test
  // sees exactly when the gateway refreshed.
  gatewayArgs: ['--refresh-skew', '5s', '--refresh-ahead', '5s', '--refresh-interval', '1h'],
});
const { urls } = stack;
const provider = stack.services.provider;
const api = stack.services.api;

const limit = setTimeout(async () => {
  console.error(`e2e: the suite ran past ${SUITE_LIMIT_MS / 1000}s; stopping`);
  await stack.stop();
  process.exit(1);
}, SUITE_LIMIT_MS);

// Trust exactly the example's certificate (by its key), not "any certificate".
const spki = createHash('sha256')
  .update(new X509Certificate(readFileSync(stack.certs.cert)).publicKey.export({ type: 'spki', format: 'der' }))
  .digest('base64');
const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: [
    ...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
    '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync',
    `--ignore-certificate-errors-spki-list=${spki}`,
  ],
});
const context = await browser.newContext();
context.setDefaultTimeout(15_000);

// Everything the browser receives, from every site, for the token checks.
const seen = [];
const pending = [];
context.on('response', (response) => {
  pending.push((async () => {
    const entry = { url: response.url(), status: response.status(), headers: await response.allHeaders(), body: '' };
    if (response.status() < 300 || response.status() >= 400) {
      // A body the page navigated away from is gone from the browser too; counted, not read.
      entry.body = await response.text().catch(() => null);
    }
    seen.push(entry);
  })());
});

let page = await context.newPage();
let shot = 0;
const screenshot = async (name, target = page) => {
  shot += 1;
  await target.screenshot({ path: join(artifacts, `${String(shot).padStart(2, '0')}-${name}.png`), fullPage: true });
};

const steps = [];
async function step(name, body) {
  const started = Date.now();
  process.stdout.write(`e2e: ${name} ... `);
  try {
    await body();
    console.log(`ok (${((Date.now() - started) / 1000).toFixed(1)}s)`);
    steps.push(name);
  } catch (error) {
    console.log('FAILED');
    console.error(`\n${error.stack ?? error}`);
    for (const p of context.pages()) {
      console.error(`\npage ${p.url()}:\n${await p.locator('body').innerText().catch(() => '(no text)')}`);
      await p.screenshot({ path: join(artifacts, `failed-${steps.length + 1}.png`), fullPage: true }).catch(() => {});
    }
    for (const service of Object.values(stack.services)) {
      console.error(`\nlast lines of ${service.logFile}:`);
      console.error(readFileSync(service.logFile, 'utf8').split('\n').slice(-15).join('\n'));
    }
    await shutdown(1);
  }
}

async function shutdown(code) {
  clearTimeout(limit);
  await browser.close().catch(() => {});
  await stack.stop();
  process.exit(code);
}

// --- what the tests look at ------------------------------------------------------------------

const isGateway = (url) => new URL(url).origin === urls.gateway;
const isProvider = (url) => new URL(url).origin === urls.provider;
const onLoginPage = (target = page) =>
  target.waitForURL((url) => isProvider(url.href) && url.pathname.startsWith('/interaction/'));
/** Grants of `type`; with `resource` (a URI, or null for the broad token), only those. */
const grants = (type, resource) => provider.events.filter((e) => e.event === 'grant' && e.grant_type === type
  && (resource === undefined || (e.resource ?? null) === resource)).length;
const issuedTokens = () =>
  readFileSync(tokenLog, 'utf8').split('\n').filter(Boolean).map((line) => JSON.parse(line));

/** isAuth as the app sees it: a same-origin call from the page, with its cookie. */
const isAuth = async (target = page) => {
  const origin = new URL(target.url()).origin;
  const probe = origin === urls.gateway ? target : await context.newPage();
  if (probe !== target) await probe.goto(`${urls.gateway}/healthz`);
  const value = await probe.evaluate(async () => (await fetch('/api/isAuth')).json());
  if (probe !== target) await probe.close();
  return value;
};

/**
 * No token the provider issued (access, refresh, ID) appears in anything the browser received
 * or can read: response bodies and headers from every site, cookies, localStorage,
 * sessionStorage. The only exception is spec-mandated: RP-initiated logout sends the ID token
 * to the provider as `id_token_hint` in the logout redirect, so after a logout the ID token may
 * appear in that one Location header.
 */
async function assertNoTokenInBrowser() {
  await Promise.all(pending);
  const tokens = issuedTokens();
  expect(tokens.length > 0, 'the provider issued no tokens');
  const secrets = [];
  for (const issued of tokens) {
    for (const kind of ['access_token', 'refresh_token', 'id_token']) {
      if (issued[kind]) secrets.push({ kind, value: issued[kind] });
    }
  }
  const places = seen.map((r) => ({
    where: `${r.status} ${r.url}`,
    logoutRedirect: isGateway(r.url) && new URL(r.url).pathname === '/logout',
    headers: JSON.stringify(r.headers),
    body: r.body ?? '',
  }));
  for (const cookie of await context.cookies()) {
    places.push({ where: `cookie ${cookie.name} (${cookie.domain})`, headers: '', body: cookie.value });
  }
  for (const p of context.pages()) {
    const storage = await p.evaluate(() => JSON.stringify({
      local: { ...localStorage }, session: { ...sessionStorage }, cookie: document.cookie,
    })).catch(() => '');
    places.push({ where: `storage of ${p.url()}`, headers: '', body: storage });
  }
  for (const place of places) {
    for (const { kind, value } of secrets) {
      const inHeaders = place.headers.includes(value);
      if (inHeaders && kind === 'id_token' && place.logoutRedirect) continue;
      expect(!inHeaders && !place.body.includes(value), `the browser saw an ${kind} in ${place.where}`);
    }
  }
  // And nothing that even looks like a JWT came from the gateway.
  const jwt = /eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]+/;
  for (const r of seen.filter((r) => isGateway(r.url) && !new URL(r.url).pathname.startsWith('/logout'))) {
    expect(!jwt.test(r.body) && !jwt.test(JSON.stringify(r.headers)), `a JWT-shaped value in ${r.status} ${r.url}`);
  }
  return { responses: seen.length, unread: seen.filter((r) => r.body === null).length, tokens: secrets.length };
}

/** No token in any service's log either. */
function assertNoTokenInLogs() {
  const secrets = issuedTokens().flatMap((t) => [t.access_token, t.refresh_token, t.id_token]).filter(Boolean);
  for (const service of Object.values(stack.services)) {
    const text = readFileSync(service.logFile, 'utf8');
    for (const secret of secrets) expect(!text.includes(secret), `a token in ${service.logFile}`);
  }
}

/**
 * Fills the provider's login form and follows the browser back to `destination`, answering the
 * consent page when the provider shows one. Resolves to whether consent was asked.
 */
async function signIn(target, destination) {
  await target.fill('input[name=username]', stack.user);
  await target.fill('input[name=password]', stack.password);
  await target.click('button[type=submit]');
  const allow = target.getByRole('button', { name: 'Allow' });
  const where = await Promise.race([
    target.waitForURL(destination).then(() => 'back'),
    allow.waitFor().then(() => 'consent'),
  ]);
  if (where === 'consent') {
    await screenshot('provider-consent', target);
    await allow.click();
    await target.waitForURL(destination);
  }
  return where === 'consent';
}

// --- the steps -------------------------------------------------------------------------------

const deepLink = '/products?view=all';

await step('1. logged out: isAuth false, the guard sends the browser via /login to the provider', async () => {
  await page.goto(`${urls.gateway}/`);
  await page.getByText('You are signed out.').waitFor();
  expect(await isAuth() === false, 'isAuth is not false');
  // A public API (token=optional-user): answered without a session, as an anonymous visitor.
  await page.locator('#reviews li').nth(1).waitFor();
  expect((await page.locator('#reviews-caller').innerText()).includes('anonymous'), 'the reviews were not anonymous');
  await screenshot('signed-out-home');
  const loginHop = page.waitForRequest((r) => isGateway(r.url()) && new URL(r.url()).pathname === '/login');
  await page.goto(`${urls.gateway}${deepLink}`);
  const login = new URL((await loginHop).url());
  expect(login.searchParams.get('returnUrl') === deepLink, `returnUrl was ${login.searchParams.get('returnUrl')}`);
  await onLoginPage();
  await screenshot('provider-login');
});

await step('2. sign in (wrong password refused, then consent): back at the deep link, signed in', async () => {
  await page.fill('input[name=username]', stack.user);
  await page.fill('input[name=password]', 'not-the-password');
  await page.click('button[type=submit]');
  await page.getByText('Wrong username or password.').waitFor();
  expect(await signIn(page, `${urls.gateway}${deepLink}`), 'the provider asked no consent');
  await page.locator('#user-name').waitFor();
  expect(await page.locator('#user-name').innerText() === 'Alice Example', 'the user name is not shown');
  expect(await isAuth() === true, 'isAuth is not true after the login');
  const cookies = await context.cookies(urls.gateway);
  const session = cookies.find((c) => c.name === '__Host-bff');
  expect(session?.httpOnly && session.secure && session.sameSite === 'Strict', `session cookie attributes: ${JSON.stringify(session)}`);
  expect(grants('authorization_code') === 1, 'the provider did not see exactly one code exchange');
  await screenshot('signed-in');
});

let refreshesBefore = 0;
await step('3. products load: the API saw a valid token for alice; the browser never held one', async () => {
  await page.locator('#products tr').nth(3).waitFor();
  expect((await page.locator('#api-caller').innerText()).includes('user-alice'), 'the API did not see alice');
  await eventually(() => api.events.some((e) => e.path === '/products' && e.status === 200 && e.sub === 'user-alice'), 5_000,
    'the API log has no validated call for alice');
  expect(grants('refresh_token', null) === 0, 'a refresh happened before the token expired');
  // The products route sends a token for the products API alone (RFC 8707): one grant for it.
  expect(grants('refresh_token', stack.resources.products) === 1,
    `expected one grant for the products resource, saw ${grants('refresh_token', stack.resources.products)}`);
  refreshesBefore = grants('refresh_token');
  const checked = await assertNoTokenInBrowser();
  console.log(`\n    (${checked.responses} responses (${checked.unread} bodies discarded by a navigation), cookies and storage searched for ${checked.tokens} tokens)`);
  await screenshot('products');
});

await step(`4. past the access-token lifetime (${ACCESS_TOKEN_TTL}s): products still load, refreshed server-side`, async () => {
  await sleep((ACCESS_TOKEN_TTL + 1) * 1000);
  const calls = api.events.length;
  // The old rows stay on screen until the app renders the reload, so wait for the API
  // response itself, then for the rows it brought.
  const apiCall = page.waitForResponse((r) => r.url() === `${urls.gateway}/api/OtherApi1/products`);
  await page.click('#reload');
  expect((await apiCall).status() === 200, 'the reload did not get 200');
  await page.locator('#products tr').nth(3).waitFor();
  // The provider reports its grants on stdout, read here asynchronously.
  await eventually(() => grants('refresh_token') > refreshesBefore, 5_000, 'the provider saw no refresh grant');
  await eventually(() => api.events.slice(calls).some((e) => e.status === 200 && e.sub === 'user-alice'), 5_000,
    'the API saw no valid call after the refresh');
  expect(api.events.slice(calls).every((e) => e.status === 200), 'the API refused a call after the refresh');
  await assertNoTokenInBrowser();
  await screenshot('products-after-refresh');
});

/** GET `url` with `token` as bearer, trusting the example CA; resolves to the status. */
const callWith = (url, token) => new Promise((done, fail) => {
  const req = httpsRequest(url, { ca: readFileSync(stack.certs.ca), headers: { authorization: `Bearer ${token}` } },
    (res) => {
      res.resume();
      done(res.statusCode);
    });
  req.setTimeout(5_000, () => req.destroy(new Error(`${url} did not answer`)));
  req.on('error', fail);
  req.end();
});

await step('4b. audience-bound tokens: each API gets a token for itself alone; a token leaked by one is refused by the other', async () => {
  const reviews = await page.evaluate(async () => {
    const response = await fetch('/api/Reviews/reviews', { headers: { 'X-CSRF': '1' } });
    return { status: response.status, body: await response.json() };
  });
  expect(reviews.status === 200 && reviews.body.reviews.length === 2, `reviews: ${JSON.stringify(reviews)}`);
  const latest = (resource) => issuedTokens().filter((t) => (t.resource ?? null) === resource && t.access_token).at(-1).access_token;
  const products = latest(stack.resources.products);
  const review = latest(stack.resources.reviews);
  const broad = latest(null);
  expect(await callWith(`${urls.api}/products`, products) === 200, 'the products token does not work at products');
  expect(await callWith(`${urls.reviews}/reviews`, review) === 200, 'the reviews token does not work at reviews');
  expect(await callWith(`${urls.reviews}/reviews`, products) === 401, 'the products token was accepted by reviews');
  expect(await callWith(`${urls.api}/products`, review) === 401, 'the reviews token was accepted by products');
  expect(await callWith(`${urls.api}/products`, broad) === 401, 'the broad sign-in token was accepted by products');
  await assertNoTokenInBrowser();
});

await step('4c. the public page is personal when signed in; an admins-only route answers 403 before the API, and the app says so', async () => {
  await page.goto(`${urls.gateway}/`);
  await page.locator('#reviews li').nth(1).waitFor();
  expect((await page.locator('#reviews-caller').innerText()).includes('user-alice'),
    'the reviews API did not see alice on the public page');
  const calls = api.events.length;
  const refused = page.waitForResponse((r) => r.url() === `${urls.gateway}/api/Admin/products`);
  await page.goto(`${urls.gateway}/admin`);
  const answer = await refused;
  expect(answer.status() === 403, `the admin route answered ${answer.status()}`);
  // The body, asked for again from the page (the browser may drop an XHR's body once the app
  // has read it).
  const body = await page.evaluate(async () => {
    const response = await fetch('/api/Admin/products', { headers: { 'X-CSRF': '1' } });
    return { status: response.status, text: await response.text() };
  });
  expect(body.status === 403 && body.text === '{"error":"forbidden","policy":"admins"}',
    `not the policy's 403: ${JSON.stringify(body)}`);
  await page.locator('#admin-forbidden').waitFor();
  expect((await page.locator('#admin-forbidden').innerText()).includes('admins'), 'the 403 does not name the policy');
  expect(!(await page.locator('#admin-policies').innerText()).includes('admins'), '/api/user lists admins');
  expect(api.events.length === calls, 'a refused call reached the API');
  await screenshot('admin-forbidden');
});

await step(`4d. step-up: a route that wants a sign-in within ${STEP_UP_AGE} sends the app through the provider again, then loads`, async () => {
  const codeGrants = grants('authorization_code');
  const loginHop = page.waitForRequest((r) => isGateway(r.url()) && new URL(r.url()).pathname === '/login');
  const stepUp = page.waitForResponse((r) => r.url() === `${urls.gateway}/api/Account/products`);
  await page.goto(`${urls.gateway}/account`);
  const answer = await stepUp;
  expect(answer.status() === 401, `the step-up route answered ${answer.status()}`);
  expect((answer.headers()['www-authenticate'] ?? '').includes('insufficient_user_authentication'),
    `WWW-Authenticate: ${answer.headers()['www-authenticate']}`);
  const login = new URL((await loginHop).url());
  expect(login.searchParams.get('returnUrl') === '/account', `returnUrl was ${login.searchParams.get('returnUrl')}`);
  expect(login.searchParams.get('max_age') === String(parseInt(STEP_UP_AGE, 10)), `max_age was ${login.searchParams.get('max_age')}`);
  // The sign-in is older than the policy allows: the provider asks for the password again.
  await onLoginPage();
  await screenshot('step-up-login');
  await signIn(page, `${urls.gateway}/account`);
  await page.locator('#account-caller').waitFor();
  expect((await page.locator('#account-caller').innerText()).includes('user-alice'), 'the account page did not load');
  expect(grants('authorization_code') === codeGrants + 1, 'no new sign-in happened');
  await screenshot('step-up-done');
  await page.goto(`${urls.gateway}${deepLink}`);
  await page.locator('#products tr').nth(3).waitFor();
});

await step('5. restart oidc-bff: still signed in (the session survived in redb)', async () => {
  const codeGrants = grants('authorization_code');
  await stack.gateway.restart();
  await page.reload();
  await page.locator('#products tr').nth(3).waitFor();
  expect(page.url() === `${urls.gateway}${deepLink}`, `the page moved to ${page.url()}`);
  expect(await isAuth() === true, 'isAuth is not true after the restart');
  expect(grants('authorization_code') === codeGrants, 'a new login happened');
  await screenshot('after-restart');
});

let stale;
await step('6. sign out: signed out here and at the provider; a stale page\'s API call gets 401 and restarts the login', async () => {
  stale = await context.newPage();
  await stale.goto(`${urls.gateway}/products`);
  await stale.locator('#products tr').nth(3).waitFor();

  await page.click('#sign-out');
  await page.waitForURL((url) => isProvider(url.href));
  await screenshot('provider-logout-confirm');
  await page.getByRole('button', { name: 'Yes, sign me out' }).click();
  await page.waitForURL(`${urls.gateway}/`);
  await page.getByText('You are signed out.').waitFor();
  expect(await isAuth() === false, 'isAuth is not false after the logout');
  await eventually(() => provider.events.some((e) => e.event === 'end_session'), 5_000, 'the provider did not end its session');
  await screenshot('signed-out');

  const apiCall = stale.waitForResponse((r) => r.url() === `${urls.gateway}/api/OtherApi1/products`);
  await stale.click('#reload');
  expect((await apiCall).status() === 401, 'the stale page\'s API call was not refused with 401');
  // The provider's own session ended too: it asks for the password again instead of SSO.
  await onLoginPage(stale);
  await stale.locator('input[name=password]').waitFor();
  await screenshot('login-again-after-401', stale);
  await assertNoTokenInBrowser();
});

await step('7. back-channel logout: ending the session at the provider signs the browser out of oidc-bff', async () => {
  await signIn(stale, `${urls.gateway}/products`);
  await stale.locator('#products tr').nth(3).waitFor();
  expect(await isAuth(stale) === true, 'isAuth is not true after signing in again');

  const backchannels = provider.events.filter((e) => e.event === 'backchannel').length;
  const reports = () => provider.events.filter((e) => e.event === 'backchannel' || e.event === 'backchannel.error').length;
  const reportsBefore = reports();
  const idp = await context.newPage();
  await idp.goto(`${urls.provider}/session/end`);
  await idp.getByRole('button', { name: 'Yes, sign me out' }).click();
  await idp.getByText('You are signed out.').waitFor();
  await screenshot('provider-signed-out', idp);
  await eventually(() => reports() > reportsBefore, 10_000, 'the provider reported no back-channel logout');
  const failed = provider.events.filter((e) => e.event === 'backchannel.error');
  expect(failed.length === 0, `back-channel logout failed: ${JSON.stringify(failed)}`);
  expect(provider.events.filter((e) => e.event === 'backchannel').length > backchannels, 'the provider sent no back-channel logout');

  expect(await isAuth(stale) === false, 'isAuth is still true after the back-channel logout');
  await stale.click('#reload');
  await onLoginPage(stale);
  await screenshot('login-again-after-backchannel', stale);
  await assertNoTokenInBrowser();
  assertNoTokenInLogs();
});

console.log(`e2e: all ${steps.length} steps passed`);
await shutdown(0);
