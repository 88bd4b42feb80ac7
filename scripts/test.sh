#!/usr/bin/env bash
# The whole test suite: formatting, lints, tests (integration, property,
# golden, CLI, daemon over loopback, interop with real syslog clients) and a
# build of the benchmarks. Runs from any directory on Debian with a Rust
# toolchain, as root: it installs what the interop tests use when missing
# (util-linux `logger`, rsyslog, the aiosmtpd SMTP server, Chromium for the
# console's browser test, the Standard
# Webhooks reference verifier and the MCP Python SDK from PyPI, and the
# tansu Kafka-protocol broker from crates.io, built once into
# $MCP_ALERTD_TOOLS, default
# /opt/mcp-alertd-tools, outside the clone). The broker and cargo-deb are
# built without optimizations (`--debug`): the tests need them correct,
# not fast, and an unoptimized build takes a fraction of the time.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v logger >/dev/null 2>&1 || missing+=(bsdutils)
[ -x /usr/sbin/rsyslogd ] || [ -x /sbin/rsyslogd ] || missing+=(rsyslog)
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || missing+=(python3-aiosmtpd)
# systemd-analyze and systemd-socket-activate for the unit and activation tests.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
# Debian's Chromium for the console's browser test (headless).
[ -x /usr/bin/chromium ] || missing+=(chromium)
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

# The official MCP Python SDK for the SDK interop test (integrations/python).
if ! python3 -c 'import mcp, uvicorn, httpx' >/dev/null 2>&1; then
  echo "== installing the MCP Python SDK (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "mcp==1.30.0"
fi

# A Kafka-protocol broker for the Kafka interop test: tansu, installed once.
tools="${MCP_ALERTD_TOOLS:-/opt/mcp-alertd-tools}"
tansu="$tools/tansu-0.6.0/bin/tansu"
if [ ! -x "$tansu" ]; then
  echo "== installing tansu 0.6.0 into $tools (once, unoptimized)"
  cargo install --quiet --debug tansu --version 0.6.0 --locked --features libsql --root "$tools/tansu-0.6.0"
fi

# cargo-deb for the package test, installed once beside the broker.
cargo_deb="$tools/cargo-deb/bin/cargo-deb"
if [ ! -x "$cargo_deb" ]; then
  echo "== installing cargo-deb into $tools (once)"
  cargo install --quiet --debug cargo-deb --version 3.8.0 --locked --root "$tools/cargo-deb"
fi

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

stage() { echo "== $* ($(date +%T))"; }

stage "cargo fmt --check"
cargo fmt --all -- --check
stage "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
stage "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
# The release binary and the benchmarks in one build: one feature
# resolution, so the package below reuses this binary instead of building
# the release profile a second time.
stage "cargo build --release --bins --benches"
cargo build --release --locked --bins --benches
stage "cargo test"
cargo test --locked

# The tests that need a real broker: tansu on a free loopback port, with
# its SQLite storage in a scratch directory; stopped on exit.
broker_dir="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
(cd "$broker_dir" && exec "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine sqlite://tansu.db \
  >"$broker_dir/broker.log" 2>&1) &
broker_pid=$!
trap 'kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; rm -rf "$broker_dir"' EXIT
for _ in $(seq 1 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
  sleep 0.1
done
stage "cargo test (real broker: tansu on 127.0.0.1:$port)"
MCP_ALERTD_KAFKA_BROKER="127.0.0.1:$port" cargo test --locked --test it -- --ignored kafka::

# The Debian package, built and installed into a throwaway root.
stage "packaging/build-deb.sh (the release binary built above)"
deb="$(CARGO_DEB="$cargo_deb" MCP_ALERTD_PREBUILT=1 packaging/build-deb.sh)"
stage "cargo test (the package: $deb)"
MCP_ALERTD_DEB="$PWD/$deb" cargo test --locked --test it -- --ignored packaging::
stage "done"
