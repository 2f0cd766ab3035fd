#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster on loopback for the tests that run against a real PostgreSQL,
# and prints the URL for CRUX_TEST_POSTGRES_URL. Prints nothing (exit 0) where PostgreSQL is not installed.
# Usage: eval "$(scripts/postgres-for-tests.sh start)"; …; scripts/postgres-for-tests.sh stop
set -euo pipefail
DIR=${CRUX_PG_DIR:-/tmp/crux-test-pg}
PORT=${CRUX_PG_PORT:-55432}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[[ -n "$BIN" && -x "$BIN/initdb" ]] || exit 0
as_owner() {  # PostgreSQL refuses to run as root
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "${1:-start}" in
  start)
    if [[ ! -f "$DIR/PG_VERSION" ]]; then
      mkdir -p "$DIR"; [[ $(id -u) == 0 ]] && chown postgres "$DIR"
      as_owner "$BIN/initdb" -D "$DIR" -U crux --auth=trust >/dev/null
    fi
    as_owner "$BIN/pg_ctl" -D "$DIR" -o "-k /tmp -c listen_addresses=127.0.0.1 -p $PORT" -l "$DIR/log" -w start >/dev/null
    "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U crux -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='crux_test'" \
      | grep -q 1 || "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U crux crux_test
    echo "export CRUX_TEST_POSTGRES_URL=postgresql+psycopg://crux@127.0.0.1:$PORT/crux_test"
    ;;
  stop)
    [[ -f "$DIR/PG_VERSION" ]] && as_owner "$BIN/pg_ctl" -D "$DIR" -m fast stop >/dev/null || true
    ;;
esac
