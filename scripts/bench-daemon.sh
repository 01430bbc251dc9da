#!/usr/bin/env bash
# Benchmark of the HA daemon beside Patroni 3.0.2, in the same run on the same etcd (issue 15
# item 8). One etcd; per repetition a fresh cluster of three leasehold-ha members (release
# build), each driving PostgreSQL 15 on loopback through the native [postgresql] resource
# (LH_RESOURCE=hooks: the old hooks/postgres). A repetition runs:
#   bootstrap -> (first repetition only) idle window -> `ctl switchover` -> settle ->
#   sleep a uniformly random time in [0, ttl) -> kill -9 of the leader (daemon + its
#   postmaster's process group) -> lease expiry -> new primary writable.
# Then, unless BENCH_PATRONI=0, ../shared/anchors/patroni/patroni-failover.sh runs Patroni the
# same way on the same etcd, and one table puts both side by side (min / median / max).
#
#   scripts/bench-daemon.sh                                  # tight + default, sync, 4 reps, Patroni
#   BENCH_MODES="sync async" BENCH_REPS=1 BENCH_IDLE=20 BENCH_PATRONI=0 scripts/bench-daemon.sh
#
# Variables:
#   BENCH_PROFILES  "tight default" (tight = ttl 20 / loop_wait 1 / retry_timeout 3; default =
#                   30 / 10 / 10, Patroni's defaults; or name:ttl:loop_wait:retry_timeout)
#   BENCH_MODES     "sync" (synchronous_mode = true); "async", or "sync async" for both
#   BENCH_REPS      4 per profile and mode (Patroni: per profile)
#   BENCH_IDLE      60 s idle window in the first repetition (0 skips ours)
#   BENCH_PATRONI   1 when the anchor dir exists (BENCH_PATRONI_DIR, default
#                   ../shared/anchors/patroni from the repository root), else 0
#   BENCH_OUT       also write the table there (raw results beside it: .results, .patroni.json)
#   BENCH_IDLE_SETTLE  seconds between bootstrap and the idle window (default max(5, 2 x
#                   loop_wait), as Patroni's bench); longer shows the cost once PostgreSQL
#                   writes no more WAL (the window's WAL bytes are printed as idle_wal_bytes)
#   LH_ETCD_MEMBER_TTL  sets [etcd] member_ttl for our members (for example 180s; unset:
#                   member keys on the ttl lease, as Patroni's)
#   BENCH_KEEP=1 keeps the work dir and logs; BENCH_TRACE=1 runs with set -x;
#   BENCH_SKIP_SETUP=1 skips scripts/setup.sh.
# Not part of CI: ~45 minutes with the defaults (about half of it Patroni's).
set -euo pipefail
[ -z "${BENCH_TRACE:-}" ] || set -x
trap '' PIPE # a probe session's psql exits when its server goes away: a write error, not a signal

LH_ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$LH_ROOT"
# shellcheck source=scripts/lib/cluster.sh
. "$LH_ROOT/scripts/lib/cluster.sh"

PROFILES=${BENCH_PROFILES:-tight default}
MODES=${BENCH_MODES:-sync}
REPS=${BENCH_REPS:-4}
IDLE=${BENCH_IDLE:-60}
OUT=${BENCH_OUT:-}
POLL=0.02
PATRONI_DIR=${BENCH_PATRONI_DIR:-$LH_ROOT/../shared/anchors/patroni}
if [ -z "${BENCH_PATRONI:-}" ]; then
  if [ -f "$PATRONI_DIR/patroni-failover.sh" ]; then BENCH_PATRONI=1; else BENCH_PATRONI=0; fi
fi
# The anchor's fixed ports (PostgreSQL 13432-13434, REST 13008-13010): never ours.
LH_USED_PORTS=" 13432 13433 13434 13008 13009 13010 "

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
note() { printf '%s\n' "$*" >&2; }

profile_spec() { # <name or name:ttl:loop_wait:retry_timeout> -> name:ttl:loop_wait:retry_timeout
  case $1 in
    tight) echo tight:20:1:3 ;;
    default) echo default:30:10:10 ;;
    *:*:*:*) echo "$1" ;;
    *) note "unknown profile $1 (tight, default, or name:ttl:loop_wait:retry_timeout)"; exit 2 ;;
  esac
}
SPECS=""
for p in $PROFILES; do SPECS="$SPECS $(profile_spec "$p")"; done
SPECS=${SPECS# }
for m in $MODES; do case $m in sync | async) ;; *) note "unknown mode $m (sync, async)"; exit 2 ;; esac; done

if [ -z "${BENCH_SKIP_SETUP:-}" ]; then
  "$LH_ROOT/scripts/setup.sh" >/dev/null 2>&1 || note "setup.sh failed; continuing with what is installed"
fi
command -v etcd >/dev/null || { note "etcd is required (apt-get install etcd-server)"; exit 1; }
command -v python3 >/dev/null || { note "python3 is required (the table)"; exit 1; }
LH_PGBIN=$(lh_pg_bin)
[ -n "$LH_PGBIN" ] && [ -x "$LH_PGBIN/initdb" ] || { note "PostgreSQL is required (apt-get install postgresql)"; exit 1; }
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then note "running as root needs the postgres user"; exit 1; fi

say "build (release)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$LH_ROOT/target}
cargo build -q --release -p leasehold-ha-daemon --bin leasehold-ha
BIN=$CARGO_TARGET_DIR/release/leasehold-ha

WORK=$(mktemp -d /tmp/leasehold-bench.XXXXXX)
chmod 755 "$WORK"
RESULTS=$WORK/results # lines: <column> <measure> <value>; column = <profile>/<mode>
: >"$RESULTS"
cleanup() {
  lh_cleanup
  if [ -n "${BENCH_KEEP:-}" ]; then note "work dir kept: $WORK"; else rm -rf "$WORK" 2>/dev/null || { sleep 1; rm -rf "$WORK"; }; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

record() { echo "$1 $2 $3" >>"$RESULTS"; note "  $2: $3"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

say "etcd"
lh_start_etcd "$WORK"
note "etcd on $LH_EP; profiles: $SPECS; modes: $MODES; repetitions: $REPS; etcd member_ttl: ${LH_ETCD_MEMBER_TTL:-unset}; load: $(cat /proc/loadavg)"
TOKEN=bench-$RANDOM$RANDOM

# State of the current repetition.
declare -a API PGPORT DAEMON
SCOPE=""; RDIR=""; DEAD=""; COL=""; MODE=""

leader_index() { # by the members' REST API: who says it is the primary
  local i
  for i in 1 2 3; do
    [ -n "$DEAD" ] && [ "$i" = "$DEAD" ] && continue
    [ "$(lh_http_code "http://127.0.0.1:${API[$i]}/primary")" = 200 ] && { echo "$i"; return 0; }
  done
  return 1
}
# As Patroni's bench: the leader's pg_stat_replication has two streaming standbys.
replicas_streaming() {
  local l n
  l=$(leader_index) || return 1
  n=$(lh_psql_value "${PGPORT[$l]}" "select count(*) from pg_stat_replication where state = 'streaming'")
  [ "${n:-0}" -ge 2 ]
}
# Synchronous mode: the sync key names a standby for the current leader.
sync_settled() {
  [ "$MODE" = sync ] || return 0
  local l s
  l=$(leader_index) || return 1
  s=$(lh_sync_standby "$SCOPE") || return 1
  [ "${s#* }" = "n$l" ] && [ "${s%% *}" != "n$l" ]
}
settled() { replicas_streaming && sync_settled; }
key_member() { local k; k=$(lh_leader_key "$SCOPE") || return 1; echo "${k%% *}"; }
members_registered() { [ "$(lh_member_count "$SCOPE")" = 3 ]; }
ctl() { "$BIN" --config "$RDIR/n1.toml" ctl "$@"; }

start_cluster() { # <rep> <ttl> <loop_wait> <retry_timeout>
  SCOPE=bench-${COL//\//-}-$1; RDIR=$WORK/${COL//\//-}-$1; DEAD=""
  mkdir -p "$RDIR"
  local i
  for i in 1 2 3; do
    API[$i]=$(lh_free_port); PGPORT[$i]=$(lh_free_port)
    mkdir -p "$RDIR/n$i"
    LH_SYNCHRONOUS_MODE=$([ "$MODE" = sync ] && echo true || echo false) \
      lh_write_member_config "$RDIR/n$i.toml" "$SCOPE" "n$i" "${API[$i]}" "${PGPORT[$i]}" "$RDIR/n$i" "$2" "$3" "$4" "$TOKEN"
  done
  local t0; t0=$(lh_now)
  for i in 1 2 3; do
    LEASEHOLD_LOG=${LEASEHOLD_LOG:-info} "$BIN" --config "$RDIR/n$i.toml" run 2>"$RDIR/n$i.log" &
    DAEMON[$i]=$!
    LH_PIDS+=("$!")
  done
  lh_wait_until 180 leader_index >/dev/null || { note "no leader elected"; tail -5 "$RDIR"/n*.log >&2; return 1; }
  local l; l=$(leader_index)
  lh_wait_until 120 lh_psql "${PGPORT[$l]}" "create table if not exists bench(t text, at timestamptz default now())" \
    || { note "cannot create the table on n$l"; return 1; }
  record "$COL" bootstrap_writable "$(lh_since "$t0")"
  lh_wait_until 240 replicas_streaming || { note "replicas did not catch up"; tail -5 "$RDIR"/n*.log >&2; return 1; }
  record "$COL" bootstrap_streaming "$(lh_since "$t0")"
  lh_wait_until 60 members_registered || { note "not all members registered"; return 1; }
  lh_wait_until 60 sync_settled || { note "no sync standby published"; return 1; }
  # The leader checks a switchover candidate against the cluster view of its last HA loop
  # (notes/daemon-bench.md, observation 3): give it one loop_wait to see every member.
  sleep "$(($3 + 1))"
}

stop_cluster() {
  local i
  lh_session_close
  for i in 1 2 3; do lh_kill_pid "${DAEMON[$i]}"; done
  for _ in 1 2 3; do
    for i in 1 2 3; do lh_kill_postmaster "$RDIR/n$i/data"; done
    sleep 0.3
  done
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$RDIR"
}

# Measured as Patroni's bench measures its members: VmRSS and utime+stime of the daemon's own
# pid (Patroni's status queries run inside its process; ours too, and the reaped children
# -- hooks -- are recorded apart), PostgreSQL = the postmaster and its children (utime+stime,
# PSS), etcd = unary calls handled/s and stream messages received/s.
idle_window() { # <ttl> <loop_wait> <seconds>
  local secs=$3 i hz a b
  hz=$(getconf CLK_TCK)
  # Let the bootstrap's writes settle (Patroni's: max(3, 2 loop_wait)); BENCH_IDLE_SETTLE
  # waits longer, for a window in which PostgreSQL itself writes no WAL.
  sleep "${BENCH_IDLE_SETTLE:-$(($2 * 2 > 5 ? $2 * 2 : 5))}"
  declare -A c0 k0 pg0 pgp
  for i in 1 2 3; do
    read -r c0[$i] k0[$i] < <(lh_proc_cpu_ticks "${DAEMON[$i]}")
    # shellcheck disable=SC2046
    pg0[$i]=$(lh_pids_cpu_ticks $(lh_pg_pids "$RDIR/n$i/data"))
  done
  local before after t0 dt l wal0 wal1
  l=$(leader_index || echo 0)
  # WAL the primary wrote in the window: each change of its position is a status write and
  # a member publish per member (positions are published when they change).
  wal0=$([ "$l" = 0 ] || lh_psql_value "${PGPORT[$l]}" "select pg_current_wal_lsn() - '0/0'" || true)
  before=$(lh_etcd_grpc_counts)
  t0=$(lh_now)
  sleep "$secs"
  after=$(lh_etcd_grpc_counts)
  dt=$(lh_since "$t0")
  wal1=$([ "$l" = 0 ] || lh_psql_value "${PGPORT[$l]}" "select pg_current_wal_lsn() - '0/0'" || true)
  [ -z "$wal0" ] || [ -z "$wal1" ] || record "$COL" idle_wal_bytes "$((wal1 - wal0))"
  pct() { awk -v d="$1" -v hz="$hz" -v t="$dt" 'BEGIN { printf "%.3f", 100 * d / hz / t }'; }
  for i in 1 2 3; do
    read -r a b < <(lh_proc_cpu_ticks "${DAEMON[$i]}")
    local role=replica pgpids pg1
    [ "$i" = "$l" ] && role=leader
    pgpids=$(lh_pg_pids "$RDIR/n$i/data")
    # shellcheck disable=SC2086
    pg1=$(lh_pids_cpu_ticks $pgpids)
    record "$COL" "idle_rss_mib_$role" "$(awk -v k="$(lh_proc_rss_kib "${DAEMON[$i]}")" 'BEGIN { printf "%.2f", k / 1024 }')"
    record "$COL" "idle_cpu_pct_$role" "$(pct $((a - c0[$i])))"
    record "$COL" "idle_children_cpu_pct_$role" "$(pct $((b - k0[$i])))"
    record "$COL" "idle_total_cpu_pct_$role" "$(pct $((a - c0[$i] + b - k0[$i])))"
    record "$COL" "idle_pg_cpu_pct_$role" "$(pct $((pg1 - pg0[$i])))"
    # shellcheck disable=SC2086
    record "$COL" "idle_pg_pss_mib_$role" "$(awk -v k="$(lh_pids_pss_kib $pgpids)" 'BEGIN { printf "%.2f", k / 1024 }')"
  done
  join <(echo "$before") <(echo "$after") | awk -v t="$dt" '
    { dh = $4 - $2; dr = $5 - $3; if ($1 ~ /\/unary$/) u += dh; else s += dr }
    END { printf "%.3f %.3f\n", u / t, s / t }' >"$WORK/etcd-rates"
  read -r a b <"$WORK/etcd-rates"
  record "$COL" idle_etcd_unary_per_s "$a"
  record "$COL" idle_etcd_stream_msgs_per_s "$b"
  join <(echo "$before") <(echo "$after") | awk -v t="$dt" '{ d = $5 - $3; if (d) printf "%s %.3f\n", $1, d / t }' \
    >"$WORK/${COL//\//-}-etcd-by-method"
  note "  etcd messages/s by method: $(tr '\n' ';' <"$WORK/${COL//\//-}-etcd-by-method")"
}

switchover() {
  local l cand i t0 key_t="" write_t="" ctl_pid ctl_t="" s deadline
  l=$(leader_index)
  if [ "$MODE" = sync ] && s=$(lh_sync_standby "$SCOPE"); then cand=${s%% *}; cand=${cand#n}; fi
  if [ -z "${cand:-}" ]; then for i in 1 2 3; do [ "$i" != "$l" ] && { cand=$i; break; }; done; fi
  note "switchover n$l -> n$cand"
  lh_session_open "${PGPORT[$cand]}"
  t0=$(lh_now); deadline=$((EPOCHSECONDS + 60))
  ctl switchover --candidate "n$cand" --wait 60 >"$RDIR/ctl-switchover.out" 2>&1 &
  ctl_pid=$!
  LH_PIDS+=("$ctl_pid")
  while [ -z "$write_t" ] && [ "$EPOCHSECONDS" -lt "$deadline" ]; do
    if [ -z "$key_t" ] && [ "$(key_member)" = "n$cand" ]; then key_t=$(lh_since "$t0"); fi
    if [ -n "$key_t" ] && lh_session_try "insert into bench(t) values ('switchover')"; then write_t=$(lh_since "$t0"); fi
    [ -n "$write_t" ] || sleep "$POLL"
  done
  lh_session_close
  wait "$ctl_pid" && ctl_t=$(lh_since "$t0") || note "ctl switchover failed: $(tail -3 "$RDIR/ctl-switchover.out")"
  lh_forget "$ctl_pid"
  [ -n "$write_t" ] || { note "switchover: n$cand never became writable"; return 1; }
  record "$COL" switchover_key "$key_t"
  record "$COL" switchover_writable "$write_t"
  [ -z "$ctl_t" ] || record "$COL" switchover_ctl_returned "$ctl_t"
}

# After the kill nothing renews the lease, so etcd's whole-second TTL steps down at exact
# seconds of the time left: the first step from k to k-1 happens when k s are left, which
# gives the time left at the kill to the sampling interval. Lines: "<before> <after> <ttl>".
lease_sampler() { # <lease id>
  local end=$((EPOCHSECONDS + 3)) first="" a b v
  while [ "$EPOCHSECONDS" -lt "$end" ]; do
    a=$EPOCHREALTIME; v=$(lh_lease_ttl "$1") || v=""; b=$EPOCHREALTIME
    [ -n "$v" ] || continue
    echo "$a $b $v"
    [ -n "$first" ] && [ "$v" -lt "$first" ] && break
    [ -n "$first" ] && [ "$v" -le "$first" ] || first=$v
    sleep 0.005
  done
}
# <sampler file> <kill time> -> "<seconds left at the kill> <± resolution>", or nothing.
lease_left_at_kill() {
  awk -v k="$2" '
    NR == 1 { v0 = $3 }
    { m = ($1 + $2) / 2 }
    NR > 1 && $3 > v0 { v0 = $3 } # a renewal sent just before the kill landed after it
    NR > 1 && $3 < v0 { if (v0 > 0) printf "%.3f %.3f\n", v0 + (pm + m) / 2 - k, (m - pm) / 2; exit }
    { pm = m }' "$1"
}

crash() { # <ttl>
  local ttl=$1 l old lease ttl_whole t0 key_gone_t="" key_t="" write_t="" m new="" delay s pred i deadline sampler
  delay=$(awk -v r="$RANDOM" -v t="$ttl" 'BEGIN { printf "%.3f", t * r / 32768 }')
  note "sleep ${delay}s (uniform in [0, ${ttl}s)), then kill -9"
  sleep "$delay"
  l=$(leader_index)
  old=n$l
  lease=$(lh_leader_key "$SCOPE" | cut -d' ' -f2)
  ttl_whole=$(lh_lease_ttl "$lease" || echo "")
  # A warm session on the member expected to win (the sync standby, else the first survivor),
  # as Patroni's driver keeps sessions on the survivors; reopened if another one wins.
  if [ "$MODE" = sync ] && s=$(lh_sync_standby "$SCOPE"); then pred=${s%% *}; pred=${pred#n}; fi
  if [ -z "${pred:-}" ]; then for i in 1 2 3; do [ "$i" != "$l" ] && { pred=$i; break; }; done; fi
  lh_session_open "${PGPORT[$pred]}"
  note "kill -9 $old (daemon ${DAEMON[$l]}, postmaster $(lh_postmaster_pid "$RDIR/n$l/data")), lease TTL ${ttl_whole}s"
  t0=$(lh_now)
  kill -9 "${DAEMON[$l]}"
  lh_kill_postmaster "$RDIR/n$l/data"
  DEAD=$l
  lease_sampler "$lease" >"$RDIR/lease-samples" &
  sampler=$!
  LH_PIDS+=("$sampler")
  deadline=$((EPOCHSECONDS + 3 * ttl + 60))
  while [ -z "$write_t" ] && [ "$EPOCHSECONDS" -lt "$deadline" ]; do
    m=$(key_member || true)
    if [ -z "$key_gone_t" ] && [ "$m" != "$old" ]; then key_gone_t=$(lh_since "$t0"); fi
    if [ -z "$key_t" ] && [ -n "$m" ] && [ "$m" != "$old" ]; then
      key_t=$(lh_since "$t0"); new=${m#n}
      [ "$new" = "$pred" ] || lh_session_open "${PGPORT[$new]}"
    fi
    if [ -n "$key_t" ] && lh_session_try "insert into bench(t) values ('crash')"; then write_t=$(lh_since "$t0"); fi
    [ -n "$write_t" ] || sleep "$POLL"
  done
  lh_session_close
  wait "$sampler" 2>/dev/null || true
  lh_forget "$sampler"
  wait "${DAEMON[$l]}" 2>/dev/null || true
  lh_forget "${DAEMON[$l]}"
  [ -n "$write_t" ] || { note "crash: no writable primary within $((3 * ttl + 60)) s"; return 1; }
  local left res
  read -r left res < <(lease_left_at_kill "$RDIR/lease-samples" "$t0") || true
  record "$COL" crash_random_delay "$delay"
  [ -z "$ttl_whole" ] || record "$COL" crash_lease_ttl_whole "$ttl_whole"
  if [ -n "${left:-}" ]; then
    record "$COL" crash_lease_left "$left"
    record "$COL" crash_lease_left_resolution "$res"
    record "$COL" crash_key_gone_after_expiry "$(sub "$key_gone_t" "$left")"
    record "$COL" crash_writable_minus_lease_left "$(sub "$write_t" "$left")"
  else
    note "  (lease time left not resolved: $(head -3 "$RDIR/lease-samples" | tr '\n' ';'))"
  fi
  record "$COL" crash_key_gone "$key_gone_t"
  record "$COL" crash_key "$key_t"
  record "$COL" crash_writable "$write_t"
  record "$COL" crash_key_gone_to_writable "$(sub "$write_t" "$key_gone_t")"
  [ -z "$ttl_whole" ] || record "$COL" crash_writable_minus_ttl_whole "$(sub "$write_t" "$ttl_whole")"
}

for spec in $SPECS; do
  IFS=: read -r PNAME TTL LW RT <<<"$spec"
  for MODE in $MODES; do
    COL=$PNAME/$MODE
    for rep in $(seq "$REPS"); do
      say "leasehold-ha $PNAME $MODE (ttl $TTL, loop_wait $LW, retry_timeout $RT): repetition $rep/$REPS"
      if ! start_cluster "$rep" "$TTL" "$LW" "$RT"; then
        record "$COL" bootstrap_failed 1; stop_cluster; continue
      fi
      if [ "$rep" = 1 ] && [ "$IDLE" -gt 0 ]; then
        note "idle window ${IDLE}s"
        idle_window "$TTL" "$LW" "$IDLE"
      fi
      # A failed step is counted and the next repetition starts on a fresh cluster.
      if switchover; then
        # The old leader rejoins as a replica (and, in sync mode, a sync standby is published)
        # before the random wait, as Patroni's driver waits for both replicas to stream.
        lh_wait_until 180 settled || note "(not settled after the switchover; crashing anyway)"
        crash "$TTL" || record "$COL" crash_failed 1
      else
        record "$COL" switchover_failed 1
      fi
      stop_cluster
    done
  done
done

PATRONI_JSON=""
if [ "$BENCH_PATRONI" = 1 ] && [ ! -f "$PATRONI_DIR/patroni-failover.sh" ]; then
  say "Patroni: skipped (no anchor at $PATRONI_DIR)"
elif [ "$BENCH_PATRONI" = 1 ] && [ "$(id -u)" != 0 ]; then
  say "Patroni: skipped (its anchor installs packages and must run as root)"
elif [ "$BENCH_PATRONI" = 1 ]; then
  say "Patroni 3.0.2 ($PATRONI_DIR/patroni-failover.sh) on the same etcd, profiles $SPECS"
  PATRONI_JSON=$WORK/patroni.json
  if ! ETCD_EXTERNAL=1 ETCD_PORT=${LH_EP##*:} REPS=$REPS PROFILES="$SPECS" IDLE_SECS=$((IDLE > 0 ? IDLE : 1)) \
    RESULTS=$PATRONI_JSON bash "$PATRONI_DIR/patroni-failover.sh" >"$WORK/patroni.out"; then
    note "Patroni's bench failed (its output: $WORK/patroni.out)"
  fi
  cat "$WORK/patroni.out" >&2
  [ -s "$PATRONI_JSON" ] || PATRONI_JSON=""
else
  say "Patroni: skipped (BENCH_PATRONI=0)"
fi

say "results"
python3 - "$RESULTS" "${PATRONI_JSON:-}" "$SPECS" "$MODES" >"$WORK/table.md" <<'PY'
import json, statistics, sys

results, patroni_json, specs, modes = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
ours = {}
for line in open(results):
    col, measure, value = line.split()
    ours.setdefault(col, {}).setdefault(measure, []).append(float(value))
runs = json.load(open(patroni_json))["runs"] if patroni_json else []

def summary(vals, digits=3):
    vals = sorted(v for v in vals if isinstance(v, (int, float)))
    if not vals:
        return "-"
    f = "%%.%df" % digits
    if len(vals) == 1:
        return f % vals[0]
    return "%s / %s / %s (%d)" % (f % vals[0], f % statistics.median(vals), f % vals[-1], len(vals))

def idle_pair(leader, replicas, digits):
    if leader is None and not replicas:
        return "-"
    f = "%%.%df" % digits
    l = f % leader if leader is not None else "?"
    return "%s; %s" % (l, ", ".join(f % r for r in replicas))

def ours_idle(col, m, digits):
    d = ours.get(col, {})
    l = d.get(m + "_leader")
    return idle_pair(l[0] if l else None, d.get(m + "_replica", []), digits)

def patroni_runs(name):
    return [r for r in runs if r["profile"] == name]

def patroni_phase(name, phase, field):
    return [r.get(phase, {}).get(field) for r in patroni_runs(name)]

def patroni_idle(name, field, digits):
    for r in patroni_runs(name):
        if "idle" in r:
            lead = r.get("bootstrap", {}).get("leader")
            nodes = r["idle"]["nodes"]
            return idle_pair(nodes[lead][field] if lead in nodes else None,
                             [v[field] for k, v in sorted(nodes.items()) if k != lead], digits)
    return "-"

def patroni_idle_etcd(name, field):
    for r in patroni_runs(name):
        if "idle" in r:
            return "%.3f" % r["idle"][field]
    return "-"

def patroni_diff(name, a, b):
    out = []
    for r in patroni_runs(name):
        c = r.get("crash", {})
        if isinstance(c.get(a), (int, float)) and isinstance(c.get(b), (int, float)) and c.get(b) >= 0:
            out.append(c[a] - c[b])
    return out

NA = "n/a"
# (label, our measure or callable, patroni callable or None)
rows = [
    ("bootstrap: primary writable (s)", "bootstrap_writable", lambda p: summary(patroni_phase(p, "bootstrap", "write"))),
    ("bootstrap: 2 replicas streaming (s)", "bootstrap_streaming", lambda p: summary(patroni_phase(p, "bootstrap", "streaming"))),
    ("switchover: new leader key (s)", "switchover_key", lambda p: summary(patroni_phase(p, "switchover", "key"))),
    ("**switchover: new primary writable (s)** (target <= 0.5)", "switchover_writable", lambda p: summary(patroni_phase(p, "switchover", "write"))),
    ("switchover: ctl / patronictl returned (s)", "switchover_ctl_returned", lambda p: summary(patroni_phase(p, "switchover", "cmd"))),
    ("crash: random wait before kill -9 (s)", "crash_random_delay", lambda p: summary(patroni_phase(p, "crash", "random_delay"))),
    ("crash: lease TTL at kill, etcd whole seconds", "crash_lease_ttl_whole", lambda p: summary(patroni_phase(p, "crash", "lease_ttl_left_at_kill"), 0)),
    ("crash: lease left at kill, ms resolution (s)", "crash_lease_left", lambda p: NA),
    ("crash: old key gone (s)", "crash_key_gone", lambda p: summary(patroni_phase(p, "crash", "key_gone"))),
    ("crash: old key gone - lease expiry (etcd revoke, s)", "crash_key_gone_after_expiry", lambda p: NA),
    ("crash: new leader key (s)", "crash_key", lambda p: summary(patroni_phase(p, "crash", "key"))),
    ("crash: new primary writable (s)", "crash_writable", lambda p: summary(patroni_phase(p, "crash", "write"))),
    ("crash: old key gone -> writable (s)", "crash_key_gone_to_writable", lambda p: summary(patroni_phase(p, "crash", "after_expiry"))),
    ("**crash: writable - lease left (s)** (target <= 0.3)", "crash_writable_minus_lease_left", lambda p: NA),
    ("crash: writable - whole-second TTL (s; 0-1 s above the line before)", "crash_writable_minus_ttl_whole", lambda p: summary(patroni_diff(p, "write", "lease_ttl_left_at_kill"))),
]
idle_rows = [
    ("**idle RSS MiB, leader; replicas** (target <= 12)", "idle_rss_mib", "patroni_rss_mib", 1),
    ("idle CPU %, own process (utime+stime), leader; replicas", "idle_cpu_pct", "patroni_cpu_pct", 2),
    ("**idle CPU %, daemon + reaped children**, leader; replicas", "idle_total_cpu_pct", "patroni_cpu_pct", 2),
    ("idle CPU %, PostgreSQL (postmaster + children)", "idle_pg_cpu_pct", "postgres_cpu_pct", 2),
    ("idle PSS MiB, PostgreSQL", "idle_pg_pss_mib", "postgres_pss_mib", 1),
]
etcd_rows = [
    ("idle etcd unary calls/s (3 members)", "idle_etcd_unary_per_s", "etcd_unary_rps"),
    ("idle etcd stream messages/s", "idle_etcd_stream_msgs_per_s", "etcd_stream_msgs_ps"),
]

cols = []  # (header, kind, key)
for spec in specs:
    name, ttl, lw, rt = spec.split(":")
    for m in modes:
        cols.append(("leasehold-ha %s (%s/%s/%s, %s)" % (name, ttl, lw, rt, m), "ours", "%s/%s" % (name, m)))
    if runs:
        cols.append(("Patroni %s (%s/%s/%s, async)" % (name, ttl, lw, rt), "patroni", name))

print("| measure | " + " | ".join(c[0] for c in cols) + " |")
print("|---|" + "---|" * len(cols))
for label, m, pf in rows:
    cells = [summary(ours.get(k, {}).get(m, [])) if kind == "ours" else pf(k) for _, kind, k in cols]
    if m == "crash_lease_ttl_whole":
        cells = [summary(ours.get(k, {}).get(m, []), 0) if kind == "ours" else pf(k) for _, kind, k in cols]
    print("| %s | %s |" % (label, " | ".join(cells)))
for label, m, pfield, digits in idle_rows:
    cells = [ours_idle(k, m, digits) if kind == "ours" else patroni_idle(k, pfield, digits) for _, kind, k in cols]
    print("| %s | %s |" % (label, " | ".join(cells)))
for label, m, pfield in etcd_rows:
    cells = [summary(ours.get(k, {}).get(m, [])) if kind == "ours" else patroni_idle_etcd(k, pfield) for _, kind, k in cols]
    print("| %s | %s |" % (label, " | ".join(cells)))
failed = ["%s %s x%d" % (col, m, len(v)) for col, d in ours.items() for m, v in d.items() if m.endswith("_failed")]
failed += ["Patroni %s#%d: %s" % (r["profile"], r["rep"], r["error"]) for r in runs if "error" in r]
if failed:
    print("\nFailed steps: " + "; ".join(failed))
PY
cat "$WORK/table.md"
note "load average at the end: $(cat /proc/loadavg)"
if [ -n "$OUT" ]; then
  cp "$WORK/table.md" "$OUT"
  cp "$RESULTS" "$OUT.results"
  [ -z "$PATRONI_JSON" ] || cp "$PATRONI_JSON" "$OUT.patroni.json"
fi
