# Shared by the PostgreSQL hooks. [hooks.env] must set PGDATA and PGPORT; PGBIN defaults to
# Debian's PostgreSQL 15. The server listens on 127.0.0.1:$PGPORT and a socket in
# $PGDATA/../sock. Run as root, every PostgreSQL command runs as the `postgres` user.
: "${PGDATA:?set PGDATA in [hooks.env]}"
: "${PGPORT:?set PGPORT in [hooks.env]}"
: "${PGBIN:=/usr/lib/postgresql/15/bin}"
BASE=$(dirname "$PGDATA")
SOCK=$BASE/sock
LOG=$BASE/postgres.log
ROLE_FILE=$BASE/last_role   # primary | replica: whether a rewind is needed before following
# The status hook runs every second: this preamble forks as little as it can (one `id`, and
# `mkdir` / `chown` only while the socket directory is not yet the postgres user's).
[ -d "$SOCK" ] || mkdir -p "$SOCK"
if [ "$(id -u)" = 0 ]; then
  AS_ROOT=1
  [ -O "$SOCK" ] && chown postgres "$BASE" "$SOCK" 2>/dev/null || true
else
  AS_ROOT=
fi

as_pg() {
  if [ -n "$AS_ROOT" ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
has_data() { [ -s "$PGDATA/PG_VERSION" ]; }
is_running() { has_data && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
q() { as_pg "$PGBIN/psql" -X -h "$SOCK" -p "$PGPORT" -U postgres -d postgres -Atqc "$1"; }
start_pg() {
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOG" -w -t 120 \
    -o "-p $PGPORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$SOCK" start >/dev/null
}
stop_pg() { as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m "$1" -w -t 120 stop >/dev/null 2>&1 || true; }
in_recovery() { [ "$(q 'select pg_is_in_recovery()')" = t ]; }
# Points the standby at the leader: leasehold.conf is included by postgresql.conf and
# primary_conninfo is reloadable (PostgreSQL 13+).
set_upstream() {
  printf "primary_conninfo = '%s application_name=%s'\n" "$1" "$LEASEHOLD_NAME" > "$PGDATA/leasehold.conf"
  as_pg touch "$PGDATA/standby.signal"
  chown postgres "$PGDATA/leasehold.conf" 2>/dev/null || true
}
log() { echo "$(date +%T.%N) $LEASEHOLD_NAME $*" >> "$BASE/events"; }
