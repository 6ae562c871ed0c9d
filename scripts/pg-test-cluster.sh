# A throwaway PostgreSQL cluster for the tests. Source it, then call
# `pg_test_cluster_start`: it creates a cluster in a temporary directory on a free loopback
# port, starts it, exports
#   SEKS_TEST_PG_URL   postgres://postgres:<password>@127.0.0.1:<port>/postgres (superuser)
# and stops and deletes it when the shell exits (an EXIT trap; a script with its own EXIT
# trap calls `pg_test_cluster_stop` from it). TCP connections need the password
# (scram-sha-256), so tests that store a role's password get it checked.
#
# PostgreSQL's `initdb` and `pg_ctl` are not on PATH on Debian: `pg_config --bindir` finds
# them. `initdb` refuses to run as root, so as root the cluster runs as the `postgres` user.

pg_test_cluster_start() {
  local bindir port password
  if ! command -v pg_config >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # A clean CI machine: PostgreSQL from the Debian packages.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  if ! command -v pg_config >/dev/null 2>&1; then
    echo "pg-test-cluster: pg_config not found; install PostgreSQL (e.g. apt-get install postgresql)" >&2
    return 1
  fi
  bindir="$(pg_config --bindir)"
  PG_TEST_DIR="$(mktemp -d "${TMPDIR:-/tmp}/seks-pg.XXXXXX")"
  PG_TEST_AS=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$PG_TEST_DIR"
    PG_TEST_AS=(runuser -u postgres --)
  fi
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  password="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  printf '%s\n' "$password" > "$PG_TEST_DIR/pwfile"
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_TEST_DIR/pwfile"
  "${PG_TEST_AS[@]}" "$bindir/initdb" -D "$PG_TEST_DIR/data" -U postgres --pwfile="$PG_TEST_DIR/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 >"$PG_TEST_DIR/initdb.log" 2>&1 || {
    cat "$PG_TEST_DIR/initdb.log" >&2
    return 1
  }
  rm -f "$PG_TEST_DIR/pwfile"
  PG_TEST_BINDIR="$bindir"
  trap pg_test_cluster_stop EXIT
  "${PG_TEST_AS[@]}" "$bindir/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w \
    -o "-p $port -k $PG_TEST_DIR -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null || {
    cat "$PG_TEST_DIR/server.log" >&2
    return 1
  }
  export SEKS_TEST_PG_URL="postgres://postgres:$password@127.0.0.1:$port/postgres"
  echo "pg-test-cluster: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
}

pg_test_cluster_stop() {
  if [ -n "${PG_TEST_DIR:-}" ] && [ -d "$PG_TEST_DIR/data" ]; then
    "${PG_TEST_AS[@]}" "$PG_TEST_BINDIR/pg_ctl" -D "$PG_TEST_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  [ -n "${PG_TEST_DIR:-}" ] && rm -rf "$PG_TEST_DIR"
  PG_TEST_DIR=""
}
