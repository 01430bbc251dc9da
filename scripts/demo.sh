#!/usr/bin/env bash
# A failover you can watch: etcd + three leasehold-ha members, each driving a PostgreSQL
# instance on loopback through the native [postgresql] resource in synchronous mode (or the
# file resource when PostgreSQL is not available, or with
# DEMO_RESOURCE=file). Prints `ctl list`, kills the leader (daemon and its PostgreSQL) with
# kill -9, prints the failover with timings, does a graceful switchover, and cleans up.
#
#   scripts/demo.sh                      # PostgreSQL if installed (or installable), else files
#   DEMO_RESOURCE=file scripts/demo.sh   # the file resource
#   DEMO_TTL=10 scripts/demo.sh          # leader key ttl in seconds (default 10)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RESOURCE=${DEMO_RESOURCE:-auto}
TTL=${DEMO_TTL:-10}
SCOPE=demo
TOKEN=demo-token-$RANDOM$RANDOM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

say "setup"
if ! "$ROOT/scripts/setup.sh"; then
  echo "setup.sh failed; continuing with what is installed"
fi
command -v etcd >/dev/null || { echo "etcd is required (apt-get install etcd-server)"; exit 1; }

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ "$RESOURCE" = auto ]; then
  if [ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] && { [ "$(id -u)" != 0 ] || id postgres >/dev/null 2>&1; }; then
    RESOURCE=postgres
  else
    RESOURCE=file
  fi
fi
echo "resource: $RESOURCE${PGBIN:+ ($PGBIN)}"

say "build"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build -q -p leasehold-ha-daemon --bin leasehold-ha
BIN=$CARGO_TARGET_DIR/debug/leasehold-ha

WORK=$(mktemp -d /tmp/leasehold-demo.XXXXXX)
chmod 755 "$WORK"
PIDS=()
PGPASS=demo-superuser-pw
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [ "$RESOURCE" = postgres ]; then
    # Each postmaster by its pid; a hook may have just restarted one, so look twice.
    for _ in 1 2 3; do
      for i in 1 2 3; do
        f=$WORK/n$i/data/postmaster.pid
        [ -s "$f" ] && kill -9 "$(head -1 "$f")" 2>/dev/null
      done
      sleep 0.5
    done
  fi
  if [ -n "${DEMO_KEEP:-}" ]; then
    KEEP=$(mktemp -d /tmp/leasehold-demo-logs.XXXXXX)
    cp "$WORK"/*.log "$KEEP"/ 2>/dev/null; for i in 1 2 3; do cp "$WORK/n$i/data.log" "$KEEP/pg-n$i.log" 2>/dev/null; done
    echo "logs copied to $KEEP"
  fi
  rm -rf "$WORK" 2>/dev/null || { sleep 1; rm -rf "$WORK"; }
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port below 32768: nothing answers a connect and it is not handed out twice.
USED=" "
free_port() {
  local p
  while :; do
    p=$((12000 + RANDOM % 20000))
    case "$USED" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then USED="$USED$p "; echo "$p"; return; fi
  done
}

say "etcd"
EP_PORT=$(free_port); PEER_PORT=$(free_port)
EP=http://127.0.0.1:$EP_PORT
etcd --name demo --data-dir "$WORK/etcd" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "demo=http://127.0.0.1:$PEER_PORT" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "$EP/health" >/dev/null && break; sleep 0.1; done
curl -sf "$EP/health" >/dev/null || { echo "etcd did not start"; tail "$WORK/etcd.log"; exit 1; }
echo "etcd on $EP"

API=(); PGPORTS=()
for i in 1 2 3; do
  API[$i]=$(free_port); PGPORTS[$i]=$(free_port)
  mkdir -p "$WORK/n$i"
  if [ "$RESOURCE" = postgres ]; then
    # The native resource (Rust, tokio-postgres): synchronous mode, rewind on rejoin.
    [ "$(id -u)" = 0 ] && chown postgres "$WORK/n$i"
    top="synchronous_mode = true"
    resource="[postgresql]
data_dir = \"$WORK/n$i/data\"
bin_dir = \"$PGBIN\"
listen = \"127.0.0.1:${PGPORTS[$i]}\"
[postgresql.authentication.superuser]
password = \"$PGPASS\"
[postgresql.authentication.replication]
password = \"demo-replication-pw\""
  else
    top="conn_url = \"file://n$i\""
    resource="[hooks]
dir = \"$ROOT/examples/ha-daemon/hooks/file\"
timeout = \"120s\"
[hooks.env]
FILE_RESOURCE_DIR = \"$WORK/files\""
  fi
  cat >"$WORK/n$i.toml" <<EOF
scope = "$SCOPE"
name = "n$i"
ttl = "${TTL}s"
loop_wait = "1s"
retry_timeout = "2s"
safety_margin = "2s"
$top
[watchdog]
mode = "off"
[restapi]
listen = "127.0.0.1:${API[$i]}"
token = "$TOKEN"
$resource
[etcd]
endpoints = ["$EP"]
EOF
done

say "three members ($RESOURCE resource, ttl ${TTL}s)"
"$BIN" --config "$WORK/n1.toml" run --check-config
for i in 1 2 3; do
  LEASEHOLD_LOG=${LEASEHOLD_LOG:-info} "$BIN" --config "$WORK/n$i.toml" run 2>"$WORK/n$i.log" &
  PIDS+=($!)
  DAEMON[$i]=$!
  disown "$!" # out of bash's job table: killing it later prints no "Killed" job notice
done

leader_index() {
  for i in 1 2 3; do
    [ -n "${DEAD:-}" ] && [ "$i" = "$DEAD" ] && continue
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${API[$i]}/primary")" = 200 ]; then echo "$i"; return; fi
  done
}
wait_until() { # <seconds> <command...>
  local limit=$1; shift
  local until=$(( $(date +%s) + limit ))
  while [ "$(date +%s)" -lt "$until" ]; do "$@" && return 0; sleep 0.1; done
  return 1
}
has_leader() { [ -n "$(leader_index)" ]; }
replicas_ready() {
  for i in 1 2 3; do
    [ "$i" = "$L" ] && continue
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${API[$i]}/replica?lag=1MB")" = 200 ] || return 1
  done
}
ctl() { "$BIN" --config "$WORK/n1.toml" ctl "$@"; }
write_to() { # <member index> <text>: a client write to the primary
  if [ "$RESOURCE" = postgres ]; then
    PGPASSWORD=$PGPASS "$PGBIN/psql" -X -q -h 127.0.0.1 -p "${PGPORTS[$1]}" -U postgres -d postgres -Atc \
      "create table if not exists demo(t text, at timestamptz default now()); insert into demo(t) values ('$2')" >/dev/null 2>&1
  else
    "$ROOT/examples/ha-daemon/hooks/file/write" "n$1" "$2" >/dev/null 2>&1 </dev/null
  fi
}
export FILE_RESOURCE_DIR=$WORK/files

if ! wait_until 120 has_leader; then echo "no leader elected"; tail -20 "$WORK"/n*.log; exit 1; fi
L=$(leader_index)
echo "n$L leads"
wait_until 120 replicas_ready || echo "(replicas are still catching up)"
# Synchronous mode: only a member of the sync key may be promoted, so wait until the leader
# has published its confirmed synchronous standby.
sync_ready() { curl -s "http://127.0.0.1:${API[$L]}/status" | grep -q '"sync_standby":\["'; }
if [ "$RESOURCE" = postgres ]; then
  wait_until 60 sync_ready && echo "synchronous standby: $(curl -s "http://127.0.0.1:${API[$L]}/status" | sed -n 's/.*"sync_standby":\["\([^"]*\)".*/\1/p')"
fi
write_to "$L" "before the crash" && echo "client write to n$L accepted"
sleep 2
ctl list

say "kill -9 the leader n$L (daemon and its resource)"
OLD=$L
EPOCH_BEFORE=$(curl -s "http://127.0.0.1:${API[$OLD]}/status" | sed -n 's/.*"epoch":\([0-9]*\).*/\1/p')
T0=$(now)
kill -9 "${DAEMON[$OLD]}"
if [ "$RESOURCE" = postgres ] && [ -s "$WORK/n$OLD/data/postmaster.pid" ]; then
  kill -9 "$(head -1 "$WORK/n$OLD/data/postmaster.pid")" 2>/dev/null || true
fi
DEAD=$OLD
key_moved() {
  local v
  v=$(ETCDCTL_API=3 etcdctl --endpoints "$EP" get "/service/$SCOPE/leader" --print-value-only 2>/dev/null)
  [ -n "$v" ] && ! echo "$v" | grep -q "\"member\":\"n$OLD\""
}
wait_until 120 key_moved || { echo "the leader key did not move"; exit 1; }
T_KEY=$(since "$T0")
echo "leader key taken by $(ETCDCTL_API=3 etcdctl --endpoints "$EP" get "/service/$SCOPE/leader" --print-value-only | sed 's/.*"member":"\([^"]*\)".*/\1/') after ${T_KEY}s"
writable() { L=$(leader_index); [ -n "$L" ] && write_to "$L" "after the crash"; }
wait_until 120 writable || { echo "no writable primary"; tail -20 "$WORK"/n*.log; exit 1; }
T_WRITE=$(since "$T0")
NEW=$L
EPOCH_AFTER=$(curl -s "http://127.0.0.1:${API[$NEW]}/status" | sed -n 's/.*"epoch":\([0-9]*\).*/\1/p')
echo "n$NEW accepts writes after ${T_WRITE}s (epoch $EPOCH_BEFORE -> $EPOCH_AFTER)"
sleep 1
ctl list

TARGET=""
for i in 1 2 3; do [ "$i" != "$OLD" ] && [ "$i" != "$NEW" ] && TARGET=$i; done
say "graceful switchover n$NEW -> n$TARGET"
T1=$(now)
ctl switchover --candidate "n$TARGET" --wait 60 || true
T_SWITCH=$(since "$T1")
ctl list
ctl history

say "summary"
echo "resource:                              $RESOURCE"
echo "ttl:                                   ${TTL}s (loop_wait 1s, retry_timeout 2s)"
echo "kill -9 -> new leader key:             ${T_KEY}s"
echo "kill -9 -> writable primary:           ${T_WRITE}s"
echo "switchover (ctl, request -> writable): ${T_SWITCH}s (including ctl start-up)"
for i in 1 2 3; do
  [ "$i" = "$OLD" ] && continue
  echo "member n$i daemon:                      RSS $(ps -o rss= -p "${DAEMON[$i]}" | tr -d ' ') KiB, CPU time $(ps -o time= -p "${DAEMON[$i]}" | tr -d ' ') since start (debug build; release figures: README)"
done
[ -n "${DEMO_KEEP:-}" ] || echo "(set DEMO_KEEP=1 to keep the logs)"
