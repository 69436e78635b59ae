#!/usr/bin/env bash
# Start a throwaway PostgreSQL for tests and print its URL as the last line of stdout:
#
#   export AGENTBOLT_TEST_PG_URL=$(bash scripts/postgres.sh | tail -1)
#
# Idempotent: a server already answering on the port is reused. Listens on 127.0.0.1 only,
# trust authentication (no password), data under /tmp/agentbolt-pg-$PORT. Port: 55432, or
# $AGENTBOLT_PG_PORT. On Debian/Ubuntu, as root, installs the postgresql package if missing.
# Stop it with: pg_ctl -D /tmp/agentbolt-pg-$PORT stop  (as the user that started it).
set -euo pipefail

PORT="${AGENTBOLT_PG_PORT:-55432}"
DATA_DIR="/tmp/agentbolt-pg-${PORT}"
URL="postgresql+asyncpg://postgres@127.0.0.1:${PORT}/postgres"

log() { echo "postgres.sh: $*" >&2; }

find_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return 0
        fi
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    return 1
}

if ! BIN="$(find_bin)"; then
    if [[ "$(id -u)" -ne 0 ]]; then
        log "PostgreSQL (initdb, pg_ctl) is not installed; install it (e.g. apt-get install postgresql) and rerun"
        exit 1
    fi
    log "installing PostgreSQL with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q postgresql >&2; then
        apt-get update -q >&2
        apt-get install -y -q postgresql >&2
    fi
    BIN="$(find_bin)" || { log "postgresql installed, but initdb/pg_ctl were not found"; exit 1; }
fi

# Root may not run the server: run it as the postgres OS user (created by the Debian package).
if [[ "$(id -u)" -eq 0 ]]; then
    if ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    as_pg() { runuser -u postgres -- "$@"; }
    OWNER=postgres
else
    as_pg() { "$@"; }
    OWNER="$(id -un)"
fi

if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
    log "reusing the server already running on 127.0.0.1:$PORT"
    echo "$URL"
    exit 0
fi

if [[ ! -f "$DATA_DIR/PG_VERSION" ]]; then
    log "creating a cluster in $DATA_DIR"
    rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR"
    chown "$OWNER" "$DATA_DIR"
    chmod 700 "$DATA_DIR"
    as_pg "$BIN/initdb" -D "$DATA_DIR" -U postgres --auth=trust --encoding=UTF8 --no-locale >&2
    cat >>"$DATA_DIR/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA_DIR'
max_connections = 300
# A throwaway test server: durability is not wanted, speed is.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
fi

log "starting the server on 127.0.0.1:$PORT"
as_pg "$BIN/pg_ctl" -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w -t 60 start >&2
echo "$URL"
