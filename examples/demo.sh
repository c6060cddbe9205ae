#!/usr/bin/env bash
# The demo in one command: builds oidc-bff (release) and the Angular app, then starts a real
# OpenID provider, the products and reviews APIs and oidc-bff in front of the app, and prints the URL and the
# test user. Ctrl-C stops everything. Needs the Rust toolchain, Node.js 20.19+ with npm, openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo: cargo is missing (https://rustup.rs)" >&2; exit 2; }
bash examples/prepare.sh
echo "demo: cargo build --release --locked (the first build takes a few minutes)"
cargo build --release --locked
exec node examples/demo.mjs
