#!/usr/bin/env bash
# Idle cost of many shard groups: starts a 3-node cluster on loopback, creates one stream
# with SHARDS shards, waits until it is ACTIVE and SETTLE seconds more, then measures the
# CPU time the three node processes use over WINDOW seconds of no traffic.
# Prints CPU as a percentage of one core, per node and in total.
#
#   [BIN_DIR=target/release] benches/idle_cluster.sh [SHARDS] [QUIESCE_AFTER_MS]
#   (defaults: target/debug, 1000 shards, 2000 ms; QUIESCE_AFTER_MS=0 = never quiesce)
set -euo pipefail
cd "$(dirname "$0")/.."
shards=${1:-1000}
quiesce=${2:-2000}
settle=${SETTLE:-15}
window=${WINDOW:-30}
bin="${BIN_DIR:-$PWD/target/debug}"
[ -x "$bin/tributary" ] || { echo "build first: cargo build --workspace --all-targets" >&2; exit 1; }
dir=$(mktemp -d)
base=$((20000 + RANDOM % 20000))
peers="1=127.0.0.1:$base,2=127.0.0.1:$((base + 1)),3=127.0.0.1:$((base + 2))"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for id in 1 2 3; do
  "$bin/tributary" serve --node-id $id --listen 127.0.0.1:$((base + id - 1)) --az az-$id \
    --data-dir "$dir/node-$id" --peers "$peers" --max-shards $((shards + 8)) \
    --quiesce-after-ms "$quiesce" >"$dir/node-$id.log" 2>&1 &
  pids+=($!)
done
endpoint=http://127.0.0.1:$base
for _ in $(seq 1 300); do "$bin/trib" --endpoint $endpoint stream list >/dev/null 2>&1 && break; sleep 0.2; done
start=$(date +%s)
"$bin/trib" --endpoint $endpoint stream create idle --shards "$shards" --no-wait
for _ in $(seq 1 600); do
  "$bin/trib" --endpoint $endpoint stream describe idle 2>/dev/null | grep -q ACTIVE && break
  sleep 1
done
echo "stream with $shards shards ACTIVE after $(( $(date +%s) - start )) s; settling ${settle} s" >&2
sleep "$settle"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -a before
for i in 0 1 2; do before[$i]=$(ticks "${pids[$i]}"); done
sleep "$window"
total=0
for i in 0 1 2; do
  used=$(( $(ticks "${pids[$i]}") - before[$i] ))
  total=$((total + used))
  awk -v u="$used" -v hz="$hz" -v w="$window" -v n=$((i + 1)) \
    'BEGIN { printf "node %d: %.1f%% of one core\n", n, 100 * u / hz / w }'
done
awk -v u="$total" -v hz="$hz" -v w="$window" -v s="$shards" -v q="$quiesce" \
  'BEGIN { printf "cluster total: %.1f%% of one core (%d shards, quiesce_after_ms=%d, %d s window)\n", 100 * u / hz / w, s, q, w }'
"$bin/trib" --endpoint $endpoint cluster status
