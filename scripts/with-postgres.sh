#!/usr/bin/env bash
# Runs a command against a throwaway PostgreSQL cluster:
#
#   scripts/with-postgres.sh cargo test -p trustfold-server
#
# Creates a cluster (initdb) in a fresh temp dir, starts it on a free port of 127.0.0.1
# with fsync on, creates the database `trustfold`, exports
# DATABASE_URL=postgres://postgres@127.0.0.1:PORT/trustfold, runs the command, and always
# stops and deletes the cluster afterwards. Exits with the command's status.
# PG_EXTRA_OPTS adds server options, e.g. to profile a benchmark:
#   PG_EXTRA_OPTS="-c shared_preload_libraries=pg_stat_statements" scripts/with-postgres.sh …
#
# PostgreSQL refuses to run as root: as root the cluster runs as the `postgres` OS user
# (created if missing, via runuser); as any other user it runs as that user. If no
# PostgreSQL server binaries are found, `postgresql` is installed with apt-get (root only).
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

log() { echo "with-postgres: $*" >&2; }

find_bindir() {
    local d
    if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ]; then
        echo "$PG_BINDIR"; return 0
    fi
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    done
    if command -v pg_config >/dev/null 2>&1; then
        d="$(pg_config --bindir)"
        if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    fi
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"; return 0
    fi
    return 1
}

if ! BINDIR="$(find_bindir)"; then
    # As root, or through sudo when available (as scripts/toolchain.sh installs).
    if [ "$(id -u)" -eq 0 ]; then
        as_root() { "$@"; }
    elif command -v sudo >/dev/null 2>&1; then
        as_root() { sudo -E "$@"; }
    else
        log "PostgreSQL server binaries not found, and no root or sudo to install them; install them (Debian: apt-get install postgresql) or set PG_BINDIR"
        exit 1
    fi
    log "PostgreSQL not found; installing it with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >&2
    as_root apt-get install -y -qq postgresql >&2
    BINDIR="$(find_bindir)" || { log "postgresql installed but initdb still not found"; exit 1; }
fi

if [ "$(id -u)" -eq 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
        log "creating the OS user postgres"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin postgres
    fi
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/trustfold-pg.XXXXXX")"
DATA="$WORK/data"
PORT=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local status=$?
    if [ -n "$PORT" ] && [ -f "$DATA/postmaster.pid" ]; then
        as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 \
            || as_pg "$BINDIR/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" -eq 0 ] && chown postgres: "$WORK"
chmod 700 "$WORK"

# --no-sync only skips initdb's final flush of the empty cluster; the server runs with
# fsync on.
as_pg "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
    >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; log "initdb failed"; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

started=""
for _ in 1 2 3 4 5 6 7 8; do
    candidate=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    port_free "$candidate" || continue
    PORT="$candidate"
    if as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$WORK/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories='$WORK' \
            -c fsync=on -c synchronous_commit=on -c max_connections=300 \
            -c shared_buffers=128MB ${PG_EXTRA_OPTS:-}" \
        start >/dev/null 2>&1; then
        started=1
        break
    fi
    log "could not start on port $PORT, trying another"
    PORT=""
done
if [ -z "$started" ]; then
    tail -n 30 "$WORK/server.log" >&2 || true
    log "could not start PostgreSQL"
    exit 1
fi

"$BINDIR/createdb" -h 127.0.0.1 -p "$PORT" -U postgres trustfold
export DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/trustfold"
log "PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}') on $DATABASE_URL (data in $WORK)"

# Run the command in the background and wait for it, so that INT/TERM reach this
# script at once (bash runs traps only between foreground commands), are passed on to
# the command (as TERM: background jobs of a script ignore INT), and the cluster is
# still stopped and deleted.
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 130' INT
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM
set +e
wait "$child"
status=$?
set -e
exit "$status"
