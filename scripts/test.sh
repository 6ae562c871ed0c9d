#!/usr/bin/env bash
# The whole SEKS test suite, from a fresh clone: installs the official provider SDKs, an
# SMTP server and the MCP client (Python) into .venv, starts a throwaway PostgreSQL and
# MariaDB, checks formatting and lints, then runs every Rust test (unit tests, property
# tests, and end-to-end tests over real sockets), the end-to-end ones on both stores
# (SQLite, PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."

# The proxy-mode tests drive curl and git (git's smart-HTTP backend included).
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v git >/dev/null 2>&1 || missing+=(git)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
export SEKS_TEST_PYTHON="$PWD/.venv/bin/python"

# A throwaway PostgreSQL for the SQL capability tests and the PostgreSQL store pass
# (SEKS_TEST_PG_URL), and a throwaway MariaDB for the MySQL capability tests
# (SEKS_TEST_MYSQL_URL), both stopped on exit.
# shellcheck source=scripts/pg-test-cluster.sh
source scripts/pg-test-cluster.sh
# shellcheck source=scripts/mysql-test-server.sh
source scripts/mysql-test-server.sh
pg_test_cluster_start
trap 'pg_test_cluster_stop; mysql_test_server_stop' EXIT
mysql_test_server_start
# Tests that need the cluster fail, rather than skip, when it is missing.
export SEKS_TEST_FULL=1

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# Every test on the embedded SQLite store, then the end-to-end tests (the only ones that
# open a store) again with PostgreSQL as the store: a database per test on the cluster.
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast || status=1
  SEKS_TEST_STORE=postgres cargo nextest run --locked --no-fail-fast --test integration || status=1
else
  cargo test --locked --no-fail-fast || status=1
  SEKS_TEST_STORE=postgres cargo test --locked --no-fail-fast --test integration || status=1
fi
exit "$status"
