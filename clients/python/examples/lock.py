"""The Python client in one run: wait in line for a lock, write through its fencing token,
keep a short lease alive through longer work, and hear at once when the lock is lost.

Run against a server with the module:  python3 clients/python/examples/lock.py [port]
"""

import sys
import threading

import redis

from redis_dlock import Lock, LockLost


def main(port: int) -> None:
    r = redis.Redis(port=port, decode_responses=True)

    # No ttl: a 30 s lease, kept alive in the background until the block ends.
    with Lock(r, "report:lock").acquire(wait=5) as lease:
        print(f"acquired, token is {'a number' if lease.token > 0 else 'wrong'}")
        # The write runs only while this lease holds the lock (DLOCK.GUARD).
        lease.guard("SET", "report:data", "v1")
        print("wrote v1")

    # An explicit 200 ms lease, renewed every ~67 ms because keepalive=True.
    with Lock(r, "report:lock", ttl=0.2, keepalive=True).acquire(wait=5) as lease:
        stop = threading.Event()
        lease.on_lost(lambda lost: stop.set())
        stop.wait(1)  # a second of work: five times the ttl
        print("still held after 1 s" if lease.valid() else "lost too early")

        r.delete("report:lock")  # an operator force-frees it; someone else may take it
        stop.wait(5)
        print("lost: stopping work")
        try:
            lease.guard("SET", "report:data", "v2")
        except LockLost:
            print("write of v2 refused")

    print("report:data is " + r.get("report:data"))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6379)
