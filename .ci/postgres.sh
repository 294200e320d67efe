#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and benchmarks, on a loopback port
# in a temporary directory, owned by the `postgres` system user (initdb
# refuses to run as root).
#
#   .ci/postgres.sh start      prints `DIR URL` (URL: postgres://postgres@127.0.0.1:PORT/postgres)
#   .ci/postgres.sh stop DIR   stops the cluster and removes DIR
#
# Needs Debian's PostgreSQL server (`apt-get install postgresql`; 15 on this
# image) and, when run as root, the `postgres` user. Run as another user,
# the cluster is that user's.
set -euo pipefail

# The newest installed server's binaries (Debian keeps them off the PATH).
bin_dir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
        echo "postgres.sh: no PostgreSQL server found under /usr/lib/postgresql (apt-get install postgresql)" >&2
        exit 2
    fi
    echo "$dir"
}

# Runs a command as the cluster's owner.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A free loopback port: bind port 0 and read what the kernel gave.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local bin dir port
    bin=$(bin_dir)
    dir=$(mktemp -d /tmp/eo-postgres.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync > "$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    port=$(free_port)
    # Sockets in the cluster's own directory, TCP on loopback only; enough
    # connections for several replicas' pools and a 64-client pgbench.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" start > /dev/null || {
        cat "$dir/server.log" >&2
        exit 1
    }
    echo "$dir postgres://postgres@127.0.0.1:$port/postgres"
}

stop() {
    local dir=${1:?usage: postgres.sh stop DIR}
    case "$dir" in
        /tmp/eo-postgres.*) ;;
        *) echo "postgres.sh: $dir is not a cluster this script started" >&2; exit 2 ;;
    esac
    as_owner "$(bin_dir)/pg_ctl" -D "$dir/data" -m fast -w stop > /dev/null || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
