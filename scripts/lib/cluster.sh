# Shared by scripts/bench-daemon.sh: etcd + leasehold-ha members with PostgreSQL on loopback.
# Source it; it defines functions and a few globals, and starts nothing by itself.
#
# Every process started here is recorded by pid in LH_PIDS (daemons, etcd, ctl) or found by
# its postmaster.pid (PostgreSQL, which pg_ctl starts in its own session); `lh_cleanup` kills
# exactly those. The caller sets `trap lh_cleanup EXIT`.

LH_PIDS=()
LH_PGDATAS=()
LH_USED_PORTS=" "
LH_SYNCHRONOUS_MODE=${LH_SYNCHRONOUS_MODE:-false} # written into each member's config

lh_now() { echo "$EPOCHREALTIME"; }
lh_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

# A free loopback port below 32768: nothing answers a connect and it is not handed out twice.
lh_free_port() {
  local p
  while :; do
    p=$((12000 + RANDOM % 20000))
    case "$LH_USED_PORTS" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then LH_USED_PORTS="$LH_USED_PORTS$p "; echo "$p"; return; fi
  done
}

# lh_wait_until <seconds> <command...>: true once the command succeeds, false after the limit.
lh_wait_until() {
  local limit=$1; shift
  local until=$(( $(date +%s) + limit ))
  while [ "$(date +%s)" -lt "$until" ]; do "$@" && return 0; sleep 0.1; done
  return 1
}

# lh_start_etcd <dir>: a single-member etcd; sets LH_EP (client URL) and LH_ETCD_PID.
lh_start_etcd() {
  local dir=$1 cport pport
  cport=$(lh_free_port); pport=$(lh_free_port)
  LH_EP=http://127.0.0.1:$cport
  etcd --name lh --data-dir "$dir/etcd" --listen-client-urls "$LH_EP" --advertise-client-urls "$LH_EP" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "lh=http://127.0.0.1:$pport" >"$dir/etcd.log" 2>&1 &
  LH_ETCD_PID=$!
  LH_PIDS+=("$LH_ETCD_PID")
  lh_wait_until 20 curl -sf "$LH_EP/health" -o /dev/null || { echo "etcd did not start"; tail "$dir/etcd.log"; return 1; }
}

# lh_pg_bin: Debian's newest PostgreSQL bin dir, or nothing.
lh_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

# lh_write_member_config <file> <scope> <name> <api port> <pg port> <node dir> <ttl> <loop_wait> <retry_timeout> <token>
# safety_margin is left at its default (min(5 s, ttl / 5)). The resource is the native
# [postgresql] one; LH_RESOURCE=hooks writes the old hooks/postgres configuration instead.
LH_PGPASS=lh-superuser-pw
lh_write_member_config() {
  local file=$1 scope=$2 name=$3 api=$4 pgport=$5 dir=$6 ttl=$7 lw=$8 rt=$9 token=${10} resource top
  if [ "${LH_RESOURCE:-postgresql}" = hooks ]; then
    top="conn_url = \"host=127.0.0.1 port=$pgport user=postgres\""
    resource="[hooks]
dir = \"$LH_ROOT/examples/ha-daemon/hooks/postgres\"
timeout = \"120s\"
[hooks.env]
PGBIN = \"$LH_PGBIN\"
PGDATA = \"$dir/data\"
PGPORT = \"$pgport\""
  else
    # PostgreSQL runs as postgres and keeps its socket and log next to the data directory.
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    top=""
    resource="[postgresql]
data_dir = \"$dir/data\"
bin_dir = \"$LH_PGBIN\"
listen = \"127.0.0.1:$pgport\"
[postgresql.authentication.superuser]
password = \"$LH_PGPASS\"
[postgresql.authentication.replication]
password = \"lh-replication-pw\""
  fi
  cat >"$file" <<EOF
scope = "$scope"
name = "$name"
ttl = "${ttl}s"
loop_wait = "${lw}s"
retry_timeout = "${rt}s"
synchronous_mode = $LH_SYNCHRONOUS_MODE
$top
# The bench kills leaders with kill -9: an armed watchdog (the default mode is automatic)
# would reset the machine.
[watchdog]
mode = "off"
[restapi]
listen = "127.0.0.1:$api"
token = "$token"
$resource
[etcd]
endpoints = ["$LH_EP"]
${LH_ETCD_MEMBER_TTL:+member_ttl = \"$LH_ETCD_MEMBER_TTL\"}
EOF
  LH_PGDATAS+=("$dir/data")
}

# The postmaster pid of a data dir, if one is recorded.
lh_postmaster_pid() { [ -s "$1/postmaster.pid" ] && head -1 "$1/postmaster.pid"; }

# lh_kill_postmaster <pgdata>: SIGKILL to the postmaster's process group (the postmaster and
# all its children; pg_ctl starts it in its own session). Only a group whose leader is that
# postmaster is signalled.
lh_kill_postmaster() {
  local pm pgid
  pm=$(lh_postmaster_pid "$1") || return 0
  [ -n "$pm" ] || return 0
  # The file outlives a killed postmaster: signal the pid only while it is still a postgres
  # process serving this data dir, never a process that reused the pid.
  { tr '\0' ' ' <"/proc/$pm/cmdline"; } 2>/dev/null | grep -qF -- "$1" || return 0
  pgid=$(ps -o pgid= -p "$pm" 2>/dev/null | tr -d ' ' || true)
  if [ -n "$pgid" ] && [ "$pgid" = "$pm" ]; then
    kill -9 -- "-$pgid" 2>/dev/null || true
  else
    kill -9 "$pm" 2>/dev/null || true
  fi
}

# lh_forget <pid>: drop a reaped child from LH_PIDS, so cleanup never signals a reused pid.
lh_forget() {
  local keep=() p
  for p in "${LH_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  LH_PIDS=("${keep[@]}")
}

# lh_kill_pid <pid>: SIGKILL, reap and forget one of our own children.
lh_kill_pid() { kill -9 "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; lh_forget "$1"; }

lh_cleanup() {
  set +e
  local pid d
  for pid in "${LH_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  for pid in "${LH_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  # A hook may have just restarted a postmaster: look a few times.
  for _ in 1 2 3; do
    for d in "${LH_PGDATAS[@]}"; do lh_kill_postmaster "$d"; done
    sleep 0.3
  done
}

# HTTP status code of GET <url>.
lh_http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1"; }

# lh_leader_key <scope>: "<member> <lease id>" of /service/<scope>/leader, read through etcd's
# JSON gateway (one curl, no etcdctl start-up), or nothing.
lh_leader_key() {
  local key body val lease
  key=$(printf '/service/%s/leader' "$1" | base64 -w0)
  body=$(curl -s -m 1 -X POST "$LH_EP/v3/kv/range" -d "{\"key\":\"$key\"}") || return 1
  val=$(printf '%s' "$body" | sed -n 's/.*"value":"\([^"]*\)".*/\1/p')
  [ -n "$val" ] || return 1
  lease=$(printf '%s' "$body" | sed -n 's/.*"lease":"\([^"]*\)".*/\1/p')
  printf '%s %s\n' "$(printf '%s' "$val" | base64 -d 2>/dev/null | sed -n 's/.*"member":"\([^"]*\)".*/\1/p')" "${lease:-0}"
}

# lh_member_count <scope>: how many keys are under /service/<scope>/members/.
lh_member_count() {
  local from to
  from=$(printf '/service/%s/members/' "$1" | base64 -w0)
  to=$(printf '/service/%s/members0' "$1" | base64 -w0) # the prefix's end: '/' + 1 = '0'
  curl -s -m 1 -X POST "$LH_EP/v3/kv/range" -d "{\"key\":\"$from\",\"range_end\":\"$to\",\"count_only\":true}" \
    | sed -n 's/.*"count":"\([0-9]*\)".*/\1/p'
}

# lh_lease_ttl <lease id>: whole seconds left on an etcd lease, as etcd reports them: the
# remaining time truncated (etcd 3.4 answers 19 from 20.0 s down to 19.0 s, and leaves the
# field out at 0); -1 once the lease is gone, nothing when etcd did not answer.
lh_lease_ttl() {
  local body
  body=$(curl -s -m 1 -X POST "$LH_EP/v3/lease/timetolive" -d "{\"ID\":\"$1\"}") || return 1
  case $body in
    *'"grantedTTL"'*) printf '%s\n' "$(printf '%s' "$body" | sed -n 's/.*"TTL":"\([^"]*\)".*/\1/p')" | sed 's/^$/0/' ;;
    *'"TTL":"-1"'*) echo -1 ;;
    *) return 1 ;;
  esac
}

# lh_sync_standby <scope>: the first sync_standby of /service/<scope>/sync and the leader it was
# written for ("<standby> <leader>"), or nothing.
lh_sync_standby() {
  local key body val
  key=$(printf '/service/%s/sync' "$1" | base64 -w0)
  body=$(curl -s -m 1 -X POST "$LH_EP/v3/kv/range" -d "{\"key\":\"$key\"}") || return 1
  val=$(printf '%s' "$body" | sed -n 's/.*"value":"\([^"]*\)".*/\1/p')
  [ -n "$val" ] || return 1
  val=$(printf '%s' "$val" | base64 -d 2>/dev/null)
  local sb ld
  sb=$(printf '%s' "$val" | sed -n 's/.*"sync_standby":\["\([^"]*\)".*/\1/p')
  ld=$(printf '%s' "$val" | sed -n 's/.*"leader":"\([^"]*\)".*/\1/p')
  [ -n "$sb" ] && printf '%s %s\n' "$sb" "$ld"
}

# lh_psql <port> <sql>: one statement on 127.0.0.1:<port> as postgres; true when it committed.
lh_psql() {
  PGPASSWORD=$LH_PGPASS PGCONNECT_TIMEOUT=1 "$LH_PGBIN/psql" -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -Atc "$2" >/dev/null 2>&1
}

# lh_psql_value <port> <sql>: the single value a query returns (nothing on error).
lh_psql_value() {
  PGPASSWORD=$LH_PGPASS PGCONNECT_TIMEOUT=1 "$LH_PGBIN/psql" -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -Atc "$2" 2>/dev/null
}

# A persistent psql session (a coprocess), so a write probe costs one round trip and not a
# process start and a login: Patroni's bench driver probes through one psycopg2 session too.
# lh_session_open <port>; lh_session_try <sql> (true when it committed; a lost session is
# reopened on the next call); lh_session_close. One session at a time. The caller must ignore
# SIGPIPE (`trap '' PIPE`): psql exits when the server goes away.
LH_SESSION_PORT=""
lh_session_open() {
  lh_session_close
  LH_SESSION_PORT=$1
  coproc LH_SESSION { PGPASSWORD=$LH_PGPASS PGCONNECT_TIMEOUT=1 exec "$LH_PGBIN/psql" -X -q -h 127.0.0.1 \
    -p "$LH_SESSION_PORT" -U postgres -d postgres -At -v ON_ERROR_STOP=0 2>&1; }
  LH_PIDS+=("$LH_SESSION_PID")
}
lh_session_close() {
  if [ -n "${LH_SESSION_PID:-}" ]; then
    local pid=$LH_SESSION_PID
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    lh_forget "$pid"
  fi
  LH_SESSION_PID=""
}
lh_session_try() {
  [ -n "${LH_SESSION_PID:-}" ] && kill -0 "$LH_SESSION_PID" 2>/dev/null || lh_session_open "$LH_SESSION_PORT"
  local in=${LH_SESSION[1]:-} out=${LH_SESSION[0]:-} line failed=0
  [ -n "$in" ] && [ -n "$out" ] || { lh_session_close; return 1; }
  printf '%s;\n\\echo __lh_done__\n' "$1" >&"$in" 2>/dev/null || { lh_session_close; return 1; }
  while IFS= read -r -t 2 line <&"$out"; do
    case $line in
      __lh_done__) return "$failed" ;;
      *ERROR:* | *FATAL:* | *error:* | *"connection to server"*) failed=1 ;;
    esac
  done
  lh_session_close # no answer within 2 s, or psql exited
  return 1
}

# lh_proc_cpu_ticks <pid>: "<utime+stime> <cutime+cstime>" in clock ticks (/proc/<pid>/stat
# fields 14-17, counted after the `)` that ends the command name).
lh_proc_cpu_ticks() {
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13, $14 + $15 }'
}

# lh_proc_rss_kib <pid>: VmRSS in KiB.
lh_proc_rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# lh_pg_pids <pgdata>: the postmaster of a data dir and its children (as Patroni's bench
# counts PostgreSQL's CPU and memory).
lh_pg_pids() {
  local pm
  pm=$(lh_postmaster_pid "$1") || return 0
  [ -n "$pm" ] && [ -d "/proc/$pm" ] || return 0
  echo "$pm"
  ps -o pid= --ppid "$pm" 2>/dev/null | tr -d ' '
}

# lh_pids_cpu_ticks <pid...>: the sum of utime+stime of the processes still running.
lh_pids_cpu_ticks() {
  local p t=0 c
  for p in "$@"; do
    c=$(lh_proc_cpu_ticks "$p" 2>/dev/null | cut -d' ' -f1) || c=0
    t=$((t + ${c:-0}))
  done
  echo "$t"
}

# lh_pids_pss_kib <pid...>: the sum of their proportional set sizes (smaps_rollup Pss).
lh_pids_pss_kib() {
  local p t=0 c
  for p in "$@"; do
    c=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null) || c=0
    t=$((t + ${c:-0}))
  done
  echo "$t"
}

# lh_etcd_grpc_counts: "<service/method/type> <handled> <msg_received>" per method from
# /metrics (type: unary, bidi_stream, ...).
lh_etcd_grpc_counts() {
  curl -s -m 5 "$LH_EP/metrics" | awk '
    /^grpc_server_(handled_total|msg_received_total)\{/ {
      m = $0; sub(/.*grpc_method="/, "", m); sub(/".*/, "", m)
      s = $0; sub(/.*grpc_service="/, "", s); sub(/".*/, "", s); sub(/.*\./, "", s)
      y = $0; sub(/.*grpc_type="/, "", y); sub(/".*/, "", y)
      k = s "/" m "/" y
      if ($0 ~ /^grpc_server_handled_total/) h[k] += $NF; else r[k] += $NF
      seen[k] = 1
    }
    END { for (k in seen) print k, h[k] + 0, r[k] + 0 }' | sort
}
