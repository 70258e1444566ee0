#!/usr/bin/env bash
# Reproduces the tables in BENCHMARKS.md: for each scenario, RUNS times, a
# fresh release server pinned to core 0 (rate limit off) and the load
# generator pinned to core 1; then the median of every figure.
#
#   bench/run.sh                      # every scenario, 3 runs each
#   RUNS=5 bench/run.sh rooms10       # one scenario
#   bench/run.sh max                  # the highest sustainable rate, 1,000 in 10 rooms
#   FLOOR=1 bench/run.sh rooms10 room2000   # the same load against the cost floor
#   FLOOR=alt bench/run.sh rooms10 room2000 # floor and roomhub, run by run, alternated
#   MODE=durable bench/run.sh rooms10       # the default durable store (a fresh data
#                                           # directory per run) instead of --memory
#   MODE=durable FSYNC=always bench/run.sh rooms10   # ... synced before every ack
#   IO_THREADS=2 SERVER_CORE=0,1 bench/run.sh rooms10 # I/O threads (default: the
#                                           # cores the server is pinned to)
#   SERVERS="durable memory node go floor" bench/run.sh rooms10 rooms10half
#       # several servers alternated run by run, in this order: roomhub's
#       # default (`durable`), `--memory`, `--fsync always` (`always`), the
#       # peers in ../shared/peers (`node`: the Node.js ws hub, `go`: the
#       # seed's Go hub; installed and built under target/peers on first
#       # use) and the send() floor (`floor`)
#   SERVERS="memory durable cluster" bench/run.sh pairs500
#       # `cluster`: one cluster node on a fresh redis-server of its own
#       # (AOF off; REDIS_AOF=always: `appendfsync always`), both pinned to
#       # SERVER_CORE; the report adds Redis's CPU (`broker_cpu`,
#       # `broker_us_per_message`)
#   SERVERS="cluster cluster2" bench/run.sh pairsmax
#       # `cluster2`: the same node on two fresh redis-servers, rooms sharded
#       # over them (`--redis url1,url2`); `broker_cpu` has one entry per shard;
#       # `rcluster`: the node on a fresh three-master Redis Cluster
#       # (`--redis-cluster`)
#   SERVERS="durable nodes2" bench/run.sh drops2k drops10k
#       # `nodes2`: two cluster nodes on one fresh redis-server, all three
#       # pinned to SERVER_CORE; the generator spreads connections over both
#       # and (drops) reconnects each client to the other node; server CPU
#       # and RSS are both nodes' together
#
# Scenarios: rooms10 rooms10half room2000 room2000half pairs500 pairsmax idle10k idle19k
# idle50k storm10k churn1m drops2k drops5k drops10k max. Raw JSON lines go to target/bench/<scenario>.jsonl
# (<server>-<scenario>.jsonl for every server but roomhub in MODE's mode).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
PORT=${PORT:-9181}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
SECRET="roomhub-bench-secret-$$"
OUT=target/bench
PEERS=target/peers
mkdir -p "$OUT"

cargo build --release -q -p roomhub-net -p roomhub-bench
SERVER=${SERVER_BIN:-target/release/roomhub}
GEN=target/release/roomhub-bench

# The peers, from ../shared/peers (read-only: copied and built here).
setup_node() {
  if [ -d "$PEERS/node-ws-hub/node_modules" ]; then return; fi
  mkdir -p "$PEERS"
  rm -rf "$PEERS/node-ws-hub"
  cp -r ../shared/peers/node-ws-hub "$PEERS/"
  (cd "$PEERS/node-ws-hub" && npm ci --no-audit --no-fund --silent)
}
setup_go() {
  if [ -x "$PEERS/go-seed-hub/go-seed-hub" ]; then return; fi
  if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/gorilla/websocket ]; then
    # The build is offline, against Debian's packaged sources.
    apt-get install -y -q golang-go golang-github-gorilla-websocket-dev \
      golang-github-golang-jwt-jwt-dev >/dev/null
  fi
  mkdir -p "$PEERS"
  rm -rf "$PEERS/go-seed-hub"
  cp -r ../shared/peers/go-seed-hub "$PEERS/"
  sh "$PEERS/go-seed-hub/build.sh" >/dev/null
}

# wait_until WHAT CHECK...: retries CHECK for up to 10 s.
wait_until() {
  local what=$1
  shift
  for _ in $(seq 1 200); do
    if "$@" >/dev/null 2>&1; then return; fi
    sleep 0.05
  done
  echo "$what did not start" >&2
  exit 1
}
port_open() { (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
# roomhub answers /readyz once it serves (for a cluster node, once its broker is up).
healthy() { curl -fsS "http://127.0.0.1:$PORT/readyz"; }

SERVER_PID=""
# A second node (`nodes2`), and the URLs the generator connects to.
NODE2_PID=""
URLS="ws://127.0.0.1:$PORT/ws"
REDIS_PIDS=()
# start_redis PORT: a fresh redis-server with nothing on disk but what
# REDIS_AOF asks for.
start_redis() {
  local port=$1 dir="$OUT/redis-$1"
  shift
  rm -rf "$dir"; mkdir -p "$dir"
  local aof=(--appendonly no)
  if [ "${REDIS_AOF:-off}" = "always" ]; then aof=(--appendonly yes --appendfsync always); fi
  taskset -c "$SERVER_CORE" redis-server --port "$port" --bind 127.0.0.1 --save "" \
    --dir "$dir" "${aof[@]}" "$@" >/dev/null 2>&1 &
  REDIS_PIDS+=($!)
  wait_until redis redis-cli -p "$port" ping
}
# start_redis_cluster PORT...: a Redis Cluster of one master per port.
start_redis_cluster() {
  local port nodes=()
  for port in "$@"; do
    start_redis "$port" --cluster-enabled yes --cluster-config-file nodes.conf
    nodes+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  cluster_ok() { for port in "$@"; do redis-cli -p "$port" cluster info | grep -q cluster_state:ok || return 1; done; }
  wait_until redis-cluster cluster_ok "$@"
}
# start_server KIND: roomhub (in MODE's mode), durable, memory, always,
# cluster, cluster2, nodes2, rcluster, floor, node or go.
start_server() {
  local kind=${1:-roomhub}
  if [ "$kind" = "roomhub" ] && [ "${FLOOR:-}" = "1" ]; then kind=floor; fi
  if [ "$kind" = "roomhub" ]; then
    if [ "${MODE:-memory}" = "durable" ]; then kind=durable; else kind=memory; fi
  fi
  case $kind in
    floor)
      # The cost floor (bench/src/bin/roomhub-floor.rs).
      taskset -c "$SERVER_CORE" target/release/roomhub-floor --listen "127.0.0.1:$PORT" 2>/dev/null &
      SERVER_PID=$!
      wait_until floor port_open
      return ;;
    node)
      setup_node
      BENCH_JWT_SECRET="$SECRET" taskset -c "$SERVER_CORE" node "$PEERS/node-ws-hub/server.js" "$PORT" >/dev/null 2>&1 &
      SERVER_PID=$!
      wait_until node port_open
      return ;;
    go)
      setup_go
      # One OS thread running Go code per core it is pinned to.
      GOMAXPROCS=$(taskset -c "$SERVER_CORE" nproc) BENCH_JWT_SECRET="$SECRET" \
        taskset -c "$SERVER_CORE" "$PEERS/go-seed-hub/go-seed-hub" "$PORT" >/dev/null 2>&1 &
      SERVER_PID=$!
      wait_until go port_open
      return ;;
  esac
  local mode_args=(--memory)
  case $kind in
    cluster) start_redis $((PORT + 1)); mode_args=(--redis "redis://127.0.0.1:$((PORT + 1))") ;;
    cluster2)
      start_redis $((PORT + 1)); start_redis $((PORT + 2))
      mode_args=(--redis "redis://127.0.0.1:$((PORT + 1)),redis://127.0.0.1:$((PORT + 2))") ;;
    nodes2)
      start_redis $((PORT + 1)); mode_args=(--redis "redis://127.0.0.1:$((PORT + 1))")
      local second=$((PORT + 10))
      taskset -c "$SERVER_CORE" "$SERVER" "${mode_args[@]}" --jwt-secret "$SECRET" \
        --listen "127.0.0.1:$second" --rate-limit-per-second 0 \
        --max-connections 120000 --max-connections-per-user 0 --log warn &
      NODE2_PID=$!
      URLS="ws://127.0.0.1:$PORT/ws,ws://127.0.0.1:$second/ws"
      node2_healthy() { curl -fsS "http://127.0.0.1:$second/readyz"; }
      wait_until "second node" node2_healthy ;;
    rcluster)
      start_redis_cluster $((PORT + 1)) $((PORT + 2)) $((PORT + 3))
      mode_args=(--redis-cluster "redis://127.0.0.1:$((PORT + 1)),redis://127.0.0.1:$((PORT + 2))") ;;
    durable) rm -rf "$OUT/data"; mode_args=(--data-dir "$OUT/data" --fsync "${FSYNC:-background}") ;;
    always) rm -rf "$OUT/data"; mode_args=(--data-dir "$OUT/data" --fsync always) ;;
  esac
  if [ -n "${IO_THREADS:-}" ]; then mode_args+=(--io-threads "$IO_THREADS"); fi
  # Rate limiting off: a throughput benchmark must not be shaped by the
  # per-connection limit (the default is 1/s, burst 10).
  taskset -c "$SERVER_CORE" "$SERVER" "${mode_args[@]}" --jwt-secret "$SECRET" \
    --listen "127.0.0.1:$PORT" --rate-limit-per-second 0 \
    --max-connections 120000 --max-connections-per-user 0 --log warn &
  SERVER_PID=$!
  wait_until roomhub healthy
}
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
  if [ -n "$NODE2_PID" ]; then
    kill "$NODE2_PID" 2>/dev/null || true
    wait "$NODE2_PID" 2>/dev/null || true
    NODE2_PID=""
  fi
  URLS="ws://127.0.0.1:$PORT/ws"
  for pid in "${REDIS_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  REDIS_PIDS=()
}
trap stop_server EXIT

gen() {
  local brokers=()
  for pid in "${REDIS_PIDS[@]}"; do brokers+=(--broker-pid "$pid"); done
  local nodes=(--server-pid "$SERVER_PID")
  if [ -n "$NODE2_PID" ]; then nodes+=(--server-pid "$NODE2_PID"); fi
  taskset -c "$GEN_CORE" "$GEN" --url "$URLS" --jwt-secret "$SECRET" \
    "${nodes[@]}" "${brokers[@]}" --source-addrs 8 "$@"
}

# run_scenario NAME LABEL -- generator arguments
run_scenario() {
  local name=$1 label=$2
  shift 3
  # Which servers, in the order each run starts them.
  local servers=${SERVERS:-roomhub}
  case "${FLOOR:-}" in
    1) servers="floor" ;;
    alt) servers="floor roomhub" ;;
  esac
  for server in $servers; do : >"$OUT/$(file_name "$server" "$name").jsonl"; done
  for run in $(seq 1 "$RUNS"); do
    for server in $servers; do
      local file
      file="$OUT/$(file_name "$server" "$name").jsonl"
      start_server "$server"
      sleep 0.2
      echo "== $server $name, run $run/$RUNS" >&2
      gen --label "$label" "$@" | tee /dev/stderr | tail -n 1 >>"$file"
      stop_server
      sleep 1
    done
  done
  for server in $servers; do
    python3 bench/median.py "$(file_name "$server" "$name")" "$OUT/$(file_name "$server" "$name").jsonl"
  done
}

file_name() {
  if [ "$1" = "roomhub" ]; then echo "$2"; else echo "$1-$2"; fi
}

max_rate() {
  # Raise the per-sender rate until delivery falls short or p99 passes 50 ms.
  : >"$OUT/max.jsonl"
  for rate in ${RATES:-100 200 300 400 500 600 800 1000}; do
    start_server
    sleep 0.2
    echo "== max, $rate/s per sender" >&2
    gen --label "rate $rate" throughput --connections 1000 --rooms 10 --senders 10 \
      --rate "$rate" --duration 10s | tail -n 1 | tee -a "$OUT/max.jsonl"
    stop_server
    sleep 1
  done
  python3 bench/median.py max "$OUT/max.jsonl"
}

scenarios=${*:-rooms10 room2000 idle10k idle19k storm10k max}
for s in $scenarios; do
  case $s in
    rooms10) run_scenario rooms10 "1000 in 10 rooms, 10 x 100/s, rate limit off" -- \
      throughput --connections 1000 --rooms 10 --senders 10 --rate 100 --duration 10s ;;
    room2000) run_scenario room2000 "2000 in 1 room, 1 x 50/s, rate limit off" -- \
      throughput --connections 2000 --rooms 1 --senders 1 --rate 50 --duration 10s ;;
    # Half the load: where a machine is too slow for every server to keep
    # below a full core at the full load.
    # Sequencing: 500 rooms of 2, every member sending, 20/s each: 20,000
    # messages/s to number, store and ack (with MODE=durable, the store's).
    # The same at rising rates (RATES per member, default 10 20 30 40:
    # 10,000 to 40,000 messages/s), one file per rate.
    pairsmax) for rate in ${RATES:-10 20 30 40}; do
        run_scenario "pairs500r$rate" "1000 in 500 rooms of 2, 1000 x $rate/s, rate limit off" -- \
          throughput --connections 1000 --rooms 500 --senders 1000 --rate "$rate" --duration 10s
      done ;;
    pairs500) run_scenario pairs500 "1000 in 500 rooms of 2, 1000 x 20/s, rate limit off" -- \
      throughput --connections 1000 --rooms 500 --senders 1000 --rate 20 --duration 10s ;;
    rooms10half) run_scenario rooms10half "1000 in 10 rooms, 10 x 50/s, rate limit off" -- \
      throughput --connections 1000 --rooms 10 --senders 10 --rate 50 --duration 10s ;;
    room2000half) run_scenario room2000half "2000 in 1 room, 1 x 25/s, rate limit off" -- \
      throughput --connections 2000 --rooms 1 --senders 1 --rate 25 --duration 10s ;;
    idle10k) run_scenario idle10k "10000 idle" -- idle --connections 10000 --hold 3s ;;
    # 50,000 needs a file-descriptor hard limit above 50,000 for the server
    # and the generator; the development sandbox's is 20,000 and cannot be
    # raised there, so idle19k is the largest run it allows.
    idle19k) run_scenario idle19k "19000 idle" -- idle --connections 19000 --hold 3s --concurrency 1024 ;;
    idle50k) run_scenario idle50k "50000 idle" -- idle --connections 50000 --hold 3s --concurrency 1024 ;;
    storm10k) run_scenario storm10k "10000 in 100 rooms drop and rejoin, rate limit off" -- \
      storm --connections 10000 --rooms 100 --missed 5 --concurrency 1024 ;;
    # A million connect/join/leave/disconnect cycles, 64 at a time: the
    # server's RSS after against after a 100,000-cycle warm-up, and its
    # rooms and connections once all are gone (roomhub only).
    churn1m) run_scenario churn1m "1,000,000 connect/join/leave/disconnect cycles over 100 rooms" -- \
      churn --cycles 1000000 --warmup 100000 --rooms 100 --concurrency 64 ;;
    # Network drops, the published shape (AnyCable's): 120 messages per
    # room at 2/s, each member's socket reset every 10-20 s (about 15 s)
    # and away 2 s, rejoining with `since`; 100 members per room.
    drops2k) run_scenario drops2k "2000 in 20 rooms, resets every 10-20 s, 2 s away" -- \
      drops --clients 2000 --rooms 20 --messages 120 --rate 2 --concurrency 256 ;;
    drops5k) run_scenario drops5k "5000 in 50 rooms, resets every 10-20 s, 2 s away" -- \
      drops --clients 5000 --rooms 50 --messages 120 --rate 2 --concurrency 512 ;;
    drops10k) run_scenario drops10k "10000 in 100 rooms, resets every 10-20 s, 2 s away" -- \
      drops --clients 10000 --rooms 100 --messages 120 --rate 2 --concurrency 1024 ;;
    max) max_rate ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done
