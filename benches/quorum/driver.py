"""Quorum-lock cycles from Python for the benchmark's `quorum` section: the Python client's
`QuorumLock` (`--client dlock`) or pottery's `Redlock` (`--client pottery`) on the servers
listed, printing one line of JSON (cycles/s, p50 and p99 of acquire and of release, in ms).

    python3 driver.py --client dlock --ports 7001,7002,7003 --seconds 3 [--contenders 4]

One contender: acquire → release on a key of its own, one attempt each (never refused).
Several: threads on one key, each acquire → hold 1 ms → release → think 1 ms, acquiring with
the library's own retries (its backoff); only granted acquires are timed. Leases are 10 s,
not renewed. `redis_dlock` and `pottery` come from PYTHONPATH (the bench sets it).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any, Callable

import redis

TTL_S = 10.0
HOLD_S = THINK_S = 0.001


Cycle = Callable[[float, float], bool]


def dlock_cycle(servers: list[redis.Redis], key: str) -> Cycle:
    """One cycle on `key` with the Python client's QuorumLock (see `timed`)."""
    from redis_dlock import NotAcquired, QuorumLock

    lock = QuorumLock(servers, key, TTL_S, keepalive=False)

    def acquire(until: float) -> Any:
        if not until:
            return lock.try_acquire()
        try:
            return lock.acquire(wait=max(until - time.monotonic(), 0.001))
        except NotAcquired:
            return None

    return timed(acquire, lambda lease: lease.release())


def pottery_cycle(servers: list[redis.Redis], key: str) -> Cycle:
    """One cycle on `key` with pottery's Redlock (see `timed`)."""
    import logging

    from pottery import Redlock

    # Pottery logs every refused attempt of a blocking acquire.
    logging.getLogger("pottery").setLevel(logging.CRITICAL)
    lock = Redlock(key=key, masters=set(servers), auto_release_time=TTL_S)

    def acquire(until: float) -> Any:
        if not until:
            return lock.acquire(blocking=False) or None
        return lock.acquire(timeout=max(until - time.monotonic(), 0.001)) or None

    return timed(acquire, lambda _: lock.release())


RESULTS: dict[str, list[float]] = {"acquire": [], "release": []}
RESULTS_LOCK = threading.Lock()


def timed(acquire: Callable[[float], Any], release: Callable[[Any], Any]) -> Cycle:
    """`cycle(until, hold)`: acquire (one attempt when `until` is 0, otherwise retrying until
    then; None when not granted), hold `hold` s, release; whether it was granted. The times
    of the acquire and of the release go to RESULTS."""

    def cycle(until: float, hold: float) -> bool:
        started = time.monotonic()
        held = acquire(until)
        if held is None:
            return False
        granted = time.monotonic()
        if hold:
            time.sleep(hold)
        releasing = time.monotonic()
        release(held)
        released = time.monotonic()
        with RESULTS_LOCK:
            RESULTS["acquire"].append((granted - started) * 1000)
            RESULTS["release"].append((released - releasing) * 1000)
        return True

    return cycle


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(int(len(ordered) * p), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=["dlock", "pottery"], required=True)
    parser.add_argument("--ports", required=True, help="comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--contenders", type=int, default=1)
    args = parser.parse_args()
    make = dlock_cycle if args.client == "dlock" else pottery_cycle
    servers = [redis.Redis(port=int(p), socket_timeout=1, socket_connect_timeout=1)
               for p in args.ports.split(",")]
    prefix = f"bench:{args.client}:{uuid.uuid4().hex[:8]}"
    contended = args.contenders > 1
    keys = [prefix if contended else f"{prefix}:{n}" for n in range(args.contenders)]
    cycles = [make(servers, key) for key in keys]
    # Connections, node ids and scripts before the clock starts.
    for cycle in cycles[:1] if contended else cycles:
        cycle(0, 0)
    RESULTS["acquire"].clear()
    RESULTS["release"].clear()
    failed = [0]
    start = time.monotonic()
    end = start + args.seconds

    def loop(cycle: Cycle) -> None:
        while time.monotonic() < end:
            if not cycle(end if contended else 0, HOLD_S if contended else 0):
                failed[0] += 1
            elif contended:
                time.sleep(THINK_S)

    threads = [threading.Thread(target=loop, args=(c,)) for c in cycles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - start
    acquires, releases = RESULTS["acquire"], RESULTS["release"]
    print(json.dumps({
        "client": args.client, "servers": len(servers), "contenders": args.contenders,
        "cycles": len(acquires), "failed": failed[0], "seconds": round(took, 3),
        "cycles_per_s": len(acquires) / took,
        "acquire_p50_ms": percentile(acquires, 0.5), "acquire_p99_ms": percentile(acquires, 0.99),
        "release_p50_ms": percentile(releases, 0.5), "release_p99_ms": percentile(releases, 0.99),
    }))


if __name__ == "__main__":
    main()
