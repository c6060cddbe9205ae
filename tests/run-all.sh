#!/usr/bin/env bash
# Every test of oidc-bff: the Rust unit and integration suites, then the browser tests (Debian's
# Chromium against the example Angular app, a real OpenID provider and a real API; see
# tests/e2e/run.mjs). Needs: the Rust toolchain, Node.js 20.19+ with npm, openssl and
# /usr/bin/chromium (apt-get install chromium). .ci/run installs them on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --locked"
cargo test --locked

echo "== browser tests (tests/e2e)"
cargo build --locked --quiet
bash examples/prepare.sh --e2e
OIDC_BFF_BIN="$PWD/target/debug/oidc-bff" node tests/e2e/run.mjs
