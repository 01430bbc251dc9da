#!/usr/bin/env bash
# The long simulator sweep (not CI): at least 1,000,000 schedules across the four store
# profiles, asynchronous and synchronous, with 3, 5 or 7 nodes and 12 to 40 faults drawn per
# seed (`sim_sweep --vary`). Runs in rounds so every profile and mode is covered early; each
# cell prints its row as it finishes, then a summary table of all rows. Every failing seed is
# printed with its replay command; the script exits non-zero if any seed failed.
#
#   scripts/long-sweep.sh                  # 1,000,000 schedules, 60 s of chaos each
#   TOTAL=200000 CHAOS=120 scripts/long-sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# A target directory of its own keeps the binary fixed while other builds run beside it.
target="${CARGO_TARGET_DIR:-target}"
total="${TOTAL:-1000000}"
chaos="${CHAOS:-60}"
rounds="${ROUNDS:-4}"
jobs="${JOBS:-$(nproc)}"
offset="${OFFSET:-$(( ((RANDOM << 15) | RANDOM) * 1000 + 1000000000 ))}"
cells=8
per_cell=$(( total / rounds / cells ))
echo "long sweep: $((per_cell * rounds * cells)) schedules, $rounds rounds of $cells cells x $per_cell seeds, chaos ${chaos}s, $jobs jobs, seed offset $offset"
cargo build --quiet --release --features sim --example sim_sweep
rows=$(mktemp)
failures=$(mktemp)
trap 'rm -f "$rows" "$failures"' EXIT
start=$SECONDS
status=0
cell=0
for round in $(seq 1 "$rounds"); do
  for mode in async sync; do
    for profile in etcd zookeeper consul kubernetes; do
      cell=$((cell + 1))
      seed=$(( offset + cell * per_cell ))
      flags=(--vary --iterations "$per_cell" --chaos-secs "$chaos" --jobs "$jobs" --seed "$seed" --profile "$profile")
      [ "$mode" = sync ] && flags+=(--sync)
      printf '\n[cell %d/%d, round %d, %s, %ds elapsed]\n' "$cell" $((rounds * cells)) "$round" "$mode" $((SECONDS - start))
      out=$("$target"/release/examples/sim_sweep "${flags[@]}" 2> >(tee -a /dev/stderr | grep -E '^  (seed|  replay)' >> "$failures")) || status=1
      row=$(printf '%s\n' "$out" | tail -1)
      printf '%s\n' "$row"
      printf '%-5s %s\n' "$mode" "$row" >> "$rows"
    done
  done
done
wait
echo
echo "== summary: $((per_cell * rounds * cells)) schedules in $((SECONDS - start)) s (seed offset $offset, chaos ${chaos}s) =="
printf '%-5s %-11s %6s %10s %8s %9s %24s %6s\n' mode profile runs "sim time" wall speed-up violations lost
sort -k1,1 -k2,2 -s "$rows" | awk '
  { key=$1" "$2; runs[key]+=$3; sub(/s$/,"",$4); sim[key]+=$4; sub(/s$/,"",$5); wall[key]+=$5;
    viol[key]=(viol[key]=="" || viol[key]=="none") ? $7 : (($7=="none") ? viol[key] : viol[key]","$7); lost[key]+=$NF }
  END { for (k in runs) { split(k, p, " ");
    printf "%-5s %-11s %6d %9.0fs %7.1fs %8.0fx %24s %6d\n", p[1], p[2], runs[k], sim[k], wall[k], sim[k]/(wall[k]>0?wall[k]:1), viol[k], lost[k] } }' | sort
if [ -s "$failures" ]; then
  echo; echo "failing seeds:"; cat "$failures"
else
  echo; echo "no violations in any schedule"
fi
exit "$status"
