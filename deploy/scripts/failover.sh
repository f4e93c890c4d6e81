#!/usr/bin/env bash
# Leader failover of quiet ranges after a SIGKILL: starts a local 3-node cluster with RANGES
# user ranges, waits until every range is quiet, kills the node leading the most ranges with
# SIGKILL (no goodbye: its peers learn from missing liveness pings), and polls the two other
# nodes (`flotilla status`, every 20 ms) until they lead every range between them.
#
#   deploy/scripts/failover.sh [RANGES]      (default: 1000 ranges)
#
# FLOTILLA (the binary) defaults to the debug build under CARGO_TARGET_DIR or ./target.
set -euo pipefail

ranges=${1:-1000}
bin=${FLOTILLA:-${CARGO_TARGET_DIR:-target}/debug/flotilla}
dir=$(mktemp -d /tmp/flotilla-failover.XXXXXX)
base_port=7501
metrics_port=9501

. "$(dirname "$0")/lib.sh"

cleanup() { "$bin" cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT

"$bin" cluster up --nodes 3 --ranges "$ranges" --dir "$dir" --detach \
  --base-port $base_port --status-base-port $metrics_port >/dev/null
total=$((ranges + 1))
wait_quiet $metrics_port 3 $total
set -a && . "$dir/env" && set +a

# "node N at ADDR: R ranges, L leaders, ..." -> "N L"
leaders() { "$bin" status 2>/dev/null | sed -n 's/^node \([0-9]*\) at [^:]*:[0-9]*: [0-9]* ranges, \([0-9]*\) leaders.*/\1 \2/p'; }

read -r victim led < <(leaders | sort -k2 -n -r | head -n 1)
pid=$(awk -v n="$victim" '$1 == n { print $2 }' "$dir/pids")
live=$(for i in 1 2 3; do [ "$i" = "$victim" ] || echo "127.0.0.1:$((base_port + i - 1))"; done | paste -sd, -)
export FLOTILLA_ENDPOINTS=$live

start=$(date +%s%N)
kill -9 "$pid"
while :; do
  now=$(date +%s%N)
  sum=$(leaders | awk '{ s += $2 } END { print s + 0 }')
  [ "$sum" -ge "$total" ] && break
  if [ $(((now - start) / 1000000)) -gt 60000 ]; then
    echo "failover: the live nodes lead $sum of $total ranges after 60 s" >&2
    exit 1
  fi
  sleep 0.02
done
elapsed_ms=$(((now - start) / 1000000))
echo "machine: $(nproc) cores, $(uname -m)"
echo "node $victim (SIGKILL) led $led of $total quiet ranges; the other two led all $total after ${elapsed_ms} ms"
