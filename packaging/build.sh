#!/usr/bin/env bash
# Builds the .deb and the .rpm of oidc-bff from one release binary:
#   target/debian/oidc-bff_<version>-1_<arch>.deb
#   target/generate-rpm/oidc-bff-<version>-1.<arch>.rpm
# Needs cargo-deb and cargo-generate-rpm (`cargo install --locked cargo-deb cargo-generate-rpm`).
# The man pages (one per command) and the bash/zsh/fish completions are generated from the binary's own clap
# definition, so they always match its flags.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo-deb cargo-generate-rpm; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing: cargo install --locked $tool" >&2; exit 2; }
done

# --version names the commit the package was built from.
export OIDC_BFF_COMMIT="${OIDC_BFF_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"

echo "== release binary"
cargo build --release --locked

out=target/packaging
rm -rf "$out"
mkdir -p "$out/completions"
install -m 0755 target/release/oidc-bff "$out/oidc-bff"
strip --strip-unneeded "$out/oidc-bff"
"$out/oidc-bff" --version

echo "== man pages and completions"
mkdir -p "$out/man"
"$out/oidc-bff" manpage --dir "$out/man"
gzip -9n "$out"/man/*.1
"$out/oidc-bff" completions bash > "$out/completions/oidc-bff.bash"
"$out/oidc-bff" completions zsh > "$out/completions/_oidc-bff"
"$out/oidc-bff" completions fish > "$out/completions/oidc-bff.fish"

echo "== .deb"
cargo deb --no-build --no-strip --locked
echo "== .rpm"
cargo generate-rpm --payload-compress zstd

ls -l target/debian/*.deb target/generate-rpm/*.rpm
