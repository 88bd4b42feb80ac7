#!/usr/bin/env bash
# The whole test suite: formatting, lints, tests (unit, integration,
# property, golden, CLI) and a build of the benchmarks. Runs from any
# directory; needs only a Rust toolchain (rustfmt and clippy are added if
# missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo bench --no-run"
cargo bench --locked --no-run
echo "== cargo test"
cargo test --locked
