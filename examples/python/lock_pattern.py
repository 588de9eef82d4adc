"""The whole dlock pattern with redis-py: wait in line for the lock, work while extending
the lease, write to a resource that checks the fencing token, release.

Run against a server with the module:  python3 examples/python/lock_pattern.py [port]
"""
import sys

import redis

# The resource: a Redis key that remembers the highest fencing token it has accepted and
# refuses writes carrying a lower one (a storage system would do the same check).
FENCED_WRITE = """
    local highest = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
    local token = tonumber(ARGV[1])
    if token < highest then
        return redis.error_reply('STALE token ' .. token .. ' is below ' .. highest)
    end
    redis.call('HSET', KEYS[1], 'token', token, 'data', ARGV[2])
    return 1
"""


def main(port):
    r = redis.Redis(port=port, decode_responses=True)
    write = r.register_script(FENCED_WRITE)

    # Wait up to 5 s for the lock, first come first served; None on timeout.
    token = r.execute_command("DLOCK.ACQUIRE", "report:lock", "worker-1", 10_000, "WAIT", 5_000)
    if token is None:
        print("lock busy")
        return
    print("acquired")

    # Long work: keep the lease alive, and stop if it was lost.
    extended = r.execute_command("DLOCK.EXTEND", "report:lock", "worker-1", 10_000)
    print("extended" if extended == 1 else "lost the lock")

    # Every write carries the token; the resource rejects stale ones.
    write(keys=["report:resource"], args=[token, "report v1"])
    print("written")
    try:
        write(keys=["report:resource"], args=[token - 1, "stale write"])
    except redis.ResponseError as e:
        print("stale write refused: " + str(e).split()[0])

    released = r.execute_command("DLOCK.RELEASE", "report:lock", "worker-1")
    print("released" if released == 1 else "was not held")
    print("resource holds '%s'" % r.hget("report:resource", "data"))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6379)
