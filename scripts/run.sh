#!/bin/sh
# `make run`: Redis in the foreground with redis.conf.example (which loads the module) on
# 127.0.0.1:$PORT (default 6379), after checking that nothing else listens there.
set -e

port="${PORT:-6379}"
server="${REDIS_SERVER:-redis-server}"

# A connection that succeeds means the port is taken (Debian's own redis-server service,
# another `make run`, anything else); the bare "bind: Address already in use" says too little.
if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
    echo "Port $port on 127.0.0.1 is already in use." >&2
    if [ "$port" = 6379 ] && command -v systemctl >/dev/null 2>&1 \
        && systemctl is-active --quiet redis-server 2>/dev/null; then
        echo "Debian's redis-server service holds it: stop it with" \
            "'systemctl disable --now redis-server'." >&2
    fi
    echo "To run dlock's Redis on another port: make run PORT=6380" >&2
    exit 1
fi
exec "$server" redis.conf.example --port "$port"
