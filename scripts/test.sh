#!/usr/bin/env bash
# The whole test suite: formatting, lints, tests (integration, property,
# golden, CLI, daemon over loopback, interop with real syslog clients) and a
# build of the benchmarks. Runs from any directory on Debian with a Rust
# toolchain, as root: it installs the syslog clients the interop tests use
# (util-linux `logger`, rsyslog) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v logger >/dev/null 2>&1 || missing+=(bsdutils)
[ -x /usr/sbin/rsyslogd ] || [ -x /sbin/rsyslogd ] || missing+=(rsyslog)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

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
