#!/bin/bash
# First start (empty PGDATA): make the cluster with the superuser's password, run the init scripts
# against a server that listens on its Unix socket only (so no client sees a half-made database),
# stop it. Every start: run PostgreSQL listening on all of the container's addresses.
set -euo pipefail

: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set: the superuser needs a password}"
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

first_start() {
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    pg_ctl --wait --silent --options="-c listen_addresses=''" start
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres -v db="$POSTGRES_DB" \
            <<< 'CREATE DATABASE :"db";'
    fi
    local script
    shopt -s nullglob
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sh) echo "running $script"; bash "$script" ;;
            *.sql) echo "running $script"; psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" -f "$script" ;;
            *) echo "ignoring $script" ;;
        esac
    done
    pg_ctl --wait --silent --mode=fast stop
}

if [ "$1" = postgres ]; then
    [ -s "$PGDATA/PG_VERSION" ] || first_start
    exec postgres -c listen_addresses='*' "${@:2}"
fi
exec "$@"
