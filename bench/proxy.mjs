// The proxy benchmark: an authenticated `GET /api/OtherApi1/products` through oidc-bff (its
// default settings, access log on; and again with the log off), against the same call straight
// to the upstream, through a plain nginx TLS reverse proxy (no authentication: the practical
// limit; with its access log off, and on as production runs it, buffered), and through Apache +
// mod_auth_openidc (server-side sessions, access token passed as a bearer: what users pick
// today). Run by bench/proxy.sh,
// which checks the tools; see bench/README.md for the method and the last results.
//
// Method: every server (and the tiny upstream, an nginx answering a fixed JSON) is pinned to
// CPU 0, wrk to CPU 1 (`taskset`). Each target gets a warm-up, then the targets are measured
// in turn, ROUNDS times, interleaved, with fixed connections and duration. Sessions come from a
// real login (Chromium via playwright-core) at a real OpenID provider (examples/provider), for
// oidc-bff and for mod_auth_openidc alike. Then the memory check: 10,000 live sessions over
// 1,000 connections, oidc-bff's RSS read from /proc.
//
// Environment: ROUNDS (3), DURATION seconds per run (10), CONNECTIONS (64), OIDC_BFF_BIN
// (target/release/oidc-bff), SEED_BIN (target/release/examples/seed_sessions), ONLY (measure
// one target besides nginx, e.g. ONLY=oidc-bff while profiling), UPSTREAM_CPU (0: the tiny
// upstream shares the servers' CPU; 1 gives it wrk's instead, which shows what the proxies do
// when their upstream does not compete with them for the core), BASELINE_BIN (a second
// oidc-bff binary, e.g. the last release or main before a change, measured as one more target
// in the same interleaved rounds on a copy of the same data: a side-by-side A/B of a change),
// REDIS (1: the same node with its sessions in a redis-server on the servers' CPU, as one more
// target: what the shared store costs a proxied call; then both nodes with a cache smaller than
// the sessions called, so every call reads its session from the store; needs Debian's
// redis-server), HOLD (1: set everything up, write the targets and the servers' PIDs to
// target/bench-proxy/hold.json and keep the servers up until ^C, to attach a profiler).

import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';

import { Service, examples, freePort, makeCertificates, probe, repo, waitFor } from '../examples/stack.mjs';

const { chromium } = await import(join(repo, 'tests', 'e2e', 'node_modules', 'playwright-core', 'index.mjs'));

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const DURATION = Number(process.env.DURATION ?? 10);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 64);
const UPSTREAM_CPU = process.env.UPSTREAM_CPU ?? '0';
if (!['0', '1'].includes(UPSTREAM_CPU)) throw new Error('UPSTREAM_CPU is 0 or 1');
const LIVE_SESSIONS = 10_000;
// TLS 1.3 suites in the gateway's order (src/tls.rs), for nginx and Apache too, so that every
// TLS target negotiates the same protocol and suite with wrk (OpenSSL's client lists
// AES-256-GCM-SHA384 first; browsers list AES-128-GCM-SHA256 first).
const TLS13_SUITES = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';
const OPEN_CONNECTIONS = 1_000;
const bin = process.env.OIDC_BFF_BIN ?? join(repo, 'target', 'release', 'oidc-bff');
const seedBin = process.env.SEED_BIN ?? join(repo, 'target', 'release', 'examples', 'seed_sessions');

const dir = join(repo, 'target', 'bench-proxy');
rmSync(dir, { recursive: true, force: true });
mkdirSync(join(dir, 'logs'), { recursive: true });
const certs = makeCertificates(join(dir, 'tls'));
const services = [];

/**
 * Starts `command` pinned to `cpu`; its output goes straight to target/bench-proxy/logs/<name>.log
 * (not through this process, whose event loop is blocked while wrk runs: a server that logs
 * through a pipe nobody drains would stall on it).
 */
function start(name, command, args, env = {}, cpu = '0') {
  const service = new Service(name, join(dir, 'logs'));
  services.push(service);
  return service.start('taskset', ['-c', cpu, command, ...args], env, { direct: true });
}

const stopAll = () => Promise.all(services.map((service) => service.stop()));

process.on('SIGINT', () => stopAll().then(() => process.exit(130)));
try {
  const ports = {
    upstream: await freePort(), nginx: await freePort(), apache: await freePort(),
    gateway: await freePort(), provider: await freePort(), files: await freePort(),
    baseline: await freePort(), redisGateway: await freePort(), redis: await freePort(),
    quiet: await freePort(), nginxLogged: await freePort(),
  };
  const urls = {
    provider: `https://127.0.0.1:${ports.provider}`,
    gateway: `https://localhost:${ports.gateway}`,
    apache: `https://localhost:${ports.apache}`,
    nginx: `https://localhost:${ports.nginx}`,
    nginxLogged: `https://localhost:${ports.nginxLogged}`,
    upstream: `http://127.0.0.1:${ports.upstream}`,
  };
  const secret = () => randomBytes(24).toString('base64url');
  const password = secret();
  const clientSecret = secret();
  const apacheSecret = secret();

  // --- the tiny upstream and the plain nginx reverse proxy --------------------------------------

  const products = JSON.stringify({ products: [{ id: 1, name: 'Espresso machine', price: 249.0 }] });
  const nginxConf = (name, server) => {
    const root = join(dir, name);
    mkdirSync(root, { recursive: true });
    const file = join(root, 'nginx.conf');
    writeFileSync(file, `
  worker_processes 1;
  pid ${root}/nginx.pid;
  error_log ${root}/error.log warn;
  events { worker_connections 4096; }
  http {
    access_log off;
    client_body_temp_path ${root}/body; proxy_temp_path ${root}/proxy;
    fastcgi_temp_path ${root}/fastcgi; uwsgi_temp_path ${root}/uwsgi; scgi_temp_path ${root}/scgi;
    keepalive_requests 1000000;
    ${server}
  }`);
    return file;
  };
  const upstream = start('upstream', 'nginx', ['-e', join(dir, 'upstream-error.log'), '-c', nginxConf('upstream', `
    server {
      listen 127.0.0.1:${ports.upstream};
      location / { default_type application/json; return 200 '${products}'; }
    }`), '-g', 'daemon off;'], {}, UPSTREAM_CPU);
  // Two servers in one nginx (one worker): the plain proxy, and the same with its access log
  // on, buffered as production nginx is run (64 KiB, flushed every second).
  const nginxServer = (port, log) => `
    server {
      listen 127.0.0.1:${port} ssl;
      ${log}
      ssl_certificate ${certs.cert}; ssl_certificate_key ${certs.key};
      # The TLS every target speaks (checked before measuring): Debian's nginx 1.22 leaves
      # TLS 1.3 off unless asked, and the suite order is the gateway's.
      ssl_protocols TLSv1.2 TLSv1.3;
      ssl_prefer_server_ciphers on;
      ssl_conf_command Ciphersuites ${TLS13_SUITES};
      location /api/OtherApi1/ {
        proxy_pass http://api/;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
      }
    }`;
  const nginxProxy = start('nginx', 'nginx', ['-e', join(dir, 'nginx-error.log'), '-c', nginxConf('nginx', `
    upstream api { server 127.0.0.1:${ports.upstream}; keepalive 64; }
    ${nginxServer(ports.nginx, '')}
    ${nginxServer(ports.nginxLogged, `access_log ${join(dir, 'nginx', 'access.log')} combined buffer=64k flush=1s;`)}
    `), '-g', 'daemon off;']);

  // A file service for the streaming check: counts what it is sent, sends 1 GiB on request.
  start('files', process.execPath, ['-e', `
    const http = require('node:http');
    const chunk = Buffer.alloc(1 << 20);
    http.createServer((req, res) => {
      if (req.url === '/download') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(1 << 30) });
        let left = 1024;
        const more = () => { while (left > 0) { left -= 1; if (!res.write(chunk)) return res.once('drain', more); } res.end(); };
        return more();
      }
      let bytes = 0;
      req.on('data', (d) => { bytes += d.length; });
      req.on('end', () => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end(String(bytes)); });
    }).listen(${ports.files}, '127.0.0.1');`]);

  // --- the provider, oidc-bff, Apache + mod_auth_openidc ----------------------------------------

  const provider = start('provider', process.execPath, [join(examples, 'provider', 'provider.mjs')], {
    NODE_EXTRA_CA_CERTS: certs.ca, TLS_CERT: certs.cert, TLS_KEY: certs.key,
    PROVIDER_ISSUER: urls.provider, GATEWAY_URL: urls.gateway,
    CLIENT_SECRET: clientSecret, API_SECRET: secret(), DEMO_PASSWORD: password,
    ACCESS_TOKEN_TTL: '3600',
    EXTRA_CLIENTS: JSON.stringify([{
      client_id: 'apache', client_secret: apacheSecret, token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
      redirect_uris: [`${urls.apache}/api/redirect_uri`],
    }]),
  });
  await waitFor('provider', async () => (await probe(`${urls.provider}/.well-known/openid-configuration`, certs.ca)) === 200, provider);

  const dataDir = join(dir, 'oidc-bff-data');
  mkdirSync(dataDir, { recursive: true });
  const seeded = spawnSync(seedBin, [dataDir, String(LIVE_SESSIONS)], { maxBuffer: 64 << 20 });
  if (seeded.status !== 0) throw new Error(`seed_sessions failed: ${seeded.stderr}`);
  const cookieFile = join(dir, 'cookies.txt');
  writeFileSync(cookieFile, seeded.stdout);
  writeFileSync(join(dir, 'client-secret'), clientSecret, { mode: 0o600 });
  const gatewayArgs = ['serve',
    '--listen', `127.0.0.1:${ports.gateway}`, '--public-url', urls.gateway,
    '--issuer', urls.provider, '--client-id', 'oidc-bff', '--client-secret-file', join(dir, 'client-secret'),
    '--tls-cert', certs.cert, '--tls-key', certs.key, '--ca-file', certs.ca, '--data-dir', dataDir,
    '--route', `/api/OtherApi1=${urls.upstream}`, '--route', `/api/Files=http://127.0.0.1:${ports.files}`,
    // The same upstream behind an authorization policy: what checking the user's claims costs.
    '--route', `/api/Staff=${urls.upstream} policy=staff`, '--policy', 'staff=preferred_username:alice|bob|carol,name',
    // The default log level: one access line per request, as the gateway runs by default.
    '--max-request-body', '2GiB', '--upstream-timeout', '120s',
    // Every client here is 127.0.0.1, and the memory check opens 1,000 connections.
    '--max-connections-per-ip', '4096'];
  let gateway = start('oidc-bff', bin, gatewayArgs, {});
  await waitFor('oidc-bff', async () => (await probe(`${urls.gateway}/healthz`, certs.ca)) === 200, gateway);

  const apacheRoot = join(dir, 'apache');
  mkdirSync(apacheRoot, { recursive: true });
  const modules = '/usr/lib/apache2/modules';
  const apacheConf = join(apacheRoot, 'apache2.conf');
  writeFileSync(apacheConf, `
  ServerRoot ${apacheRoot}
  ServerName localhost
  PidFile ${apacheRoot}/apache2.pid
  Mutex file:${apacheRoot} default
  ErrorLog ${apacheRoot}/error.log
  LogLevel warn auth_openidc:info
  ${process.getuid() === 0 ? 'User www-data\nGroup www-data' : ''}
  LoadModule mpm_event_module ${modules}/mod_mpm_event.so
  LoadModule authn_core_module ${modules}/mod_authn_core.so
  LoadModule authz_core_module ${modules}/mod_authz_core.so
  LoadModule authz_user_module ${modules}/mod_authz_user.so
  LoadModule auth_openidc_module ${modules}/mod_auth_openidc.so
  LoadModule ssl_module ${modules}/mod_ssl.so
  LoadModule socache_shmcb_module ${modules}/mod_socache_shmcb.so
  LoadModule proxy_module ${modules}/mod_proxy.so
  LoadModule proxy_http_module ${modules}/mod_proxy_http.so
  LoadModule headers_module ${modules}/mod_headers.so
  Listen 127.0.0.1:${ports.apache} https
  KeepAliveTimeout 60
  MaxKeepAliveRequests 0
  <VirtualHost 127.0.0.1:${ports.apache}>
    SSLEngine on
    SSLProtocol TLSv1.2 TLSv1.3
    SSLHonorCipherOrder on
    SSLOpenSSLConfCmd Ciphersuites ${TLS13_SUITES}
    SSLCertificateFile ${certs.cert}
    SSLCertificateKeyFile ${certs.key}
    OIDCProviderMetadataURL ${urls.provider}/.well-known/openid-configuration
    OIDCCABundlePath ${certs.ca}
    OIDCClientID apache
    OIDCClientSecret ${apacheSecret}
    OIDCRedirectURI ${urls.apache}/api/redirect_uri
    OIDCCryptoPassphrase ${secret()}
    OIDCScope "openid profile"
    OIDCPKCEMethod S256
    OIDCSessionType server-cache
    OIDCCacheType shm
    OIDCPassClaimsAs environment
    <Location /api/>
      AuthType openid-connect
      Require valid-user
      RequestHeader set Authorization "Bearer %{OIDC_access_token}e" env=OIDC_access_token
    </Location>
    ProxyPass /api/OtherApi1/ ${urls.upstream}/ keepalive=On
  </VirtualHost>
  `);
  const apache = start('apache', 'apache2', ['-f', apacheConf, '-DFOREGROUND'], { APACHE_RUN_DIR: apacheRoot, APACHE_LOG_DIR: apacheRoot });
  await waitFor('apache', async () => [200, 302, 401].includes(await probe(`${urls.apache}/api/OtherApi1/products`, certs.ca)), apache);

  // --- one real login each, in Chromium ----------------------------------------------------------

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [...(process.getuid() === 0 ? ['--no-sandbox'] : []), '--ignore-certificate-errors',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  async function login(start, origin) {
    await page.goto(start);
    const settle = async (action) => {
      const before = page.url();
      await action();
      await page.waitForURL((url) => url.href !== before, { timeout: 10_000 });
      await page.waitForLoadState('load');
    };
    for (let step = 0; step < 6 && new URL(page.url()).origin !== origin; step += 1) {
      if (await page.locator('input[name=password]').count()) {
        await page.fill('input[name=username]', 'alice');
        await page.fill('input[name=password]', password);
        await settle(() => page.click('button[type=submit]'));
      } else if (await page.getByRole('button', { name: 'Allow' }).count()) {
        await settle(() => page.getByRole('button', { name: 'Allow' }).click());
      } else {
        throw new Error(`login for ${origin}: unexpected page ${page.url()}: ${await page.locator('body').innerText()}`);
      }
    }
    if (new URL(page.url()).origin !== origin) throw new Error(`login for ${origin} ended at ${page.url()}`);
  }
  await login(`${urls.gateway}/login?returnUrl=/healthz`, urls.gateway);
  // Copies of the data (the session just made included), taken while the gateway is stopped,
  // each served by one more oidc-bff on its own port: the same node with its access log off
  // (what the log costs), the baseline binary (BASELINE_BIN), the node on Redis (REDIS=1).
  const baselineBin = process.env.BASELINE_BIN;
  const redisMode = process.env.REDIS === '1';
  await services.find((service) => service.child === gateway).stop();
  const copyOf = (suffix) => {
    const copy = `${dataDir}-${suffix}`;
    rmSync(copy, { recursive: true, force: true });
    cpSync(dataDir, copy, { recursive: true });
    return copy;
  };
  const onCopy = (copy, port) => {
    const url = `https://localhost:${port}`;
    return {
      url,
      args: gatewayArgs.map((arg) => arg === dataDir ? copy
        : arg === `127.0.0.1:${ports.gateway}` ? `127.0.0.1:${port}`
        : arg === urls.gateway ? url : arg),
    };
  };
  const quiet = onCopy(copyOf('quiet'), ports.quiet);
  const baseline = baselineBin ? onCopy(copyOf('baseline'), ports.baseline) : null;
  const redisCopy = redisMode ? copyOf('redis') : null;
  gateway = start('oidc-bff', bin, gatewayArgs, {});
  await waitFor('oidc-bff', async () => (await probe(`${urls.gateway}/healthz`, certs.ca)) === 200, gateway);
  const serveCopy = async (name, binary, copy, extra = []) => {
    const service = start(name, binary, [...copy.args, ...extra], {});
    await waitFor(name, async () => (await probe(`${copy.url}/healthz`, certs.ca)) === 200, service);
    return service;
  };
  const quietGateway = await serveCopy('oidc-bff access log off', bin, quiet, ['--log-level', 'warn']);
  urls.quiet = quiet.url;
  if (baseline) {
    urls.baselinePid = (await serveCopy('oidc-bff baseline', baselineBin, baseline)).pid;
    urls.baseline = baseline.url;
  }
  let onRedis;
  let redisArgs;
  if (redisMode) {
    // The same node on Redis: its copy migrated into a redis-server that shares the servers'
    // CPU, served by one more oidc-bff.
    const redis = start('redis', 'redis-server', ['--port', String(ports.redis), '--bind', '127.0.0.1',
      '--save', '', '--appendonly', 'no'], {});
    const redisUrl = `redis://127.0.0.1:${ports.redis}`;
    let migrated;
    for (let attempt = 0; attempt < 50; attempt += 1) {
      migrated = spawnSync(bin, ['sessions', 'migrate', '--data-dir', redisCopy, '--to', redisUrl], { encoding: 'utf8' });
      if (migrated.status === 0) break;
      if (redis.exitCode !== null) throw new Error('redis-server exited');
      await new Promise((r) => setTimeout(r, 100));
    }
    if (migrated.status !== 0) throw new Error(`migrate: ${migrated.stderr}`);
    console.log(`redis: ${migrated.stdout.trim()}`);
    const copy = onCopy(redisCopy, ports.redisGateway);
    redisArgs = [...copy.args, '--store', redisUrl];
    onRedis = await serveCopy('oidc-bff on Redis', bin, { ...copy, args: redisArgs });
    urls.redisGateway = copy.url;
  }
  await login(`${urls.apache}/api/OtherApi1/products`, urls.apache);
  const cookies = await context.cookies();
  const cookie = (name) => cookies.find((c) => c.name === name)?.value;
  const gatewayCookie = cookie('__Host-bff');
  const apacheCookie = cookie('mod_auth_openidc_session');
  await browser.close();
  if (!gatewayCookie || !apacheCookie) throw new Error(`missing a session cookie: ${cookies.map((c) => c.name)}`);

  // --- measure -----------------------------------------------------------------------------------

  const allTargets = [
    { name: 'upstream direct', url: `${urls.upstream}/products`, headers: [], direct: true },
    { name: 'nginx (TLS, no auth)', url: `${urls.nginx}/api/OtherApi1/products`, headers: [], proxy: nginxProxy },
    { name: 'nginx, access log on', url: `${urls.nginxLogged}/api/OtherApi1/products`, headers: [], proxy: nginxProxy },
    { name: 'oidc-bff', url: `${urls.gateway}/api/OtherApi1/products`, headers: [`Cookie: __Host-bff=${gatewayCookie}`, 'X-CSRF: 1'], proxy: gateway },
    { name: 'oidc-bff access log off', url: `${urls.quiet}/api/OtherApi1/products`, headers: [`Cookie: __Host-bff=${gatewayCookie}`, 'X-CSRF: 1'], proxy: quietGateway },
    { name: 'oidc-bff policy route', url: `${urls.gateway}/api/Staff/products`, headers: [`Cookie: __Host-bff=${gatewayCookie}`, 'X-CSRF: 1'], proxy: gateway },
    ...(urls.redisGateway ? [{ name: 'oidc-bff on Redis', url: `${urls.redisGateway}/api/OtherApi1/products`, headers: [`Cookie: __Host-bff=${gatewayCookie}`, 'X-CSRF: 1'], proxy: onRedis }] : []),
    ...(urls.baseline ? [{ name: 'oidc-bff baseline', url: `${urls.baseline}/api/OtherApi1/products`, headers: [`Cookie: __Host-bff=${gatewayCookie}`, 'X-CSRF: 1'], proxy: { pid: urls.baselinePid } }] : []),
    // Not a proxied call: the gateway's TLS and HTTP floor (no session, no upstream), to show
    // how much of its cost is the relay itself.
    { name: 'oidc-bff /healthz only', url: `${urls.gateway}/healthz`, headers: [], proxy: gateway, direct: true },
    { name: 'Apache + mod_auth_openidc', url: `${urls.apache}/api/OtherApi1/products`, headers: [`Cookie: mod_auth_openidc_session=${apacheCookie}`], proxy: apache },
  ];
  // ONLY=oidc-bff (a substring of a target's name) measures just that target, e.g. to profile it.
  const targets = allTargets.filter((t) => !process.env.ONLY || t.name.includes(process.env.ONLY) || t.name.startsWith('nginx'));
  if (process.env.HOLD === '1') {
    // The servers stay up for a profiler (strace -c, callgrind_control, heaptrack -p): every
    // target's URL and headers and every server's PID in target/bench-proxy/hold.json, until ^C.
    const hold = join(dir, 'hold.json');
    writeFileSync(hold, JSON.stringify({
      targets: targets.map(({ name, url, headers }) => ({ name, url, headers })),
      pids: Object.fromEntries(services.filter((s) => s.child?.exitCode === null).map((s) => [s.name, s.child.pid])),
    }, null, 2));
    console.log(`HOLD=1: servers up, see ${hold}; ^C stops them`);
    await new Promise(() => {});
  }

  function seconds(text) {
    const match = /([\d.]+)(us|ms|s)/.exec(text);
    if (!match) return NaN;
    return Number(match[1]) * { us: 1e-6, ms: 1e-3, s: 1 }[match[2]];
  }

  function wrk(target, duration, connections = CONNECTIONS, script) {
    const args = ['-c', '1', 'wrk', '-t1', `-c${connections}`, `-d${duration}s`, '--latency', '--timeout', '5s'];
    for (const header of target.headers) args.push('-H', header);
    if (script) args.push('-s', script);
    args.push(target.url);
    const result = spawnSync('taskset', args, { encoding: 'utf8', env: { ...process.env, COOKIES: cookieFile } });
    const out = result.stdout;
    const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
    const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
    const errors = /Socket errors: (.*)/.exec(out)?.[1] ?? '';
    return { rps, p50: seconds(/^\s+50%\s+(\S+)/m.exec(out)?.[1] ?? ''), p99: seconds(/^\s+99%\s+(\S+)/m.exec(out)?.[1] ?? ''), non2xx, errors, out };
  }

  // CPU time per request, user and kernel, of the proxy and of the upstream behind it: where
  // a request's time goes on the servers' core. /proc/<pid>/stat of the process and of its
  // children (nginx's and Apache's workers), in clock ticks.
  const ticksPerSecond = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100;
  function cpuTicks(pid) {
    const total = { user: 0, kernel: 0 };
    const visit = (id) => {
      let stat;
      try { stat = readFileSync(`/proc/${id}/stat`, 'utf8'); } catch { return; }
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields[0] is field 3
      total.user += Number(fields[11]);
      total.kernel += Number(fields[12]);
      for (const task of readdirSync(`/proc/${id}/task`)) {
        let children = '';
        try { children = readFileSync(`/proc/${id}/task/${task}/children`, 'utf8'); } catch { /* gone */ }
        for (const child of children.split(/\s+/).filter(Boolean)) visit(child);
      }
    };
    if (pid) visit(pid);
    return total;
  }
  const cpu = (value) => (Number.isFinite(value) ? value.toFixed(1) : '–');
  function measured(target, duration) {
    const proxyPid = target.proxy?.pid;
    const upstreamPid = target.direct ? null : upstream.pid;
    const before = [cpuTicks(proxyPid), cpuTicks(upstreamPid)];
    const run = wrk(target, duration);
    const after = [cpuTicks(proxyPid), cpuTicks(upstreamPid)];
    const requests = run.rps * duration;
    const micros = (a, b) => (b - a) / ticksPerSecond / requests * 1e6;
    run.cpu = {
      user: proxyPid ? micros(before[0].user, after[0].user) : NaN,
      kernel: proxyPid ? micros(before[0].kernel, after[0].kernel) : NaN,
      upstream: upstreamPid ? micros(before[1].user + before[1].kernel, after[1].user + after[1].kernel) : NaN,
    };
    return run;
  }

  // Every TLS target must speak the same TLS with wrk's OpenSSL, or the comparison is not one.
  const negotiated = new Map();
  for (const target of targets.filter((t) => t.url.startsWith('https:'))) {
    const { port } = new URL(target.url);
    const hello = spawnSync('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost'],
      { input: '', encoding: 'utf8', timeout: 10_000 });
    const tls = /New, (\S+), Cipher is (\S+)/.exec(hello.stdout ?? '');
    if (!tls) throw new Error(`${target.name}: no TLS handshake: ${hello.stdout}${hello.stderr}`);
    const spoken = `${tls[1]} ${tls[2]}`;
    negotiated.set(spoken, [...(negotiated.get(spoken) ?? []), target.name]);
  }
  if (negotiated.size !== 1) {
    throw new Error(`the TLS targets negotiate different TLS: ${JSON.stringify(Object.fromEntries(negotiated))}`);
  }
  console.log(`TLS with wrk's OpenSSL, every TLS target: ${[...negotiated.keys()][0]}`);
  for (const target of targets) {
    const check = wrk(target, 1, 4);
    if (!(check.rps > 0) || check.non2xx > 0) {
      throw new Error(`${target.name} does not answer 200: ${check.out}`);
    }
  }
  console.log(`proxy benchmark: wrk -t1 -c${CONNECTIONS} -d${DURATION}s, servers on CPU 0 (the upstream on CPU ${UPSTREAM_CPU}), wrk on CPU 1, ${ROUNDS} rounds interleaved`);
  for (const target of targets) wrk(target, 2);
  const runs = Object.fromEntries(targets.map((t) => [t.name, []]));
  for (let round = 1; round <= ROUNDS; round += 1) {
    for (const target of targets) {
      const run = measured(target, DURATION);
      if (run.non2xx > 0) throw new Error(`${target.name}: ${run.non2xx} responses were not 2xx`);
      runs[target.name].push(run);
      console.log(`  round ${round} ${target.name.padEnd(26)} ${run.rps.toFixed(0).padStart(7)} req/s  p50 ${(run.p50 * 1e3).toFixed(2)} ms  p99 ${(run.p99 * 1e3).toFixed(2)} ms  CPU/request ${cpu(run.cpu.user)} user + ${cpu(run.cpu.kernel)} kernel µs, upstream ${cpu(run.cpu.upstream)} µs${run.errors ? `  (socket errors: ${run.errors})` : ''}`);
    }
  }

  const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const summary = targets.map((t) => ({
    name: t.name,
    rps: median(runs[t.name].map((r) => r.rps)),
    p50: median(runs[t.name].map((r) => r.p50)),
    p99: median(runs[t.name].map((r) => r.p99)),
    user: median(runs[t.name].map((r) => r.cpu.user)),
    kernel: median(runs[t.name].map((r) => r.cpu.kernel)),
    upstream: median(runs[t.name].map((r) => r.cpu.upstream)),
  }));
  const nginx = summary.find((s) => s.name.startsWith('nginx'));
  console.log('\n| target | req/s (median) | vs nginx | p50 | p99 | CPU µs/request: proxy user + kernel | upstream |\n|---|---|---|---|---|---|---|');
  for (const s of summary) {
    console.log(`| ${s.name} | ${s.rps.toFixed(0)} | ${(s.rps / nginx.rps).toFixed(2)}× | ${(s.p50 * 1e3).toFixed(2)} ms | ${(s.p99 * 1e3).toFixed(2)} ms | ${cpu(s.user)} + ${cpu(s.kernel)} | ${cpu(s.upstream)} |`);
  }
  // The kernel's share is a floor no user-space change moves: the upstream's CPU and the
  // proxy's kernel time, per request, against nginx's whole cost; round by round, as the
  // machine's drift moves every figure of a round together.
  if (runs['oidc-bff'] && runs[nginx.name]) {
    const floors = runs['oidc-bff'].map((ours, round) => {
      const theirs = runs[nginx.name][round].cpu;
      return (theirs.user + theirs.kernel + theirs.upstream) / (ours.cpu.kernel + ours.cpu.upstream);
    });
    console.log(`the kernel floor: nginx's CPU a request (proxy and upstream) over oidc-bff's kernel time and upstream's CPU, `
      + `round by round: ${floors.map((f) => `${f.toFixed(2)}×`).join(', ')} (median ${median(floors).toFixed(2)}×): `
      + 'what oidc-bff would reach against nginx if its own code took no time at all');
  }
  // The same comparisons pair by pair: each round's run of one target against the other's in
  // the same round, so that the machine's drift between rounds (often larger than the
  // difference being measured) cancels out.
  const pairs = [
    ['oidc-bff', nginx.name, 'oidc-bff vs nginx'],
    ['oidc-bff', 'nginx, access log on', 'oidc-bff vs nginx with its access log'],
    ['oidc-bff', 'oidc-bff access log off', 'oidc-bff vs itself with the access log off'],
    ['oidc-bff access log off', nginx.name, 'oidc-bff with the access log off vs nginx'],
    ['oidc-bff', 'oidc-bff baseline', 'oidc-bff vs the baseline binary'],
  ];
  for (const [a, b, title] of pairs) {
    if (!runs[a] || !runs[b]) continue;
    const ratios = (field) => runs[a].map((run, round) => run[field] / runs[b][round][field]);
    const list = (values) => values.map((value) => `${value.toFixed(3)}×`).join(', ');
    const rps = ratios('rps');
    const p99 = ratios('p99');
    console.log(`${title}, round by round: req/s ${list(rps)} (median ${median(rps).toFixed(3)}×); `
      + `p99 ${list(p99)} (median ${median(p99).toFixed(3)}×, no worse in ${p99.filter((ratio) => ratio <= 1).length} of ${p99.length})`);
  }

  // --- memory: 10,000 live sessions over 1,000 connections ---------------------------------------

  const lua = join(dir, 'sessions.lua');
  writeFileSync(lua, `
  local cookies = {}
  for line in io.lines(os.getenv("COOKIES")) do cookies[#cookies + 1] = line end
  local i = 0
  request = function()
    i = i + 1
    local cookie = cookies[(i % #cookies) + 1]
    return wrk.format("GET", "/api/OtherApi1/products", { ["Cookie"] = "__Host-bff=" .. cookie, ["X-CSRF"] = "1" })
  end
  `);
  // In four steps, so that what sessions cost and what connections cost can be told apart:
  // after the rounds above (one session used), after every seeded session has been read over
  // a few connections, with 1,000 connections open and idle (as browsers keep them), and with
  // 1,000 connections each with a call in flight all the time (wrk; the worst case).
  const memory = () => {
    const status = readFileSync(`/proc/${gateway.pid}/status`, 'utf8');
    const mib = (field) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN) / 1024;
    return `RSS ${mib('VmRSS').toFixed(1)} MiB (anonymous ${mib('RssAnon').toFixed(1)}, file ${mib('RssFile').toFixed(1)}), peak ${mib('VmHWM').toFixed(1)} MiB`;
  };
  const target = { name: 'oidc-bff', url: `${urls.gateway}/api/OtherApi1/products`, headers: [] };
  console.log(`\nmemory, one session used: ${memory()}`);
  const few = wrk(target, 5, 16, lua);
  console.log(`memory, ${LIVE_SESSIONS} sessions read over 16 connections (${few.rps.toFixed(0)} req/s): ${memory()}`);
  // 1,000 keep-alive connections as browsers hold them: each makes ten calls (every seeded
  // session once in all), then stays open and idle while the RSS is read.
  const held = await holdOpen(OPEN_CONNECTIONS, LIVE_SESSIONS / OPEN_CONNECTIONS);
  await new Promise((resolve) => setTimeout(resolve, 1000));
  console.log(`memory: ${LIVE_SESSIONS} sessions, ${OPEN_CONNECTIONS} connections open and idle after ${LIVE_SESSIONS / OPEN_CONNECTIONS} calls each: oidc-bff ${memory()}`);
  for (const socket of held) socket.destroy();
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const many = wrk(target, 15, OPEN_CONNECTIONS, lua);
  console.log(`memory: ${LIVE_SESSIONS} sessions in the store, ${OPEN_CONNECTIONS} connections cycling through them: `
    + `${many.rps.toFixed(0)} req/s (${many.non2xx} non-2xx, socket errors: ${many.errors || 'none'}), oidc-bff ${memory()}`);
  // nginx under the same 1,000 busy connections (the same calls; it ignores the cookies): what
  // a proxy that holds no sessions spends on them, its worker's RSS.
  const workerRss = (field) => {
    const worker = readFileSync(`/proc/${nginxProxy.pid}/task/${nginxProxy.pid}/children`, 'utf8').trim().split(/\s+/)[0];
    return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${worker}/status`, 'utf8'))?.[1] ?? NaN) / 1024;
  };
  const nginxBefore = workerRss('VmRSS');
  const nginxMany = wrk({ ...target, url: `${urls.nginx}/api/OtherApi1/products` }, 15, OPEN_CONNECTIONS, lua);
  console.log(`memory: nginx, the same ${OPEN_CONNECTIONS} busy connections: ${nginxMany.rps.toFixed(0)} req/s, `
    + `worker RSS ${nginxBefore.toFixed(1)} MiB before, peak ${workerRss('VmHWM').toFixed(1)} MiB`);

  /**
   * Opens `count` TLS connections to the gateway, 100 at a time; each makes `calls` proxied
   * calls in turn (one session after another from the seeded ones), keep-alive, and is handed
   * back open.
   */
  async function holdOpen(count, calls) {
    const sessions = readFileSync(cookieFile, 'utf8').trim().split('\n');
    const port = Number(new URL(urls.gateway).port);
    const ca = readFileSync(certs.ca);
    let next = 0;
    const one = () => new Promise((resolve, reject) => {
      const socket = tlsConnect({ host: '127.0.0.1', port, servername: 'localhost', ca, ALPNProtocols: ['http/1.1'] });
      let left = calls;
      let buffer = Buffer.alloc(0);
      const send = () => socket.write(`GET /api/OtherApi1/products HTTP/1.1\r\nHost: localhost:${port}\r\n`
        + `Cookie: __Host-bff=${sessions[next++ % sessions.length]}\r\nX-CSRF: 1\r\n\r\n`);
      socket.on('secureConnect', send);
      socket.on('error', reject);
      socket.on('data', (chunk) => {
        buffer = Buffer.concat([buffer, chunk]);
        const end = buffer.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buffer.subarray(0, end).toString('latin1');
        const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? NaN);
        if (!Number.isFinite(length)) return reject(new Error(`no Content-Length: ${head}`));
        if (buffer.length < end + 4 + length) return;
        if (!head.startsWith('HTTP/1.1 200')) return reject(new Error(`held connection: ${head.split('\r\n')[0]}`));
        buffer = buffer.subarray(end + 4 + length);
        left -= 1;
        if (left > 0) send(); else resolve(socket);
      });
    });
    const sockets = [];
    for (let opened = 0; opened < count; opened += 100) {
      sockets.push(...await Promise.all(Array.from({ length: Math.min(100, count - opened) }, one)));
    }
    return sockets;
  }

  // --- streaming: 1 GiB up and 1 GiB down through oidc-bff, memory sampled all along ---------

  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${gateway.pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024;
  async function streamed(what, shell) {
    const before = rss();
    let peak = before;
    const sampler = setInterval(() => { peak = Math.max(peak, rss()); }, 50);
    const started = Date.now();
    const result = await new Promise((done) => {
      const child = spawn('taskset', ['-c', '1', 'bash', '-c', shell], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (d) => { out += d; });
      child.on('exit', (code) => done({ code, out: out.trim() }));
    });
    clearInterval(sampler);
    const seconds = (Date.now() - started) / 1000;
    console.log(`${what}: ${result.out} in ${seconds.toFixed(1)} s; oidc-bff RSS ${before.toFixed(1)} MiB before, at most ${peak.toFixed(1)} MiB during (+${(peak - before).toFixed(1)} MiB)`);
    return result.out;
  }
  const auth = `-H 'Cookie: __Host-bff=${gatewayCookie}' -H 'X-CSRF: 1'`;
  const up = await streamed('upload 1 GiB', `head -c ${1 << 30} /dev/zero | curl -sk --fail -X POST -T - ${auth} -H 'content-type: application/octet-stream' -w ' (HTTP %{http_code})' ${urls.gateway}/api/Files/upload`);
  if (!up.startsWith(String(1 << 30))) throw new Error(`the upstream did not receive 1 GiB: ${up}`);
  const down = await streamed('download 1 GiB', `curl -sk --fail ${auth} -o /dev/null -w '%{size_download} bytes (HTTP %{http_code})' ${urls.gateway}/api/Files/download`);
  if (!down.startsWith(String(1 << 30))) throw new Error(`the browser did not receive 1 GiB: ${down}`);

  // --- cold sessions: every call reads its session from the store (REDIS=1) -------------------
  // Both nodes again with a cache of 1,000 sessions, called with the 10,000 seeded sessions in
  // turn, so that every call misses the cache: a B-tree lookup in the file against a round trip
  // to Redis, interleaved as above.

  if (urls.redisGateway) {
    const restart = async (service, name, args, url) => {
      await services.find((s) => s.child === service).stop();
      const started = start(name, bin, [...args, '--cache-capacity', '1000'], {});
      await waitFor(name, async () => (await probe(`${url}/healthz`, certs.ca)) === 200, started);
      return started;
    };
    gateway = await restart(gateway, 'oidc-bff (cache of 1,000)', gatewayArgs, urls.gateway);
    onRedis = await restart(onRedis, 'oidc-bff on Redis (cache of 1,000)', redisArgs, urls.redisGateway);
    const cold = [
      { name: 'oidc-bff, cold sessions', url: `${urls.gateway}/api/OtherApi1/products`, headers: [] },
      { name: 'oidc-bff on Redis, cold sessions', url: `${urls.redisGateway}/api/OtherApi1/products`, headers: [] },
    ];
    for (const target of cold) wrk(target, 2, CONNECTIONS, lua);
    const coldRuns = Object.fromEntries(cold.map((t) => [t.name, []]));
    for (let round = 1; round <= ROUNDS; round += 1) {
      for (const target of cold) {
        const run = wrk(target, DURATION, CONNECTIONS, lua);
        if (run.non2xx > 0) throw new Error(`${target.name}: ${run.non2xx} responses were not 2xx`);
        coldRuns[target.name].push(run);
        console.log(`  round ${round} ${target.name.padEnd(34)} ${run.rps.toFixed(0).padStart(7)} req/s  p50 ${(run.p50 * 1e3).toFixed(2)} ms  p99 ${(run.p99 * 1e3).toFixed(2)} ms`);
      }
    }
    const [file, redis] = cold.map((t) => coldRuns[t.name]);
    const ratios = redis.map((run, round) => run.rps / file[round].rps);
    console.log(`cold sessions, Redis vs redb: req/s ${median(file.map((r) => r.rps)).toFixed(0)} (redb) vs `
      + `${median(redis.map((r) => r.rps)).toFixed(0)} (Redis), round by round ${ratios.map((r) => `${r.toFixed(2)}×`).join(', ')}; `
      + `p99 ${(median(file.map((r) => r.p99)) * 1e3).toFixed(2)} vs ${(median(redis.map((r) => r.p99)) * 1e3).toFixed(2)} ms`);
  }

  // --- instructions per proxied call ---------------------------------------------------------
  // Requests per second move by ±10 % from run to run on a shared machine; the instructions a
  // call costs do not. The gateway runs again under callgrind (same data, same port), 500 calls
  // warm it up, and the counters cover the next 2,000 (keep-alive, one connection, curl).

  if (spawnSync('sh', ['-c', 'command -v valgrind && command -v callgrind_control']).status === 0) {
    await services.find((service) => service.child === gateway).stop();
    // With the access log on (the default) and off: what a line costs, exactly.
    for (const [label, extra] of [['access log on', []], ['access log off', ['--log-level', 'warn']]]) {
      const out = join(dir, `callgrind-${label.replaceAll(' ', '-')}.out`);
      const counted = start(`oidc-bff-callgrind ${label}`, 'valgrind',
        ['--tool=callgrind', `--callgrind-out-file=${out}`, bin, ...gatewayArgs, ...extra], {});
      await waitFor('oidc-bff under callgrind', async () => (await probe(`${urls.gateway}/healthz`, certs.ca)) === 200, counted, 120_000);
      const url = `${urls.gateway}/api/OtherApi1/products`;
      const calls = (count) => {
        const result = spawnSync('taskset', ['-c', '1', 'curl', '-sk', '--http1.1', '-H', `Cookie: __Host-bff=${gatewayCookie}`,
          '-H', 'X-CSRF: 1', '-w', '%{http_code}\\n', ...Array(count).fill(url)], { encoding: 'utf8', maxBuffer: 64 << 20 });
        // Each line is a body followed by its status.
        const statuses = result.stdout.trim().split('\n').map((line) => line.slice(-3));
        if (statuses.length !== count || statuses.some((code) => code !== '200')) {
          throw new Error(`calls under callgrind did not all answer 200: ${result.stdout.slice(0, 500)}`);
        }
      };
      calls(500);
      spawnSync('callgrind_control', ['-z', String(counted.pid)]);
      calls(2000);
      spawnSync('callgrind_control', ['-d', String(counted.pid)]);
      const dumps = readdirSync(dir).filter((name) => name.startsWith(`callgrind-${label.replaceAll(' ', '-')}.out.`));
      const total = Number(/^summary: (\d+)/m.exec(readFileSync(join(dir, dumps.sort().pop()), 'utf8'))?.[1]);
      console.log(`instructions per proxied call, ${label} (callgrind, 2,000 keep-alive calls after 500 to warm up): ${Math.round(total / 2000)}`);
      await services.find((service) => service.child === counted).stop();
    }
  } else {
    console.log('instructions per proxied call: skipped (no valgrind)');
  }
} catch (error) {
  console.error(`proxy benchmark failed: ${error.stack ?? error}\nlogs: ${join(dir, 'logs')}, ${join(dir, 'apache', 'error.log')}`);
  process.exitCode = 1;
} finally {
  await stopAll();
}
