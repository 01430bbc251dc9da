#!/usr/bin/env bash
# Benchmark of the HA daemon (issue 8 item 7), measured like Patroni 3.0.2 in
# ../shared/reference/servers.md: one etcd, three leasehold-ha members (release build), each
# driving a PostgreSQL instance on loopback through the native [postgresql] resource
# (LH_RESOURCE=hooks: the old hooks/postgres, for comparison). Per repetition a fresh cluster (new scope) runs:
# bootstrap -> (first repetition only) idle window -> `ctl switchover` to a named replica ->
# kill -9 of the leader (daemon + its postmaster's process group). Prints min/median/max.
#
#   scripts/bench-daemon.sh                          # both profiles, 5 repetitions, 60 s idle
#   BENCH_PROFILES=demo BENCH_REPS=3 scripts/bench-daemon.sh
#   BENCH_IDLE=60 BENCH_OUT=/tmp/bench.md scripts/bench-daemon.sh
#
# Profiles: demo = ttl 10 / loop_wait 1 / retry_timeout 2; patroni = 30 / 10 / 10 (Patroni's
# defaults). Not part of CI: it takes about 10 minutes for both profiles.
set -euo pipefail
[ -z "${BENCH_TRACE:-}" ] || set -x

LH_ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$LH_ROOT"
# shellcheck source=scripts/lib/cluster.sh
. "$LH_ROOT/scripts/lib/cluster.sh"

PROFILES=${BENCH_PROFILES:-demo patroni}
REPS=${BENCH_REPS:-5}
IDLE=${BENCH_IDLE:-60}
OUT=${BENCH_OUT:-}
POLL=0.02

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
note() { printf '%s\n' "$*" >&2; }

if [ -z "${BENCH_SKIP_SETUP:-}" ]; then
  "$LH_ROOT/scripts/setup.sh" >/dev/null 2>&1 || note "setup.sh failed; continuing with what is installed"
fi
command -v etcd >/dev/null || { note "etcd is required (apt-get install etcd-server)"; exit 1; }
LH_PGBIN=$(lh_pg_bin)
[ -n "$LH_PGBIN" ] && [ -x "$LH_PGBIN/initdb" ] || { note "PostgreSQL is required (apt-get install postgresql)"; exit 1; }
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then note "running as root needs the postgres user"; exit 1; fi

say "build (release)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$LH_ROOT/target}
cargo build -q --release -p leasehold-ha-daemon --bin leasehold-ha
BIN=$CARGO_TARGET_DIR/release/leasehold-ha

WORK=$(mktemp -d /tmp/leasehold-bench.XXXXXX)
chmod 755 "$WORK"
RESULTS=$WORK/results   # lines: <profile> <measure> <value>
: >"$RESULTS"
cleanup() {
  lh_cleanup
  if [ -n "${BENCH_KEEP:-}" ]; then note "work dir kept: $WORK"; else rm -rf "$WORK" 2>/dev/null || { sleep 1; rm -rf "$WORK"; }; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

record() { echo "$1 $2 $3" >>"$RESULTS"; note "  $2: $3"; }

say "etcd"
lh_start_etcd "$WORK"
note "etcd on $LH_EP"
TOKEN=bench-$RANDOM$RANDOM

# State of the current repetition.
declare -a API PGPORT DAEMON
SCOPE=""; RDIR=""

member_index() { echo "${1#n}"; }
leader_index() { # by the members' REST API: who says it is the primary
  local i
  for i in 1 2 3; do
    [ -n "${DEAD:-}" ] && [ "$i" = "$DEAD" ] && continue
    [ "$(lh_http_code "http://127.0.0.1:${API[$i]}/primary")" = 200 ] && { echo "$i"; return 0; }
  done
  return 1
}
replicas_ready() { # every member but the leader streams with lag below 1 MB
  local i l
  l=$(leader_index) || return 1
  for i in 1 2 3; do
    [ "$i" = "$l" ] && continue
    [ "$(lh_http_code "http://127.0.0.1:${API[$i]}/replica?lag=1MB")" = 200 ] || return 1
  done
}
key_member() { local k; k=$(lh_leader_key "$SCOPE") || return 1; echo "${k%% *}"; }
insert_on() { lh_psql "${PGPORT[$1]}" "insert into bench(t) values ('$2')"; }
ctl() { "$BIN" --config "$RDIR/n1.toml" ctl "$@"; }

start_cluster() { # <profile> <rep> <ttl> <loop_wait> <retry_timeout>
  SCOPE=bench-$1-$2; RDIR=$WORK/$1-$2; DEAD=""
  mkdir -p "$RDIR"
  local i
  for i in 1 2 3; do
    API[$i]=$(lh_free_port); PGPORT[$i]=$(lh_free_port)
    mkdir -p "$RDIR/n$i"
    lh_write_member_config "$RDIR/n$i.toml" "$SCOPE" "n$i" "${API[$i]}" "${PGPORT[$i]}" "$RDIR/n$i" "$3" "$4" "$5" "$TOKEN"
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
  record "$1" "bootstrap_writable" "$(lh_since "$t0")"
  lh_wait_until 240 replicas_ready || { note "replicas did not catch up"; tail -5 "$RDIR"/n*.log >&2; return 1; }
  record "$1" "bootstrap_streaming" "$(lh_since "$t0")"
  # A member registers its key once per loop_wait; ctl refuses a candidate not yet registered.
  lh_wait_until 60 members_registered || { note "not all members registered"; return 1; }
  # The leader checks a switchover candidate against the cluster view of its last HA loop
  # (see notes/daemon-bench.md): give it one loop_wait to see every member.
  sleep "$(( $4 + 1 ))"
}
members_registered() { [ "$(lh_member_count "$SCOPE")" = 3 ]; }

stop_cluster() {
  local i
  for i in 1 2 3; do lh_kill_pid "${DAEMON[$i]}"; done
  for _ in 1 2 3; do
    for i in 1 2 3; do lh_kill_postmaster "$RDIR/n$i/data"; done
    sleep 0.3
  done
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$RDIR"
}

idle_window() { # <profile> <seconds>: RSS and CPU of each daemon, etcd requests per second
  local p=$1 secs=$2 i hz before after a b
  hz=$(getconf CLK_TCK)
  sleep 5 # let the last switchover/bootstrap writes settle
  declare -A c0 k0
  for i in 1 2 3; do read -r c0[$i] k0[$i] < <(lh_proc_cpu_ticks "${DAEMON[$i]}"); done
  before=$(lh_etcd_grpc_counts)
  local t0; t0=$(lh_now)
  sleep "$secs"
  after=$(lh_etcd_grpc_counts)
  local dt; dt=$(lh_since "$t0")
  local l; l=$(leader_index || echo 0)
  for i in 1 2 3; do
    read -r a b < <(lh_proc_cpu_ticks "${DAEMON[$i]}")
    local role=replica; [ "$i" = "$l" ] && role=leader
    record "$p" "idle_rss_kib_$role" "$(lh_proc_rss_kib "${DAEMON[$i]}")"
    record "$p" "idle_cpu_pct_$role" "$(awk -v d=$((a - c0[$i])) -v hz="$hz" -v t="$dt" 'BEGIN { printf "%.3f", 100 * d / hz / t }')"
    record "$p" "idle_hooks_cpu_pct_$role" "$(awk -v d=$((b - k0[$i])) -v hz="$hz" -v t="$dt" 'BEGIN { printf "%.3f", 100 * d / hz / t }')"
  done
  # Requests = messages received (a unary call is one message; on a stream each message counts);
  # handled = calls or streams finished. Patroni over the JSON gateway has handled = messages.
  join <(echo "$before") <(echo "$after") | awk -v t="$dt" '
    { dh = $4 - $2; dr = $5 - $3; if (dh || dr) printf "%s %.3f %.3f\n", $1, dr / t, dh / t; tr += dr; th += dh }
    END { printf "TOTAL %.3f %.3f\n", tr / t, th / t }' >"$WORK/$p-etcd-rates"
  while read -r m r h; do
    record "$p" "idle_etcd_msgs_per_s_$m" "$r"
    record "$p" "idle_etcd_handled_per_s_$m" "$h"
  done <"$WORK/$p-etcd-rates"
}

switchover() { # <profile>
  local p=$1 l cand i t0 key_t="" write_t="" ctl_pid ctl_t=""
  l=$(leader_index)
  for i in 1 2 3; do [ "$i" != "$l" ] && { cand=$i; break; }; done
  note "switchover n$l -> n$cand"
  t0=$(lh_now)
  ctl switchover --candidate "n$cand" --wait 60 >"$RDIR/ctl-switchover.out" 2>&1 &
  ctl_pid=$!
  LH_PIDS+=("$ctl_pid")
  while [ -z "$write_t" ] && [ "$(lh_since "$t0" | cut -d. -f1)" -lt 60 ]; do
    if [ -z "$key_t" ] && [ "$(key_member)" = "n$cand" ]; then key_t=$(lh_since "$t0"); fi
    if [ -n "$key_t" ] && insert_on "$cand" "switchover"; then write_t=$(lh_since "$t0"); fi
    [ -n "$write_t" ] || sleep "$POLL"
  done
  wait "$ctl_pid" && ctl_t=$(lh_since "$t0") || note "ctl switchover failed: $(tail -3 "$RDIR/ctl-switchover.out")"
  lh_forget "$ctl_pid"
  [ -n "$write_t" ] || { note "switchover: n$cand never became writable"; return 1; }
  record "$p" "switchover_key" "$key_t"
  record "$p" "switchover_writable" "$write_t"
  [ -z "$ctl_t" ] || record "$p" "switchover_ctl_returned" "$ctl_t"
}

crash() { # <profile>
  local p=$1 l old lease ttl_left t0 key_t="" write_t="" m new=""
  l=$(leader_index)
  old=n$l
  lease=$(lh_leader_key "$SCOPE" | cut -d' ' -f2)
  ttl_left=$(lh_lease_ttl "$lease")
  note "kill -9 $old (daemon ${DAEMON[$l]}, postmaster $(lh_postmaster_pid "$RDIR/n$l/data")), lease TTL left ${ttl_left}s"
  t0=$(lh_now)
  kill -9 "${DAEMON[$l]}"
  lh_kill_postmaster "$RDIR/n$l/data"
  DEAD=$l
  while [ -z "$write_t" ] && [ "$(lh_since "$t0" | cut -d. -f1)" -lt 120 ]; do
    if [ -z "$key_t" ]; then
      m=$(key_member || true)
      if [ -n "$m" ] && [ "$m" != "$old" ]; then key_t=$(lh_since "$t0"); new=$(member_index "$m"); fi
    fi
    if [ -n "$key_t" ] && insert_on "$new" "crash"; then write_t=$(lh_since "$t0"); fi
    [ -n "$write_t" ] || sleep "$POLL"
  done
  wait "${DAEMON[$l]}" 2>/dev/null || true
  lh_forget "${DAEMON[$l]}"
  [ -n "$write_t" ] || { note "crash: no writable primary within 120 s"; return 1; }
  record "$p" "crash_lease_ttl_left" "$ttl_left"
  record "$p" "crash_key" "$key_t"
  record "$p" "crash_writable" "$write_t"
  record "$p" "crash_key_to_writable" "$(awk -v a="$key_t" -v b="$write_t" 'BEGIN { printf "%.3f", b - a }')"
}

for profile in $PROFILES; do
  case $profile in
    demo) TTL=10 LW=1 RT=2 ;;
    patroni) TTL=30 LW=10 RT=10 ;;
    *) note "unknown profile $profile (demo, patroni)"; exit 2 ;;
  esac
  for rep in $(seq "$REPS"); do
    say "$profile (ttl $TTL, loop_wait $LW, retry_timeout $RT): repetition $rep/$REPS"
    if ! start_cluster "$profile" "$rep" "$TTL" "$LW" "$RT"; then
      record "$profile" "bootstrap_failed" 1; stop_cluster; continue
    fi
    if [ "$rep" = 1 ] && [ "$IDLE" -gt 0 ]; then
      note "idle window ${IDLE}s"
      idle_window "$profile" "$IDLE"
    fi
    # A failed step is counted and the next repetition starts on a fresh cluster.
    if switchover "$profile"; then
      # The old leader rejoins as a replica before the crash, as in Patroni's runs.
      lh_wait_until 120 replicas_ready || note "(replicas still catching up before the crash)"
      sleep 1
      crash "$profile" || record "$profile" "crash_failed" 1
    else
      record "$profile" "switchover_failed" 1
    fi
    stop_cluster
  done
done

say "results"
stats() { # <profile> <measure>: min / median / max (n)
  awk -v p="$1" -v m="$2" '$1 == p && $2 == m { print $3 }' "$RESULTS" | sort -g | awk '
    { v[NR] = $1 } END { if (NR == 0) { print "-"; exit }
      med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      if (NR == 1) printf "%s", v[1]; else printf "%s / %s / %s", v[1], med, v[NR]
      if (NR > 1) printf " (n=%d)", NR }'
}
{
  echo "| measure | $(for p in $PROFILES; do printf '%s | ' "$p"; done)"
  echo "|---|$(for _ in $PROFILES; do printf -- '---|'; done)"
  for m in $(awk '{ print $2 }' "$RESULTS" | awk '!seen[$0]++'); do
    printf '| %s | ' "$m"
    for p in $PROFILES; do printf '%s | ' "$(stats "$p" "$m")"; done
    echo
  done
} | tee "$WORK/table.md"
[ -z "$OUT" ] || cp "$WORK/table.md" "$OUT"
