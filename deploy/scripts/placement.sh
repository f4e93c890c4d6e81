#!/usr/bin/env bash
# Placement on real processes (issue 9's report): a local 3-node cluster with RANGES user
# ranges and the default placement settings (1 s interval, 30 s down-time), then
#
#   1. a node restarted (SIGTERM: its leaderships move away; then started again): the time
#      until leaders are balanced within +-1 again;
#   2. a 4th node started with `--join`: the time until replicas and leaders are balanced over
#      four nodes, and the operators issued per replica moved;
#   3. that node killed with SIGKILL: the time until every range has 3 replicas on live nodes
#      (down-time included).
#
#   deploy/scripts/placement.sh [RANGES]      (default: 1000)
#
# FLOTILLA (the binary) defaults to the debug build under CARGO_TARGET_DIR or ./target.
set -euo pipefail

ranges=${1:-1000}
bin=${FLOTILLA:-${CARGO_TARGET_DIR:-target}/debug/flotilla}
dir=$(mktemp -d /tmp/flotilla-placement.XXXXXX)
base_port=7601
metrics_port=9601
cluster_id=local

. "$(dirname "$0")/lib.sh"

extra_pid=""
cleanup() {
  [ -n "$extra_pid" ] && kill -9 "$extra_pid" 2>/dev/null || true
  "$bin" cluster down --dir "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

"$bin" cluster up --nodes 3 --ranges "$ranges" --dir "$dir" --detach --cluster-id $cluster_id \
  --base-port $base_port --status-base-port $metrics_port >/dev/null
set -a && . "$dir/env" && set +a
total=$((ranges + 1))

status() { "$bin" -o json placement status 2>/dev/null || echo '{}'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# wait_for WHAT SECONDS JQ-CONDITION: polls `placement status` until the condition holds.
wait_for() {
  local what=$1 limit=$2 cond=$3 deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    if status | jq -e "$cond" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "timed out after ${limit}s waiting for $what: $(status | jq -c '.nodes')" >&2
  return 1
}

# Balanced: every node's leaders within one of the others, and all ranges led.
leaders_ok() { echo "([.nodes[] | select(.live) | .leaders] | (max - min) <= 1 and add >= $total)"; }
replicas_ok() { echo "([.nodes[] | select(.live) | .replicas] | (max - min) <= 1)"; }

wait_for "the first balance" 600 "$(leaders_ok)"
echo "cluster of $total ranges balanced: $(status | jq -c '[.nodes[] | {node, replicas, leaders}]')"

# 1. restart node 2.
pid=$(awk '$1 == 2 { print $2 }' "$dir/pids")
kill -TERM "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
start=$(now_ms)
(cd "$dir/n2" && exec "$bin" server --config flotilla.toml >>server.log 2>&1) &
new_pid=$!
sed -i "s/^2 .*/2 $new_pid/" "$dir/pids"
wait_for "leaders balanced after the restart" 600 "$(leaders_ok) and ([.nodes[] | select(.node == 2) | .live] | all)"
echo "node 2 restarted: leaders balanced again in $(( $(now_ms) - start )) ms"

# 2. a fourth node joins.
before=$(status | jq '[.operators[] | .started] | add')
"$bin" certs create --cluster-id $cluster_id --nodes 4 --dir "$dir/certs" >/dev/null
mkdir -p "$dir/n4"
sed -e 's/^node-id = .*/node-id = 4/' \
    -e "s/^listen = .*/listen = \"127.0.0.1:$((base_port + 3))\"/" \
    -e "s/^status-addr = .*/status-addr = \"127.0.0.1:$((metrics_port + 3))\"/" \
    -e 's#n3\(-key\)\?\.pem#n4\1.pem#' "$dir/n3/flotilla.toml" > "$dir/n4/flotilla.toml"
start=$(now_ms)
(cd "$dir/n4" && exec "$bin" server --config flotilla.toml --join "127.0.0.1:$base_port" >>server.log 2>&1) &
extra_pid=$!
wait_for "four balanced nodes" 1800 "([.nodes[] | select(.live)] | length) == 4 and $(replicas_ok) and $(leaders_ok)"
took=$(( $(now_ms) - start ))
after=$(status | jq '[.operators[] | .started] | add')
moved=$(status | jq '[.nodes[] | select(.node == 4) | .replicas] | add')
echo "node 4 joined: balanced in $took ms; $((after - before)) operators for $moved replicas moved to it: $(status | jq -c '[.operators[] | select(.started > 0) | {kind, started, finished, failed}]')"

# 3. kill node 4: its replicas are re-created on the others after down-time (30 s).
start=$(now_ms)
kill -9 "$extra_pid"
extra_pid=""
wait_for "re-replication" 1800 "([.nodes[] | select(.node == 4) | .replicas] | add) == 0 and ([.nodes[] | select(.live) | .replicas] | add) >= $((total * 3))"
echo "node 4 killed: every range back to 3 live replicas in $(( $(now_ms) - start )) ms (down-time 30 s included)"
