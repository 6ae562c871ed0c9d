# A throwaway MariaDB server for the SQL capability tests. Source it, then call
# `mysql_test_server_start`: it creates a server in a temporary directory on a free loopback
# port, starts it, exports
#   SEKS_TEST_MYSQL_URL   mysql://root:<password>@127.0.0.1:<port>/mysql (administrator)
# and `mysql_test_server_stop` stops and deletes it (the caller's EXIT trap calls it).
# TCP logins need the password, so tests that store an account's password get it checked.
#
# MariaDB comes from the Debian packages (`mariadb-server`), which speak MySQL's protocol.
# As root, the server runs as root (`--user=root`): it is a test server in a private
# directory, never the system's.

mysql_test_server_start() {
  local port password
  if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ] && [ "$(id -u)" = 0 ] &&
    command -v apt-get >/dev/null 2>&1; then
    # A clean CI machine. Its scripts can't start the system's service without an init
    # system, which is as well: the tests start their own.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
  fi
  MYSQL_TEST_BIN="$(command -v mariadbd || echo /usr/sbin/mariadbd)"
  if [ ! -x "$MYSQL_TEST_BIN" ]; then
    echo "mysql-test-server: mariadbd not found; install MariaDB (e.g. apt-get install mariadb-server)" >&2
    return 1
  fi
  MYSQL_TEST_DIR="$(mktemp -d "${TMPDIR:-/tmp}/seks-mysql.XXXXXX")"
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  password="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  mariadb-install-db --no-defaults --datadir="$MYSQL_TEST_DIR/data" --user="$(id -un)" \
    --auth-root-authentication-method=normal --skip-test-db >"$MYSQL_TEST_DIR/install.log" 2>&1 || {
    cat "$MYSQL_TEST_DIR/install.log" >&2
    return 1
  }
  "$MYSQL_TEST_BIN" --no-defaults --datadir="$MYSQL_TEST_DIR/data" --user="$(id -un)" \
    --socket="$MYSQL_TEST_DIR/sock" --pid-file="$MYSQL_TEST_DIR/pid" --port="$port" \
    --bind-address=127.0.0.1 --skip-name-resolve --log-error="$MYSQL_TEST_DIR/server.log" --skip-log-bin \
    --max-connections=200 >/dev/null 2>&1 &
  for _ in $(seq 1 100); do
    mariadb-admin --no-defaults --socket="$MYSQL_TEST_DIR/sock" -u root ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  # Root logs in over the socket without a password; over TCP (matched by address alone,
  # `--skip-name-resolve`), with one.
  mariadb --no-defaults --socket="$MYSQL_TEST_DIR/sock" -u root -e \
    "ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '$password';" || {
    cat "$MYSQL_TEST_DIR/server.log" >&2
    return 1
  }
  export SEKS_TEST_MYSQL_URL="mysql://root:$password@127.0.0.1:$port/mysql"
  echo "mysql-test-server: $("$MYSQL_TEST_BIN" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
}

mysql_test_server_stop() {
  if [ -n "${MYSQL_TEST_DIR:-}" ] && [ -f "$MYSQL_TEST_DIR/pid" ]; then
    kill "$(cat "$MYSQL_TEST_DIR/pid")" 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -f "$MYSQL_TEST_DIR/pid" ] || break
      sleep 0.1
    done
  fi
  [ -n "${MYSQL_TEST_DIR:-}" ] && rm -rf "$MYSQL_TEST_DIR"
  MYSQL_TEST_DIR=""
}
