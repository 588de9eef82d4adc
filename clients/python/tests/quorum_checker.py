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
  times in four a current holder) past its lease; with FAKETIME_SERVER (below), a step of
  one server's wall clock, 50-500 ms forward or back, for 1.2-3 x the ttl, then back.
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

The clock fault needs libfaketime (Debian's `faketime` package) and FAKETIME_SERVER naming a
redis-server built with `MALLOC=libc` (libfaketime hangs jemalloc builds at startup, Debian's
among them): the five lock servers are then that binary, each with libfaketime preloaded and
reading its offset from a file of its own every second, so a running server's clock can be
stepped (the fault waits until the server's TIME shows each step). A crashed server then
stays down longer than the largest offset: that is the condition under which tokens stay
ordered after a crash that lost writes (README, "Assumptions, and what happens when they
fail"). Without them the summary says why the fault was skipped.

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
from glob import glob
from pathlib import Path
from typing import Any

import redis

from redis_dlock._core import drift, to_ms

from .server import Server

LOCK_SERVERS = 5

MAX_OFFSET_MS = 500
"""The largest clock step of the clock fault."""

LIBFAKETIME = ["/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
               "/usr/local/lib/faketime/libfaketime.so.1"]
"""Where Debian and libfaketime's own `make install` put the library."""

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


class Clocks:
    """The lock servers' wall clocks under libfaketime: one file per server holding its
    offset (`+0.250` seconds), which libfaketime reads again after a second
    (FAKETIME_CACHE_DURATION: reading it at every clock call would make the servers several
    times slower); the monotonic clock stays real, as an NTP step leaves it."""

    def __init__(self, binary: str, library: str, count: int) -> None:
        self.binary = binary
        self.library = library
        self.dir = Path(tempfile.mkdtemp(prefix="dlock-clocks-"))
        self.files = [self.dir / f"clock{n}" for n in range(count)]
        for n in range(count):
            self.set(n, 0)

    @staticmethod
    def setup(count: int) -> tuple[Clocks | None, str]:
        """The clocks when FAKETIME_SERVER and libfaketime allow them, else why not."""
        binary = os.environ.get("FAKETIME_SERVER")
        if not binary:
            return None, "FAKETIME_SERVER is not set"
        library = next((hit for pattern in LIBFAKETIME for hit in sorted(glob(pattern))), None)
        if library is None:
            return None, "libfaketime is not installed (apt-get install faketime)"
        try:
            version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                     timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired) as error:
            return None, f"FAKETIME_SERVER {binary} does not run: {error}"
        if "malloc=libc" not in version:
            return None, f"FAKETIME_SERVER {binary} is not built with MALLOC=libc"
        return Clocks(binary, library, count), ""

    def env(self, n: int) -> dict[str, str]:
        return {"LD_PRELOAD": self.library, "FAKETIME_TIMESTAMP_FILE": str(self.files[n]),
                "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def set(self, n: int, offset_ms: int) -> None:
        """Step server `n`'s clock to `offset_ms` from the real time (a whole file at once:
        a server never reads half of one)."""
        staged = self.files[n].with_suffix(".new")
        staged.write_text(f"{offset_ms / 1000:+.3f}\n")
        os.replace(staged, self.files[n])

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Faults:
    """The fault thread: one fault at a time, at random, until stopped; counts them."""

    def __init__(
        self, servers: list[Server], clients: list[multiprocessing.process.BaseProcess],
        resource: redis.Redis, keys: list[str], ttl: float, seed: int,
        clocks: Clocks | None, clocks_skipped: str,
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
        self.clocks = clocks
        self.clocks_skipped = clocks_skipped
        self.offsets: list[int] = []
        self.step_seen_s = 0.0
        self.steps_unseen = 0
        # With clock steps, a crashed server stays down longer than the largest of them.
        self.min_outage = (MAX_OFFSET_MS + 50) / 1000 if clocks else 0.0

    def run(self) -> None:
        kinds = ["crash", "server_stop", "client_stop"]
        if self.clocks:
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
        time.sleep(self.min_outage)
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
        """Step one running server's wall clock 50-500 ms forward or back, leave it there for
        1.2-3 x the ttl, then step it back to the right time."""
        assert self.clocks is not None
        n = self.rng.randrange(len(self.servers))
        offset = self.rng.choice([-1, 1]) * self.rng.randint(50, MAX_OFFSET_MS)
        self.offsets.append(offset)
        self.clocks.set(n, offset)
        try:
            self.until_seen(n, offset)
            self.stop.wait(self.pause())
        finally:
            self.clocks.set(n, 0)
            self.until_seen(n, 0)

    def until_seen(self, n: int, offset_ms: int) -> None:
        """Wait until server `n`'s TIME shows the step (libfaketime reads its file again
        within about 1.5 s), up to 3 s: the slowest in `step_seen_s`, the steps never seen in
        `steps_unseen`."""
        asked = time.monotonic()
        try:
            with self.servers[n].client(socket_timeout=1) as probe:
                while time.monotonic() < asked + 3:
                    before = time.time()
                    seconds, micros = probe.time()
                    after = time.time()
                    seen_ms = (seconds + micros / 1e6 - (before + after) / 2) * 1000
                    if abs(seen_ms - offset_ms) <= 5 + (after - before) * 500:
                        self.step_seen_s = max(self.step_seen_s, time.monotonic() - asked)
                        return
                    time.sleep(0.02)
        except redis.RedisError:
            pass
        self.steps_unseen += 1

    def summary(self) -> str:
        ahead = sum(1 for offset in self.offsets if offset > 0)
        clock = (f"clock offset {self.counts['clock_offset']} ({ahead} ahead, "
                 f"{len(self.offsets) - ahead} behind, 50-{MAX_OFFSET_MS} ms; TIME showed "
                 f"each step within {self.step_seen_s:.2f} s, {self.steps_unseen} not seen)"
                 if self.clocks
                 else f"clock offset skipped: {self.clocks_skipped}")
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
    clocks, clocks_skipped = Clocks.setup(LOCK_SERVERS)
    servers = [Server(True, "--appendonly", "yes", "--appendfsync", "everysec",
                      "--auto-aof-rewrite-percentage", "0", module_args=["node-id", str(n)],
                      binary=clocks.binary if clocks else None,
                      env=clocks.env(n - 1) if clocks else None)
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
    faults = Faults(servers, processes, resource, names, ttl, seed, clocks, clocks_skipped)
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
        if clocks is not None:
            clocks.remove()
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
