# Sourced by scripts/test and scripts/bench: starts a throwaway PostgreSQL cluster (unix socket
# only, no TCP port) in a temp dir, exports UNITAS_TEST_POSTGRES_URL, and removes it all on exit.
# Expects `log` and `die` to be defined. The test cluster runs with fsync off (speed, nothing to
# keep); UNITAS_PG_FSYNC=on makes it durable, for benchmarks.

work=$(mktemp -d /tmp/unitas-pg.XXXXXX)
pg_ctl_bin=""
cleanup() {
    if [ -n "$pg_ctl_bin" ] && [ -f "$work/pg/postmaster.pid" ]; then
        run_as_pg "$pg_ctl_bin" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT


pg_bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bindir" ] && [ -x "$pg_bindir/initdb" ] \
    || die "PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)"
pg_ctl_bin="$pg_bindir/pg_ctl"

# initdb refuses to run as root: the cluster belongs to the postgres user when we are root.
run_as_pg() {
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    else
        "$@"
    fi
}
mkdir -p "$work/pg" "$work/sock"
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no postgres user to own the test cluster"
    chown postgres "$work" "$work/pg" "$work/sock"
    chmod 755 "$work"
fi
log "starting a throwaway PostgreSQL cluster in $work/pg"
run_as_pg "$pg_bindir/initdb" -D "$work/pg" -U postgres -A trust -E UTF8 --no-locale >"$work/initdb.log" 2>&1 \
    || { cat "$work/initdb.log" >&2; die "initdb"; }
# No TCP listener at all: tests reach the cluster through a socket in the temp dir.
run_as_pg "$pg_ctl_bin" -D "$work/pg" -l "$work/pg.log" -w -t 60 \
    -o "-c listen_addresses='' -k $work/sock -c fsync=${UNITAS_PG_FSYNC:-off} -c full_page_writes=${UNITAS_PG_FSYNC:-off} -c max_connections=200" start >/dev/null \
    || { cat "$work/pg.log" >&2; die "starting PostgreSQL"; }
export UNITAS_TEST_POSTGRES_URL="postgres://postgres@localhost/postgres?host=$work/sock"

