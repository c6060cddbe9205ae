// Starts the whole example on loopback: a demo CA and certificate, the OpenID provider
// (examples/provider), two APIs (examples/products-api: products and reviews, each accepting
// only tokens meant for it alone) and oidc-bff serving the built Angular app
// (examples/angular). Used by examples/demo.mjs and by the browser tests in
// tests/e2e. Node's standard library only; certificates come from the openssl command.
//
// Sites, as in production: the provider is https://127.0.0.1:<port> and the gateway is
// https://localhost:<port>, so the login is a real cross-site redirect chain.

import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, createWriteStream, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const examples = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(examples, '..');
export const angularDist = join(examples, 'angular', 'dist', 'oidc-bff-example', 'browser');

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.unref();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  if (result.error) throw new Error(`${command}: ${result.error.message}`);
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${result.status}):\n${result.stderr}`);
  }
  return result.stdout.toString();
}

/**
 * A throwaway CA and one server certificate for localhost, 127.0.0.1 and ::1 in `dir`. The
 * gateway trusts the CA for the provider and the API (--ca-file); the Node processes trust it
 * through NODE_EXTRA_CA_CERTS.
 */
export function makeCertificates(dir) {
  mkdirSync(dir, { recursive: true });
  const file = (name) => join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  run('openssl', ['req', '-x509', ...ec, '-keyout', file('ca.key'), '-out', file('ca.pem'),
    '-days', '30', '-subj', '/CN=oidc-bff example CA',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  run('openssl', ['req', ...ec, '-keyout', file('server.key'), '-out', file('server.csr'),
    '-subj', '/CN=localhost']);
  writeFileSync(file('server.ext'), [
    'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1',
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
  ].join('\n'));
  run('openssl', ['x509', '-req', '-in', file('server.csr'), '-CA', file('ca.pem'),
    '-CAkey', file('ca.key'), '-CAcreateserial', '-out', file('server.pem'), '-days', '30',
    '-extfile', file('server.ext')]);
  return { ca: file('ca.pem'), cert: file('server.pem'), key: file('server.key') };
}

/** GET `url` trusting `ca`; resolves to the status code (or 0 when nothing answers). */
export function probe(url, ca) {
  return new Promise((done) => {
    const req = request(url, { ca: readFileSync(ca), timeout: 2000 }, (res) => {
      res.resume();
      done(res.statusCode);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => done(0));
    req.end();
  });
}

/** Polls `check` until it holds; fails early when `child` exits while starting. */
export async function waitFor(what, check, child, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited (${child.exitCode}) while starting; see its log`);
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not come up within ${timeoutMs / 1000}s; see its log`);
}

/**
 * One child process. Its output goes, line by line, to `<logs>/<name>.log`, to `echo` when
 * given, and (parsed) to `events` when a line is JSON.
 */
export class Service {
  constructor(name, logs, echo) {
    this.name = name;
    this.events = [];
    this.logFile = join(logs, `${name}.log`);
    this.log = createWriteStream(this.logFile, { flags: 'a' });
    this.echo = echo;
    this.child = null;
  }

  /**
   * Starts the service. With `direct`, its output goes straight to the log file, not through
   * this process (whose event loop a benchmark blocks while it waits for its load generator):
   * no events are parsed then.
   */
  start(command, args, env, { direct = false } = {}) {
    if (direct) {
      const fd = openSync(this.logFile, 'a');
      const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', fd, fd] });
      closeSync(fd);
      this.child = child;
      child.on('exit', (code, signal) => this.log.write(`-- exited: code ${code} signal ${signal}\n`));
      return child;
    }
    const child = spawn(command, args, {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    for (const stream of [child.stdout, child.stderr]) {
      let rest = '';
      stream.on('data', (chunk) => {
        const lines = (rest + chunk.toString()).split('\n');
        rest = lines.pop();
        for (const line of lines) this.line(line);
      });
    }
    child.on('exit', (code, signal) => this.log.write(`-- exited: code ${code} signal ${signal}\n`));
    return child;
  }

  line(line) {
    this.log.write(`${line}\n`);
    this.echo?.(this.name, line);
    if (line.startsWith('{')) {
      try {
        this.events.push(JSON.parse(line));
      } catch {
        // not an event
      }
    }
  }

  /** SIGTERM, by PID, and wait for the exit; resolves to the exit code. */
  stop(timeoutMs = 35_000) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      return Promise.resolve(child?.exitCode ?? null);
    }
    return new Promise((done) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      child.once('exit', (code) => {
        clearTimeout(timer);
        done(code);
      });
      child.kill('SIGTERM');
    });
  }
}

/**
 * Starts everything and resolves to a handle:
 * `{ urls, user, password, services, gateway: { restart, stop }, stop }`.
 *
 * Options: `dir` (work directory, created), `gatewayBin` (the oidc-bff binary), `ports`
 * (`gateway`, `provider`, `api`; free ones are picked when absent), `accessTokenTtl` seconds,
 * `gatewayArgs` (extra flags), `stepUpAge` (how recent a sign-in `/api/Account` wants;
 * default 5m), `frontendUrl` (a dev server such as `ng serve`, instead of the
 * built app), `echo(name, line)` for live output, `tokenLog` (tests only: a file
 * where the provider records the tokens it issues, so a test can look for them in the browser).
 */
export async function startStack(options) {
  const dir = resolve(options.dir);
  const logs = join(dir, 'logs');
  mkdirSync(logs, { recursive: true });
  const ports = {
    gateway: options.ports?.gateway ?? (await freePort()),
    provider: options.ports?.provider ?? (await freePort()),
    api: options.ports?.api ?? (await freePort()),
    reviews: options.ports?.reviews ?? (await freePort()),
  };
  const urls = {
    gateway: `https://localhost:${ports.gateway}`,
    provider: `https://127.0.0.1:${ports.provider}`,
    api: `https://127.0.0.1:${ports.api}`,
    reviews: `https://127.0.0.1:${ports.reviews}`,
  };
  // RFC 8707 resource indicators: each API accepts only tokens whose audience is its own.
  const resources = {
    products: 'https://products.example/',
    reviews: 'https://reviews.example/',
  };
  const certs = makeCertificates(join(dir, 'tls'));
  const secret = () => randomBytes(24).toString('base64url');
  const clientSecret = secret();
  const apiSecret = secret();
  const user = 'alice';
  const password = options.password ?? `demo-${randomBytes(6).toString('hex')}`;
  const secretFile = join(dir, 'client-secret');
  writeFileSync(secretFile, clientSecret, { mode: 0o600 });
  const node = { NODE_EXTRA_CA_CERTS: certs.ca };
  const tls = { TLS_CERT: certs.cert, TLS_KEY: certs.key };

  const provider = new Service('provider', logs, options.echo);
  const api = new Service('products-api', logs, options.echo);
  const reviews = new Service('reviews-api', logs, options.echo);
  const gateway = new Service('oidc-bff', logs, options.echo);
  const services = { provider, api, reviews, gateway };
  const stopAll = async () => {
    await Promise.all([gateway.stop(), api.stop(), reviews.stop(), provider.stop()]);
  };

  try {
    provider.start(process.execPath, [join(examples, 'provider', 'provider.mjs')], {
      ...node, ...tls,
      PROVIDER_ISSUER: urls.provider,
      GATEWAY_URL: urls.gateway,
      CLIENT_SECRET: clientSecret,
      API_SECRET: apiSecret,
      ACCESS_TOKEN_TTL: String(options.accessTokenTtl ?? 300),
      DEMO_USER: user,
      DEMO_PASSWORD: password,
      RESOURCE_SERVERS: JSON.stringify({
        [resources.products]: 'products:read',
        [resources.reviews]: 'reviews:read',
      }),
      ...(options.tokenLog ? { TOKEN_LOG: options.tokenLog } : {}),
    });
    api.start(process.execPath, [join(examples, 'products-api', 'server.mjs')], {
      ...node, ...tls,
      API_LISTEN: urls.api,
      PROVIDER_ISSUER: urls.provider,
      API_SECRET: apiSecret,
      EXPECTED_AUDIENCE: resources.products,
    });
    reviews.start(process.execPath, [join(examples, 'products-api', 'server.mjs')], {
      ...node, ...tls,
      API_LISTEN: urls.reviews,
      API_KIND: 'reviews',
      ALLOW_ANONYMOUS: '1',
      PROVIDER_ISSUER: urls.provider,
      API_SECRET: apiSecret,
      EXPECTED_AUDIENCE: resources.reviews,
    });
    await waitFor('provider', async () =>
      (await probe(`${urls.provider}/.well-known/openid-configuration`, certs.ca)) === 200, provider.child);
    await waitFor('products-api', async () => (await probe(`${urls.api}/products`, certs.ca)) === 401, api.child);
    await waitFor('reviews-api', async () => (await probe(`${urls.reviews}/reviews`, certs.ca)) === 200, reviews.child);

    const gatewayArgs = [
      'serve',
      '--listen', `127.0.0.1:${ports.gateway}`,
      '--public-url', urls.gateway,
      '--issuer', urls.provider,
      '--client-id', 'oidc-bff',
      '--client-secret-file', secretFile,
      '--scopes', 'openid profile email offline_access products:read reviews:read',
      '--tls-cert', certs.cert,
      '--tls-key', certs.key,
      '--ca-file', certs.ca,
      '--data-dir', join(dir, 'data'),
      // One API per kind of route (docs/proxy.md "Who may call what"): the user's token for
      // the products API alone; a public API that is personal when signed in; an admins-only
      // route; and one that needs a recent sign-in (a step-up when it is older).
      '--route', `/api/OtherApi1=${urls.api} resource=${resources.products}`,
      '--route', `/api/Reviews=${urls.reviews} token=optional-user resource=${resources.reviews}`,
      '--route', `/api/Admin=${urls.api} policy=admins resource=${resources.products}`,
      '--route', `/api/Account=${urls.api} policy=recent resource=${resources.products}`,
      '--policy', 'admins=groups:admin',
      '--policy', `recent=auth-age:${options.stepUpAge ?? '5m'}`,
      ...(options.frontendUrl
        ? ['--frontend-url', options.frontendUrl]
        : ['--static-dir', options.staticDir ?? angularDist]),
      ...(options.gatewayArgs ?? []),
    ];
    const startGateway = async () => {
      gateway.start(options.gatewayBin, gatewayArgs, {});
      await waitFor('oidc-bff', async () => (await probe(`${urls.gateway}/healthz`, certs.ca)) === 200, gateway.child);
    };
    await startGateway();

    return {
      dir,
      urls,
      resources,
      user,
      password,
      certs,
      services,
      gateway: {
        stop: () => gateway.stop(),
        async restart() {
          const code = await gateway.stop();
          if (code !== 0) throw new Error(`oidc-bff exited with ${code} on SIGTERM`);
          await startGateway();
        },
      },
      stop: stopAll,
    };
  } catch (error) {
    await stopAll();
    throw error;
  }
}
