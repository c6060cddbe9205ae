// The one-command demo (run through examples/demo.sh): the example provider, the products API
// and oidc-bff serving the Angular app, all on loopback. Prints where to go and how to sign in;
// Ctrl-C stops everything it started.
//
// Ports: OIDC_BFF_DEMO_PORT (gateway, 8443), OIDC_BFF_DEMO_PROVIDER_PORT (9443),
// OIDC_BFF_DEMO_API_PORT (7002). OIDC_BFF_BIN: the binary (default target/release/oidc-bff).

import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { repo, startStack } from './stack.mjs';

const port = (name, fallback) => Number(process.env[name] ?? fallback);
const ports = {
  gateway: ['OIDC_BFF_DEMO_PORT', port('OIDC_BFF_DEMO_PORT', 8443)],
  provider: ['OIDC_BFF_DEMO_PROVIDER_PORT', port('OIDC_BFF_DEMO_PROVIDER_PORT', 9443)],
  api: ['OIDC_BFF_DEMO_API_PORT', port('OIDC_BFF_DEMO_API_PORT', 7002)],
};

/** Whether `number` can be listened on at 127.0.0.1 now. */
const free = (number) =>
  new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(number, '127.0.0.1', () => probe.close(() => resolve(true)));
  });

// A taken port is named with the variable that moves it, before anything starts.
for (const [role, [variable, number]] of Object.entries(ports)) {
  if (!(await free(number))) {
    console.error(`demo: port ${number} (the ${role}) is in use on 127.0.0.1; stop what listens there or set ${variable} to another port`);
    process.exit(1);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'oidc-bff-demo-'));
const quiet = new Set(['/healthz']);

let stack;
try {
  stack = await startStack({
    dir,
    gatewayBin: process.env.OIDC_BFF_BIN ?? join(repo, 'target', 'release', 'oidc-bff'),
    ports: { gateway: ports.gateway[1], provider: ports.provider[1], api: ports.api[1] },
    accessTokenTtl: 60,
    password: 'wonderland',
    echo: (name, line) => {
      if (![...quiet].some((path) => line.includes(path))) console.log(`${name.padEnd(12)} | ${line}`);
    },
  });
} catch (error) {
  console.error(`demo: ${error.message}`);
  console.error(`demo: logs are in ${join(dir, 'logs')}`);
  process.exit(1);
}

console.log(`
  oidc-bff demo is running.

  Open       ${stack.urls.gateway}/
  Sign in as ${stack.user} / ${stack.password}

  The provider is ${stack.urls.provider}, the products API ${stack.urls.api}.
  Certificates come from a throwaway CA (${stack.certs.ca}); your browser will warn
  about them once per site (localhost and 127.0.0.1) unless you import that CA.
  Access tokens live 60 s: watch the gateway refresh them in the log below.

  Ctrl-C stops everything.
`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  console.log('\ndemo: stopping');
  await stack.stop();
  rmSync(dir, { recursive: true, force: true });
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
