#!/usr/bin/env bash
# The whole SEKS test suite, from a fresh clone: installs the official provider SDKs
# (Python) into .venv, checks formatting and lints, then runs every Rust test
# (unit tests, property tests, and end-to-end tests over real sockets).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
export SEKS_TEST_PYTHON="$PWD/.venv/bin/python"

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi
