#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) from its committed seeds in seeds/<target>/.
# New inputs go to a temporary corpus, so the committed seeds stay small. A crash stops the run
# with the input in tests/fuzz/artifacts/<target>/. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz@0.13.2 --locked`).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-30}"
targets=(path cookie yarp flags flow_cookie sealed_record logout_token admin_request policy)
cargo +nightly fuzz build --fuzz-dir tests/fuzz
for target in "${targets[@]}"; do
  corpus=$(mktemp -d)
  log=$(mktemp)
  echo "== fuzz $target (${seconds} s)"
  status=0
  cargo +nightly fuzz run --fuzz-dir tests/fuzz "$target" "$corpus" "tests/fuzz/seeds/$target" \
    -- -max_total_time="$seconds" >"$log" 2>&1 || status=$?
  grep -E '^Done' "$log" || true
  rm -rf "$corpus"
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz target $target failed (exit $status); input in tests/fuzz/artifacts/$target/" >&2
    exit 1
  fi
  rm -f "$log"
done
echo "fuzz: ${#targets[@]} targets ran ${seconds} s each without a finding"
