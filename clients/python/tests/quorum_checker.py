"""The quorum safety checker (issue 19): many client processes take a `QuorumLock` on five
independent servers and write to a fenced resource while faults hit the servers and the
clients; the resource must never accept two holders with one token, nor go back to an older
token.

    python3 -m tests.quorum_checker --seconds 600            # from clients/python
    python3 -m tests.quorum_checker --seconds 120 --redlock  # pottery's Redlock, contrast

- 5 redis-servers with the module (AOF, `appendfsync everysec`, node ids 1-5) and one plain
  redis-server holding the resource: for each of a few keys, the highest accepted token and
  its holder, and the log of accepted writes. A Lua script accepts a write only with a token
  above the highest, or equal to it from the same holder (the lease that set it); an equal
  token from another holder is refused and recorded: a violation.
- `--clients` processes (32) loop: acquire one of the keys' QuorumLock (ttl `--ttl`, kept
  alive), then 1-3 times: check the lease's validity, work up to 20 ms, write with the
  lease's token;
  then release. Each records its grant (when its ACQUIREs were sent, when the lease came
  back, when its work ended) in the resource server.
- A fault thread, at random: kill -9 of one or two lock servers, their AOF cut back to its
  size up to a second before (what a power loss costs with `everysec`: the writes not yet
  fsynced), then restart; SIGSTOP of a lock server past the ttl; SIGSTOP of a client (three
  times in four a current holder) past its lease. A clock offset for one server runs only with
  `faketime` installed and FAKETIME_SERVER naming a redis-server built with libc malloc.
- Checked afterwards: violations (two holders accepted with one token, or an accepted token
  below one accepted before it, from the resource's logs); order inversions (a grant whose
  ACQUIREs were sent after another grant had come back, with a token not above it); how
  often two holders' hold times overlapped (a client stopped past its lease), and how many
  writes of a holder were accepted after another holder's (must be 0: the stale ones are
  refused).

`--redlock` runs the same workload through pottery's Redlock (installed with pip into a
temporary directory for that run): its values are random, so the resource can only compare
them for equality and accepts every write; the run reports the same overlaps and how many
stale writes got through.

The last line printed is the summary; `main()` returns it as a dict too.
"""

from __future__ import annotations

import argparse
import heapq
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from redis_dlock._core import drift, to_ms

from .server import Server

LOCK_SERVERS = 5

FENCED_WRITE = """
local token = tonumber(ARGV[1])
local top = redis.call('HGET', KEYS[1], 'token')
local holder = redis.call('HGET', KEYS[1], 'holder')
top = top and tonumber(top) or 0
if token > top or (token == top and holder == ARGV[2]) then
  redis.call('HSET', KEYS[1], 'token', ARGV[1], 'holder', ARGV[2])
  redis.call('RPUSH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2])
  return 1
end
if token == top then
  redis.call('RPUSH', KEYS[3], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. holder)
  return -1
end
return 0
"""
"""The fenced resource: KEYS = state hash, accepted log, violations log; ARGV = token,
holder. 1 accepted, 0 refused as stale, -1 refused: another holder with the same token."""

EQUALITY_WRITE = """
redis.call('RPUSH', KEYS[2], '0 ' .. ARGV[2])
return 1
"""
"""The resource for Redlock's random values: they can be compared for equality only, which
orders nothing, so every write is accepted (and logged)."""


def resource_keys(key: str) -> list[str]:
    return [f"{key}:state", f"{key}:accepted", f"{key}:violations"]


def client_loop(
    number: int, mode: str, ports: list[int], resource_port: int, keys: list[str],
    ttl: float, stop: Any, pottery_path: str | None,
) -> None:
    """One client process: acquire, write fenced, release, until `stop` is set."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    resource = redis.Redis(port=resource_port)
    write = resource.register_script(FENCED_WRITE if mode == "quorum" else EQUALITY_WRITE)
    unmark = resource.register_script(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end")
    masters = [redis.Redis(port=p, socket_timeout=1, socket_connect_timeout=1) for p in ports]
    stats: Counter[str] = Counter()
    if mode == "quorum":
        from redis_dlock import QuorumLock

        locks: dict[str, Any] = {k: QuorumLock(masters, k, ttl, keepalive=True) for k in keys}
    else:
        sys.path.append(str(pottery_path))
        logging_off()
        from pottery import Redlock

        locks = {k: Redlock(key=k, masters=set(masters), auto_release_time=ttl) for k in keys}
    while not stop.is_set():
        key = rng.choice(keys)
        try:
            # One attempt at a time: `sent` is then at or before the attempt's ACQUIREs.
            sent = time.monotonic()
            if mode == "quorum":
                lease = locks[key].try_acquire()
                granted = lease is not None
            else:
                granted = locks[key].acquire(blocking=False)
            if not granted:
                stats["attempts_failed"] += 1
                time.sleep(rng.uniform(0.001, min(ttl / 3, 0.2)))
                continue
            returned = time.monotonic()
            if mode == "quorum":
                token, holder, valid = lease.token, lease.owner, lease.valid
            else:
                # Redlock's validity, as pottery computes it, on this process's clock.
                until = sent + ttl - drift(to_ms(ttl))
                token, holder = 0, f"{number}-{locks[key]._uuid}"
                valid = lambda: time.monotonic() < until  # noqa: E731
            stats["grants"] += 1
            resource.set(f"{key}:holder_pid", os.getpid())
            end = returned
            for _ in range(rng.randint(1, 3)):
                if not valid():
                    break
                time.sleep(rng.uniform(0, 0.02))
                outcome = write(keys=resource_keys(key), args=[token, holder])
                end = time.monotonic()
                stats[{1: "accepted", 0: "refused_stale", -1: "refused_equal"}[outcome]] += 1
            resource.rpush("grants", f"{key} {sent!r} {returned!r} {end!r} {token} {holder}")
            unmark(keys=[f"{key}:holder_pid"], args=[os.getpid()])
            if mode == "quorum":
                if lease.lost.is_set():
                    stats["lost"] += 1
                lease.release()
            else:
                try:
                    locks[key].release()
                except Exception:
                    stats["release_failed"] += 1
        except Exception as error:
            stats["errors"] += 1
            if stats["errors"] <= 3:
                print(f"client {number}: {type(error).__name__}: {error}", file=sys.stderr)
    if stats:
        resource.hincrby("stats", "clients_done", 1)
        for name, count in stats.items():
            resource.hincrby("stats", name, count)


def logging_off() -> None:
    """Pottery logs every failed attempt with a traceback: keep the output to the figures."""
    import logging

    logging.getLogger("pottery").setLevel(logging.CRITICAL)


class Faults:
    """The fault thread: one fault at a time, at random, until stopped; counts them."""

    def __init__(
        self, servers: list[Server], clients: list[multiprocessing.process.BaseProcess],
        resource: redis.Redis, keys: list[str], ttl: float, seed: int,
    ) -> None:
        self.servers = servers
        self.clients = clients
        self.resource = resource
        self.keys = keys
        self.ttl = ttl
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.lost_bytes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="faults", daemon=True)
        self.faketime = bool(shutil.which("faketime") and os.environ.get("FAKETIME_SERVER"))

    def run(self) -> None:
        kinds = ["crash", "server_stop", "client_stop"]
        if self.faketime:
            kinds.append("clock_offset")
        while not self.stop.wait(self.rng.uniform(0.3, 1.5)):
            kind = self.rng.choice(kinds)
            getattr(self, kind)()
            self.counts[kind] += 1

    def pause(self) -> float:
        """How long a stop lasts: past the ttl."""
        return self.ttl * self.rng.uniform(1.2, 3)

    def crash(self) -> None:
        """kill -9 one or two servers, cut their AOF back to a size it had up to a second
        before (the unsynced writes a power loss takes with everysec), restart them."""
        victims = self.rng.sample(self.servers, self.rng.choice([1, 2]))
        synced = {id(s): aof_size(s) for s in victims}
        self.stop.wait(self.rng.uniform(0, 1))
        for server in victims:
            server.process.kill()
            server.process.wait()
        for server in victims:
            path, size = synced[id(server)]
            if path is not None and path.exists() and path.stat().st_size >= size:
                self.lost_bytes += path.stat().st_size - size
                os.truncate(path, size)
        self.stop.wait(self.rng.uniform(0, 0.3))
        for server in victims:
            server.restart()

    def server_stop(self) -> None:
        server = self.rng.choice(self.servers)
        server.freeze()
        try:
            self.stop.wait(self.pause())
        finally:
            server.thaw()

    def client_stop(self) -> None:
        pid = None
        if self.rng.random() < 0.75:
            held = [p for p in self.resource.mget([f"{k}:holder_pid" for k in self.keys]) if p]
            pid = int(self.rng.choice(held)) if held else None
        alive = [c.pid for c in self.clients if c.is_alive()]
        if pid not in alive:
            pid = self.rng.choice(alive)
        os.kill(pid, signal.SIGSTOP)
        try:
            self.stop.wait(self.pause())
        finally:
            os.kill(pid, signal.SIGCONT)

    def clock_offset(self) -> None:
        """Restart one server under faketime, its clock off by up to a few hundred ms
        (needs a redis-server built with libc malloc: FAKETIME_SERVER)."""
        server = self.rng.choice(self.servers)
        offset = self.rng.choice([-1, 1]) * self.rng.randint(50, 500)
        server.process.kill()
        server.process.wait()
        binary = os.environ["FAKETIME_SERVER"]
        server.process = subprocess.Popen(
            ["faketime", "-f", f"{offset / 1000:+.3f}s", binary, "--port", str(server.port),
             *server._args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.stop.wait(self.pause())
        server.restart()

    def summary(self) -> str:
        clock = (f"clock offset {self.counts['clock_offset']}" if self.faketime else
                 "clock offset skipped (needs faketime and FAKETIME_SERVER)")
        return (f"faults {sum(self.counts.values())} (kill -9 + restart "
                f"{self.counts['crash']}, {self.lost_bytes} B of AOF lost; server SIGSTOP "
                f"{self.counts['server_stop']}; client SIGSTOP {self.counts['client_stop']}; "
                f"{clock})")


def aof_size(server: Server) -> tuple[Path | None, int]:
    """The newest incremental AOF file of `server` and its size now."""
    files = sorted(Path(server.dir, "appendonlydir").glob("*.incr.aof"),
                   key=lambda p: int(p.name.split(".")[-3]))
    if not files:
        return None, 0
    return files[-1], files[-1].stat().st_size


def overlaps(grants: list[tuple[str, float, float, float, int, str]]) -> int:
    """Pairs of grants of one key whose hold times (lease back .. work done) overlap."""
    count = 0
    for key in {g[0] for g in grants}:
        active: list[float] = []
        for _, _, start, end, _, _ in sorted((g for g in grants if g[0] == key),
                                             key=lambda g: g[2]):
            while active and active[0] <= start:
                heapq.heappop(active)
            count += len(active)
            heapq.heappush(active, end)
    return count


def inversions(grants: list[tuple[str, float, float, float, int, str]]) -> int:
    """Grants whose ACQUIREs were sent after another grant of the key had come back, yet
    whose token is not above that grant's."""
    count = 0
    for key in {g[0] for g in grants}:
        mine = [g for g in grants if g[0] == key]
        by_return = sorted(mine, key=lambda g: g[2])
        highest, i = 0, 0
        for grant in sorted(mine, key=lambda g: g[1]):
            while i < len(by_return) and by_return[i][2] < grant[1]:
                highest = max(highest, by_return[i][4])
                i += 1
            if grant[4] <= highest:
                count += 1
    return count


def check_log(entries: list[bytes]) -> tuple[int, int]:
    """(violations, stale writes accepted) in one key's accepted log: a token below the one
    before, or equal to it from another holder; a holder's write accepted after another
    holder had written since its own last one."""
    violations = stale = 0
    previous: tuple[int, str] | None = None
    finished: set[str] = set()
    for entry in entries:
        text, holder = entry.decode().split(" ", 1)
        token = int(text)
        if previous is not None:
            if token < previous[0] or (token == previous[0] and holder != previous[1]):
                violations += 1
            if holder != previous[1]:
                finished.add(previous[1])
        if holder in finished:
            stale += 1
        previous = (token, holder)
    return violations, stale


def install_pottery() -> str | None:
    """pottery and mmh3 in a temporary directory (not into the environment); None when pip
    cannot install them."""
    target = tempfile.mkdtemp(prefix="dlock-pottery-")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target,
         "pottery", "mmh3", "typing_extensions"], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"Redlock contrast skipped: pip could not install pottery: "
              f"{done.stderr.strip()[-300:]}", file=sys.stderr)
        shutil.rmtree(target, ignore_errors=True)
        return None
    return target


def run(
    seconds: float, clients: int, keys: int, ttl: float, mode: str, seed: int,
) -> dict[str, Any] | None:
    pottery_path = None
    if mode == "redlock":
        pottery_path = install_pottery()
        if pottery_path is None:
            return None
    servers = [Server(True, "--appendonly", "yes", "--appendfsync", "everysec",
                      "--auto-aof-rewrite-percentage", "0", module_args=["node-id", str(n)])
               for n in range(1, LOCK_SERVERS + 1)]
    resource_server = Server(module=False)
    resource = resource_server.client()
    names = [f"resource{i}" for i in range(keys)]
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    processes = [
        context.Process(target=client_loop, daemon=True, args=(
            n, mode, [s.port for s in servers], resource_server.port, names, ttl, stop,
            pottery_path))
        for n in range(clients)]
    faults = Faults(servers, processes, resource, names, ttl, seed)
    started = time.monotonic()
    try:
        for process in processes:
            process.start()
        faults.thread.start()
        time.sleep(seconds)
        faults.stop.set()
        faults.thread.join()
        stop.set()
        for process in processes:
            process.join(30)
        for process in processes:
            if process.is_alive():
                process.kill()
        return report(resource, names, faults, mode, clients, time.monotonic() - started)
    finally:
        faults.stop.set()
        if faults.thread.is_alive():
            faults.thread.join()
        for process in processes:
            if process.is_alive():
                process.kill()
        for server in [*servers, resource_server]:
            server.stop()
        if pottery_path is not None:
            shutil.rmtree(pottery_path, ignore_errors=True)


def report(
    resource: redis.Redis, names: list[str], faults: Faults, mode: str, clients: int,
    took: float,
) -> dict[str, Any]:
    stats = {k.decode(): int(v) for k, v in resource.hgetall("stats").items()}
    grants = []
    for line in resource.lrange("grants", 0, -1):
        key, sent, returned, end, token, holder = line.decode().split(" ")
        grants.append((key, float(sent), float(returned), float(end), int(token), holder))
    violations = stale = 0
    for name in names:
        v, s = check_log(resource.lrange(resource_keys(name)[1], 0, -1))
        violations += v + resource.llen(resource_keys(name)[2])
        stale += s
    figures = {
        "mode": mode, "seconds": round(took), "clients": clients,
        "clients_done": stats.get("clients_done", 0), "grants": stats.get("grants", 0),
        "accepted": stats.get("accepted", 0), "refused_stale": stats.get("refused_stale", 0),
        "attempts_failed": stats.get("attempts_failed", 0), "lost": stats.get("lost", 0),
        "errors": stats.get("errors", 0), "faults": sum(faults.counts.values()),
        "overlaps": overlaps(grants), "stale_accepted": stale,
        "inversions": inversions(grants) if mode == "quorum" else None,
        "violations": violations if mode == "quorum" else None,
    }
    if mode == "quorum":
        print(f"quorum checker: {LOCK_SERVERS} servers, {clients} clients "
              f"({figures['clients_done']} finished), {len(names)} keys, {figures['seconds']} s: "
              f"grants {figures['grants']}, writes accepted {figures['accepted']}, refused as "
              f"stale {figures['refused_stale']}, leases lost {figures['lost']}, attempts "
              f"that failed {figures['attempts_failed']}, errors {figures['errors']}; "
              f"{faults.summary()}; overlapping holds {figures['overlaps']}, stale writes "
              f"accepted {stale}, order inversions {figures['inversions']}, "
              f"violations {violations}")
    else:
        print(f"redlock contrast (pottery): {LOCK_SERVERS} servers, {clients} clients, "
              f"{len(names)} keys, {figures['seconds']} s: grants {figures['grants']}, writes "
              f"accepted {figures['accepted']} (equality only: none can be refused), errors "
              f"{figures['errors']}; {faults.summary()}; overlapping holds "
              f"{figures['overlaps']}, stale writes accepted {stale}")
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("QUORUM_SECONDS", 30)))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--ttl", type=float, default=0.5, help="lease, seconds")
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 32))
    parser.add_argument("--redlock", action="store_true",
                        help="run the workload through pottery's Redlock instead")
    args = parser.parse_args(argv)
    print(f"seed {args.seed}", file=sys.stderr)
    return run(args.seconds, args.clients, args.keys, args.ttl,
               "redlock" if args.redlock else "quorum", args.seed)


if __name__ == "__main__":
    main()
