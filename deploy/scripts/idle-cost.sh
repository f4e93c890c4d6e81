#!/usr/bin/env bash
# What idle ranges cost: starts a local 3-node cluster whose user keyspace is pre-split into
# RANGES ranges, waits until every range is quiet on every node (the nodes' own
# flotilla_store_quiet_ranges metric), then measures each node process over WINDOW seconds:
# CPU (utime + stime from /proc, as a share of one core) and resident memory. The same is done
# for a 1-range cluster first, so the memory per range is the difference divided by RANGES.
#
#   deploy/scripts/idle-cost.sh [RANGES] [WINDOW]      (defaults: 10000 ranges, 30 s)
#
# FLOTILLA (the binary) defaults to the debug build under CARGO_TARGET_DIR or ./target.
set -euo pipefail

ranges=${1:-10000}
window=${2:-30}
bin=${FLOTILLA:-${CARGO_TARGET_DIR:-target}/debug/flotilla}
dir=$(mktemp -d /tmp/flotilla-idle.XXXXXX)
base_port=7301
metrics_port=9301
hz=$(getconf CLK_TCK)

. "$(dirname "$0")/lib.sh"

cleanup() { "$bin" cluster down --dir "$dir/run" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Starts a cluster of $1 user ranges, waits for quiet, prints "cpu_percent_max rss_kib_sum".
measure() {
  local n=$1
  rm -rf "$dir/run"
  "$bin" cluster up --nodes 3 --ranges "$n" --dir "$dir/run" --detach \
    --base-port $base_port --status-base-port $metrics_port >/dev/null
  wait_quiet $metrics_port 3 $((n + 1))
  mapfile -t pids < <(awk '{ print $2 }' "$dir/run/pids")
  local before=() after=() rss=0 cpu_max=0
  for p in "${pids[@]}"; do before+=("$(ticks "$p")"); done
  sleep "$window"
  for p in "${pids[@]}"; do after+=("$(ticks "$p")"); rss=$((rss + $(rss_kib "$p"))); done
  for i in "${!pids[@]}"; do
    local cpu
    cpu=$(awk -v a="${after[$i]}" -v b="${before[$i]}" -v hz="$hz" -v w="$window" \
      'BEGIN { printf "%.2f", (a - b) * 100 / hz / w }')
    cpu_max=$(awk -v c="$cpu" -v m="$cpu_max" 'BEGIN { print (c > m) ? c : m }')
  done
  "$bin" cluster down --dir "$dir/run" >/dev/null
  echo "$cpu_max $rss"
}

read -r base_cpu base_rss < <(measure 1)
read -r cpu rss < <(measure "$ranges")
per_range=$(awk -v r="$rss" -v b="$base_rss" -v n="$ranges" 'BEGIN { printf "%.1f", (r - b) / 3 / n }')
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -m)"
echo "1 user range:       busiest node ${base_cpu}% of one core, RSS $((base_rss / 3)) KiB per node"
echo "$ranges user ranges: busiest node ${cpu}% of one core, RSS $((rss / 3)) KiB per node, ${window} s window"
echo "memory per range:   ${per_range} KiB per replica"
