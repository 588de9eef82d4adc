#!/bin/sh
# A local Redis Cluster with dlock on every node: 3 masters and 3 replicas on
# 127.0.0.1:7001-7006 (CLUSTER_PORT moves the first port), data in target/cluster/.
#
#   make cluster         start it (or start it again, with its data), print how to connect
#   make cluster-stop    stop it and remove its data
set -eu

base=${CLUSTER_PORT:-7001}
server=${REDIS_SERVER:-redis-server}
root=$(pwd)/target/cluster
module=$(pwd)/target/release/libdlock.so
ports=$(seq "$base" $((base + 5)))

# Run a command every 0.1 s until it succeeds; after TRIES failures say MESSAGE and stop.
wait_for() {
    tries=$1 message=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            echo "$message" >&2
            exit 1
        fi
        sleep 0.1
    done
}

cluster_ok() {
    redis-cli -p "$base" cluster info | grep -q cluster_state:ok
}

stop() {
    for port in $ports; do
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    rm -rf "$root"
    echo "cluster stopped"
}

start() {
    created=yes
    for port in $ports; do
        mkdir -p "$root/$port"
        [ -e "$root/$port/nodes.conf" ] || created=no
        if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
            "$server" --port "$port" --bind 127.0.0.1 --dir "$root/$port" --daemonize yes \
                --logfile redis.log --pidfile "$root/$port/redis.pid" \
                --cluster-enabled yes --cluster-config-file nodes.conf \
                --cluster-node-timeout 5000 --appendonly yes \
                --loadmodule "$module"
        fi
    done
    for port in $ports; do
        wait_for 100 "node $port did not start; see $root/$port/redis.log" \
            redis-cli -p "$port" ping
    done
    if [ "$created" = no ]; then
        # shellcheck disable=SC2046
        redis-cli --cluster create $(for p in $ports; do printf '127.0.0.1:%s ' "$p"; done) \
            --cluster-replicas 1 --cluster-yes >"$root/create.log"
    fi
    wait_for 300 "the cluster did not come up; see $root/*/redis.log" cluster_ok
    cat <<MSG
Redis Cluster with dlock: 3 masters + 3 replicas on 127.0.0.1:$base-$((base + 5)).

  redis-cli -c -p $base DLOCK.ACQUIRE {orders}:lock worker-1 30000
  redis-cli -c -p $base CLUSTER NODES
  python3 examples/python/cluster.py $base

Stop it (and drop its data) with: make cluster-stop
MSG
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
