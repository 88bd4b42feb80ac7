#!/usr/bin/env bash
# The whole test suite: formatting, lints, tests (integration, property,
# golden, CLI, daemon over loopback, interop with real syslog clients) and a
# build of the benchmarks. Runs from any directory on Debian with a Rust
# toolchain, as root: it installs what the interop tests use when missing
# (util-linux `logger`, rsyslog, the aiosmtpd SMTP server, the Standard
# Webhooks reference verifier from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v logger >/dev/null 2>&1 || missing+=(bsdutils)
[ -x /usr/sbin/rsyslogd ] || [ -x /sbin/rsyslogd ] || missing+=(rsyslog)
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || missing+=(python3-aiosmtpd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Standard Webhooks reference verifier (PyPI) for the signature interop test.
if ! python3 -c 'import standardwebhooks' >/dev/null 2>&1; then
  echo "== installing standardwebhooks (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check standardwebhooks
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
