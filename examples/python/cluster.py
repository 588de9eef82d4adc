"""dlock on Redis Cluster with redis-py's RedisCluster: commands are routed by their key, and
hash tags keep a lock and the data it guards in one slot.

Run against a cluster with the module:  python3 examples/python/cluster.py [port of any node]
"""
import sys

import redis
from redis.cluster import RedisCluster


def main(port):
    rc = RedisCluster(host="127.0.0.1", port=port, decode_responses=True)

    # Locks on many keys spread over the masters; the client routes each by its key.
    for i in range(30):
        rc.execute_command("DLOCK.ACQUIRE", f"job:{i}", "worker-1", 30_000)
    masters = {rc.get_node_from_key(f"job:{i}").name for i in range(30)}
    print(f"locks on {len(masters)} masters")

    # {acct:7} puts the lock and the balance in one slot, so the guarded write is local.
    token = rc.execute_command("DLOCK.ACQUIRE", "{acct:7}:lock", "worker-1", 30_000)
    ok = rc.execute_command("DLOCK.GUARD", "{acct:7}:lock", token, "SET", "{acct:7}:balance", 100)
    print(f"guarded write: {ok}")
    try:
        rc.execute_command("DLOCK.GUARD", "{acct:7}:lock", token - 1, "SET", "{acct:7}:balance", 0)
    except redis.ResponseError:
        print("stale write refused")

    released = sum(rc.execute_command("DLOCK.RELEASE", f"job:{i}", "worker-1") for i in range(30))
    print(f"released {released} locks")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7001)
