#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each (default 60 s; first
# argument overrides, e.g. `scripts/fuzz.sh 600`). Not part of CI. Uses
# cargo-fuzz (installed once if missing) on the stable toolchain with
# RUSTC_BOOTSTRAP=1 for the sanitizer flags. Crashes are left in
# fuzz/artifacts/<target>/; reproduce with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# and add a regression test before fixing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/decode_json fuzz/corpus/decode_syslog fuzz/corpus/framing fuzz/corpus/rules
# Seeds: the example events, syslog lines and the default rules.
head -c 200000 examples/audit.jsonl | split -l 50 - fuzz/corpus/decode_json/seed-
head -c 200000 examples/audit.syslog | split -l 50 - fuzz/corpus/decode_syslog/seed-
cp examples/audit.syslog fuzz/corpus/framing/seed-lf
cp rules/*.toml fuzz/corpus/rules/
for target in decode_json decode_syslog framing rules; do
  echo "== fuzz $target for ${seconds}s"
  cargo fuzz run --release "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048
done
