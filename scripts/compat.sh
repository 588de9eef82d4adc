#!/bin/sh
# Run the whole test suite against several server binaries and print a matrix.
#
#   make compat SERVERS="/opt/redis-7.2.6/src/redis-server /opt/valkey-8.0/src/valkey-server"
#   make compat COMPAT_DIR=/opt/servers   # every */src/redis-server and */src/valkey-server
#
# With neither, only the redis-server on PATH. Building the other servers is a development
# step (README, "Compatibility").
set -u

servers="${SERVERS:-}"
if [ -z "$servers" ] && [ -n "${COMPAT_DIR:-}" ]; then
    servers=$(ls "$COMPAT_DIR"/*/src/redis-server "$COMPAT_DIR"/*/src/valkey-server 2>/dev/null)
fi
[ -n "$servers" ] || servers=$(command -v redis-server)

results=""
failed_any=0
for server in $servers; do
    version=$("$server" --version 2>/dev/null | sed -n 's/^\([A-Za-z]*\) server v=\([^ ]*\).*/\1 \2/p')
    log=$(mktemp)
    REDIS_SERVER="$server" cargo test --profile tests --no-fail-fast >"$log" 2>&1
    passed=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    failed=$(sed -n 's/^test result: .* \([0-9]*\) failed.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    if ! grep -q "^test result" "$log" || [ "$failed" != 0 ]; then
        failed_any=1
        grep -A1 -E "^test .* FAILED|panicked at" "$log" | head -30 >&2
    fi
    results="$results| $server | $version | $passed | $failed |
"
    rm -f "$log"
done

printf '| server | version | passed | failed |\n|---|---|---:|---:|\n%s' "$results"

# Upgrades through RDB, e.g. UPGRADE_CHAINS="a b c;b d": each chain's servers in turn.
if [ -n "${UPGRADE_CHAINS:-}" ]; then
    echo
    echo "$UPGRADE_CHAINS" | tr ';' '\n' | while read -r chain; do
        [ -n "$chain" ] || continue
        if DLOCK_UPGRADE_CHAIN="$chain" cargo test --profile tests --test persistence -- --ignored >/dev/null 2>&1; then
            echo "upgrade ok: $chain"
        else
            echo "upgrade FAILED: $chain"
            failed_any=1
        fi
    done
fi
exit $failed_any
