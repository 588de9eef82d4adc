"""The Python side of the bench's `clients` section (benches/dlock/clients.rs runs it).

`contend PORT CONTENDERS SECONDS ROUNDS LIBRARY...`: the contention section's workload on one
key through each Python library, one contender per process (threads would share the GIL):
acquire (blocking) -> hold 1 ms -> release -> think 1 ms, for SECONDS. Libraries run in turn
in each round, so a slow spell of the machine hits them all. For each grant it prints
`grant LIBRARY ROUND CLIENT REQUESTED GRANTED RELEASED` (time.monotonic() seconds: one clock
for every process): requested before the acquire call, granted when it returned, released
before the release call.

`keepalive PORT LEASES TTL_MS`: hold LEASES leases of TTL_MS kept alive by the client's
keepalive, and report the process's CPU time over a window of one ttl (three renewals of
each lease) that starts half a renewal period after the last grant: prints `held` when the
window starts and `cpu SECONDS WALL` when it ends (and, on stderr, how many leases a stall of
the machine lost).

Each lock is made the way its documentation shows, with a 10 s lease where it takes one:
- redis_dlock: `Lock(r, key, ttl=10).acquire()`, waiting in the server's queue (WAIT 0); no
  keepalive, as with an explicit ttl. `redis_dlock-keepalive` is the no-ttl default: a 30 s
  lease kept alive by the client's keepalive thread;
- redis-py-raw: `DLOCK.ACQUIRE key owner 10000 WAIT 0` / `DLOCK.RELEASE` sent with redis-py,
  the client's floor;
- python-redis-lock: `redis_lock.Lock(r, key, expire=10).acquire()`: SET NX, then BLPOP on
  a signal list that a release pushes to;
- pottery: `Redlock(key=key, masters={r}, auto_release_time=10).acquire()`: SET NX PX, and a
  random 0-200 ms pause between tries;
- redis-py: `r.lock(key, timeout=10).acquire()`: SET NX PX every 100 ms (its default sleep).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import time
from typing import Any, Callable

import redis

HOLD = 0.001
THINK = 0.001
LEASE = 10


def dlock_lock(r: redis.Redis, key: str, client: int) -> Callable[[], Callable[[], Any]]:
    import redis_dlock

    lock = redis_dlock.Lock(r, key, ttl=LEASE)
    return lambda: lock.acquire().release


def dlock_keepalive(r: redis.Redis, key: str, client: int) -> Callable[[], Callable[[], Any]]:
    import redis_dlock

    lock = redis_dlock.Lock(r, key)
    return lambda: lock.acquire().release


def raw_commands(r: redis.Redis, key: str, client: int) -> Callable[[], Callable[[], Any]]:
    owner = f"contender-{client}"

    def take() -> Callable[[], Any]:
        r.execute_command("DLOCK.ACQUIRE", key, owner, LEASE * 1000, "WAIT", 0)
        return lambda: r.execute_command("DLOCK.RELEASE", key, owner)

    return take


def python_redis_lock(r: redis.Redis, key: str, client: int) -> Callable[[], Callable[[], Any]]:
    import redis_lock

    lock = redis_lock.Lock(r, key, expire=LEASE)

    def take() -> Callable[[], Any]:
        lock.acquire()
        return lock.release

    return take


def pottery_redlock(r: redis.Redis, key: str, client: int) -> Callable[[], Callable[[], Any]]:
    import pottery

    lock = pottery.Redlock(key=key, masters={r}, auto_release_time=LEASE)

    def take() -> Callable[[], Any]:
        lock.acquire()
        return lock.release

    return take


def redis_py_lock(r: redis.Redis, key: str, client: int) -> Callable[[], Callable[[], Any]]:
    lock = r.lock(key, timeout=LEASE)

    def take() -> Callable[[], Any]:
        lock.acquire()
        return lock.release

    return take


# What each library needs imported, done before forking the contenders.
IMPORTS = {
    "redis_dlock": "redis_dlock",
    "redis_dlock-keepalive": "redis_dlock",
    "python-redis-lock": "redis_lock",
    "pottery": "pottery",
}

LIBRARIES = {
    "redis_dlock": dlock_lock,
    "redis_dlock-keepalive": dlock_keepalive,
    "redis-py-raw": raw_commands,
    "python-redis-lock": python_redis_lock,
    "pottery": pottery_redlock,
    "redis-py": redis_py_lock,
}


def contender(
    port: int, library: str, key: str, client: int, seconds: float, start: Any, out: Any,
) -> None:
    r = redis.Redis(port=port)
    r.ping()
    take = LIBRARIES[library](r, key, client)
    grants = []
    start.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        requested = time.monotonic()
        release = take()
        granted = time.monotonic()
        time.sleep(HOLD)
        released = time.monotonic()
        release()
        grants.append((client, requested, granted, released))
        time.sleep(THINK)
    out.put(grants)


def contend(port: int, contenders: int, seconds: float, rounds: int, libraries: list[str]) -> None:
    # Fork after the imports: a contender starts in milliseconds and imports nothing.
    for library in libraries:
        if library in IMPORTS:
            importlib.import_module(IMPORTS[library])
    context = multiprocessing.get_context("fork")
    for round_ in range(rounds):
        for library in libraries:
            key = f"contended:{library}:{round_}"
            start = context.Barrier(contenders + 1)
            out = context.Queue()
            processes = [
                context.Process(
                    target=contender,
                    args=(port, library, key, client, seconds, start, out))
                for client in range(contenders)
            ]
            for process in processes:
                process.start()
            start.wait()
            results = [out.get() for _ in processes]
            for process in processes:
                process.join()
                if process.exitcode != 0:
                    sys.exit(f"a {library} contender failed ({process.exitcode})")
            lines = [
                f"grant {library} {round_} {client} {requested!r} {granted!r} {released!r}"
                for grants in results
                for client, requested, granted, released in grants
            ]
            print("\n".join(lines), flush=True)


def keepalive(port: int, leases: int, ttl_ms: int) -> None:
    import redis_dlock

    r = redis.Redis(port=port)
    held = [
        redis_dlock.Lock(r, f"keepalive:{i}", ttl=ttl_ms / 1000, keepalive=True).acquire()
        for i in range(leases)
    ]
    time.sleep(ttl_ms / 1000 / 6)
    cpu, wall = time.process_time(), time.monotonic()
    print("held", flush=True)
    time.sleep(ttl_ms / 1000)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    print(f"cpu {cpu!r} {wall!r}", flush=True)
    lost = sum(lease.lost.is_set() for lease in held)
    if lost:
        print(f"   clients: {lost} of the Python client's kept leases were lost (a stall)",
              file=sys.stderr)
    for lease in held:
        lease.release()


def main() -> None:
    # The third-party libraries, installed for the bench only, after the system's packages:
    # every library uses the redis-py the client's tests use.
    if os.environ.get("BENCH_SITE"):
        sys.path.append(os.environ["BENCH_SITE"])
    mode, port, *rest = sys.argv[1:]
    if mode == "contend":
        contenders, seconds, rounds, *libraries = rest
        contend(int(port), int(contenders), float(seconds), int(rounds), libraries)
    elif mode == "keepalive":
        leases, ttl_ms = rest
        keepalive(int(port), int(leases), int(ttl_ms))
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
