#!/usr/bin/env bash
# The proxy benchmark (see bench/README.md): oidc-bff vs the upstream direct, a plain nginx TLS
# reverse proxy and Apache + mod_auth_openidc, all on loopback, servers on CPU 0, wrk on CPU 1.
# Takes about 4 minutes. Needs Debian's nginx, apache2, libapache2-mod-auth-openidc, wrk and
# chromium (sudo apt-get install nginx apache2 libapache2-mod-auth-openidc wrk chromium), Node.js
# and openssl. Nothing is left running; everything it writes goes to target/bench-proxy/.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in nginx apache2 wrk taskset node openssl chromium; do
  command -v "$tool" >/dev/null || { echo "proxy.sh: $tool is missing (see the header of this script)" >&2; exit 2; }
done
if [ "${REDIS:-}" = 1 ]; then
  command -v redis-server >/dev/null || { echo "proxy.sh: REDIS=1 needs redis-server (sudo apt-get install redis-server)" >&2; exit 2; }
fi
[ -f /usr/lib/apache2/modules/mod_auth_openidc.so ] || { echo "proxy.sh: libapache2-mod-auth-openidc is missing" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "proxy.sh: needs 2 CPUs (servers on one, wrk on the other)" >&2; exit 2; }

cargo build --release --locked --bin oidc-bff --example seed_sessions
bash examples/prepare.sh --e2e
# 1,000 connections on each side of the memory check.
ulimit -n 65536 2>/dev/null || ulimit -n 8192
exec node bench/proxy.mjs
