# Shared by the measurement scripts: reading a node's metrics, waiting for a quiet cluster.

metric() { # port name -> value (summed over label sets)
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}

# wait_quiet FIRST_METRICS_PORT NODES RANGES: until every node hosts RANGES ranges, all quiet.
wait_quiet() {
  local first=$1 nodes=$2 want=$3 deadline=$((SECONDS + 900)) i port total quiet all
  while [ $SECONDS -lt $deadline ]; do
    all=1
    for ((i = 0; i < nodes; i++)); do
      port=$((first + i))
      total=$(metric $port flotilla_store_ranges)
      quiet=$(metric $port flotilla_store_quiet_ranges)
      if [ "$total" -lt "$want" ] || [ "$quiet" -lt "$total" ]; then all=0; fi
    done
    [ $all -eq 1 ] && return 0
    sleep 1
  done
  echo "the $want ranges did not all go quiet in 15 minutes" >&2
  return 1
}
