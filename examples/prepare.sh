#!/usr/bin/env bash
# Installs the example's npm packages (exact versions from each package-lock.json) and builds the
# Angular app into examples/angular/dist. Skips what is already up to date. With --e2e, also the
# browser tests' packages (playwright-core, which drives Debian's /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null || { echo "prepare: $1 is missing ($2)" >&2; exit 2; }
}
need node "Debian: apt-get install nodejs npm; Node.js 20.19 or later"
need npm "Debian: apt-get install npm"
need openssl "Debian: apt-get install openssl"

install() {
  local dir=$1
  # npm keeps a copy of the lock file it installed from; reinstall when the real one changed.
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed" 2>/dev/null; then
    echo "prepare: npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed"
  fi
}

install examples/provider
install examples/angular
if [ "${1:-}" = "--e2e" ]; then
  install tests/e2e
fi

# Rebuild the app when any of its sources is newer than the last build.
stamp=examples/angular/dist/oidc-bff-example/browser/index.html
if [ ! -f "$stamp" ] || [ -n "$(find examples/angular/src examples/angular/angular.json examples/angular/package-lock.json -newer "$stamp" -print -quit)" ]; then
  echo "prepare: building the Angular app (npx ng build)"
  (cd examples/angular && NG_CLI_ANALYTICS=false npx ng build --progress=false)
fi
