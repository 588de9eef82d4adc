"""The asyncio client on `redis.asyncio.Redis` against a real server with the module."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import unittest
from typing import Any, Awaitable, Callable

import redis

from redis_dlock.asyncio import (
    Lock, LockLost, ModuleNotLoaded, NotAcquired, NotHeld, ReadWriteLock, Semaphore,
)

from .server import Monitor, Server
from .test_sync import report_margin


async def info(r: Any, key: str) -> dict[str, Any] | None:
    reply = await r.execute_command("DLOCK.INFO", key)
    if reply is None:
        return None
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2]))
    return {k.decode(): v.decode() if isinstance(v, bytes) else v for k, v in reply.items()}


async def until(what: str, condition: Callable[[], Awaitable[Any]], limit: float = 10.0) -> Any:
    """Poll `condition` every few milliseconds, without blocking the loop, until truthy."""
    deadline = time.monotonic() + limit
    while not (value := await condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
    return value


async def lost_within(lease: Any, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await lease.lost.wait()
        return True
    except TimeoutError:
        return False


class AsyncioTest(unittest.IsolatedAsyncioTestCase):
    server: Server

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = Server()
        cls.addClassCleanup(cls.server.stop)

    async def asyncSetUp(self) -> None:
        # IsolatedAsyncioTestCase runs the loop in debug mode, several times slower.
        asyncio.get_running_loop().set_debug(False)
        self.r = self.server.async_client()
        self.key = "async:" + self.id().rsplit(".", 1)[-1]
        self.tasks = len(asyncio.all_tasks())

        async def alone() -> bool:
            return await self.connections() == 1

        # Earlier tests' connections close asynchronously: start from this one alone.
        await until("earlier connections to close", alone)

    async def asyncTearDown(self) -> None:
        await self.r.aclose()

    async def ids(self, name: str) -> list[str]:
        return [c["id"] for c in await self.r.client_list() if c["name"] == name]

    async def connections(self) -> int:
        return len(await self.r.client_list())

    async def extends(self) -> int:
        stats = await self.r.info("commandstats")
        return stats.get("cmdstat_dlock.extend", {}).get("calls", 0)

    async def assert_no_leftovers(self, connections: int) -> None:
        async def settled() -> bool:
            tasks = len(asyncio.all_tasks())
            return tasks == self.tasks and await self.connections() == connections

        await until("the keepalive task and the extra connections to go", settled)

    async def test_acquire_gives_token_owner_and_deadline_then_release_frees(self) -> None:
        lease = await Lock(self.r, self.key, 10).acquire()
        self.assertRegex(lease.owner, r"^[0-9a-f]{32}$")
        state = await info(self.r, self.key)
        self.assertEqual((state["owner"], state["token"]), (lease.owner, lease.token))
        self.assertGreater(lease.remaining(), 9.5)
        self.assertTrue(lease.valid())
        self.assertTrue(await lease.release())
        self.assertFalse(await lease.release())
        self.assertIsNone(await info(self.r, self.key))
        with self.assertRaises(NotHeld):
            lease.check()

    async def test_keepalive_rule_follows_the_ttl(self) -> None:
        async with Lock(self.r, self.key) as kept:
            self.assertTrue(kept.keepalive)
            self.assertGreater(await self.r.pttl(self.key), 29_000)
        async with Lock(self.r, self.key, 2).acquire() as fixed:
            self.assertFalse(fixed.keepalive)
            self.assertLessEqual(await self.r.pttl(self.key), 2_000)

    async def test_a_dropped_lease_is_no_longer_kept_alive(self) -> None:
        await Lock(self.r, self.key, 0.2, keepalive=True).acquire()
        await self.assert_no_leftovers(1)
        await until("the hold to end at its ttl", self.freed)

    async def freed(self) -> bool:
        return await info(self.r, self.key) is None

    async def test_try_acquire_and_a_wait_that_ends_without_grant(self) -> None:
        holder = await Lock(self.r, self.key, 10).acquire()
        lock = Lock(self.r, self.key, 10)
        self.assertIsNone(await lock.try_acquire())
        started = time.monotonic()
        with self.assertRaises(NotAcquired):
            await lock.acquire(wait=0.2)
        self.assertGreaterEqual(time.monotonic() - started, 0.2)
        await holder.release()
        lease = await lock.try_acquire()
        self.assertIsNotNone(lease)
        await lease.release()

    async def test_a_wait_longer_than_the_socket_timeout_is_served(self) -> None:
        r = self.server.async_client(socket_timeout=0.2)
        for wait in (2.0, None):
            holder = await Lock(r, self.key, 10).acquire()
            asyncio.get_running_loop().call_later(
                0.5, lambda h=holder: asyncio.ensure_future(h.release()))
            lease = await Lock(r, self.key, 10).acquire(wait=wait)
            self.assertGreater(lease.remaining(), 9.8)
            self.assertTrue(await lease.release())
        await r.aclose()

    async def test_module_not_loaded_says_how_to_load_it(self) -> None:
        bare = Server(module=False)
        self.addCleanup(bare.stop)
        client = bare.async_client()
        with self.assertRaises(ModuleNotLoaded) as caught:
            await Lock(client, self.key).acquire()
        self.assertIn("MODULE LOAD /path/to/libdlock.so", str(caught.exception))
        await client.aclose()

    async def test_a_release_whose_reply_is_lost_is_not_sent_again(self) -> None:
        # redis-py sends a command again when its reply does not come; a RELEASE run twice
        # would end the other lease of this re-entrant owner as well.
        frozen = Server()
        self.addCleanup(frozen.stop)
        r = frozen.async_client(socket_timeout=0.2)
        self.addAsyncCleanup(r.aclose)
        lock = Lock(r, self.key, 30, owner="worker-1")
        first, second = await lock.acquire(), await lock.acquire()
        frozen.freeze()
        # Thawed while redis-py would still be retrying, well after the read timed out.
        thaw = threading.Timer(1.0, frozen.thaw)
        thaw.start()
        self.addCleanup(thaw.join)
        with self.assertRaises(redis.TimeoutError):
            await first.release()
        probe = frozen.client()
        self.addCleanup(probe.close)

        async def released_once() -> bool:
            stats = probe.info("commandstats")
            return stats.get("cmdstat_dlock.release", {}).get("calls", 0) == 1
        await until("the RELEASE sent to run", released_once)
        self.assertEqual((await info(r, self.key) or {}).get("holds"), 1)
        self.assertTrue(second.valid())
        self.assertTrue(await second.release())
        self.assertIsNone(await info(r, self.key))

    async def test_keepalive_holds_a_100ms_lease_for_5s(self) -> None:
        extends = await self.extends()
        async with Lock(self.r, self.key, 0.1, keepalive=True) as lease:
            self.assertFalse(await lost_within(lease, 5))
            self.assertTrue(lease.valid())
            self.assertEqual((await info(self.r, self.key))["token"], lease.token)
            self.assertIsNone(await Lock(self.r, self.key, 1).try_acquire())
        done = await self.extends() - extends
        print(f"\nasyncio keepalive: {done} extends in 5 s at ttl 100 ms", end=" ",
              file=sys.stderr)
        self.assertGreaterEqual(done, 100)

    async def test_client_pause_past_the_deadline_signals_lost_in_time(self) -> None:
        lost_at: list[float] = []
        async with Lock(self.r, self.key, 0.5, keepalive=True) as lease:
            lease.on_lost(lambda _: lost_at.append(time.monotonic()))
            await self.r.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            self.assertTrue(await lost_within(lease, 2))
            report_margin("asyncio CLIENT PAUSE ALL", lease, lost_at[0])
            self.assertFalse(lease.valid())
            with self.assertRaises(LockLost):
                await lease.guard("SET", "x", "1")
        self.assertEqual(len(lost_at), 1)

    async def test_sigstop_past_the_deadline_signals_lost_in_time(self) -> None:
        lost_at: list[float] = []
        lease = await Lock(self.r, self.key, 0.5, keepalive=True).acquire()
        lease.on_lost(lambda _: lost_at.append(time.monotonic()))
        await until("a first extend", lambda: self.ids("dlock-keepalive"))
        self.server.freeze()
        try:
            self.assertTrue(await lost_within(lease, 2))
            report_margin("asyncio SIGSTOP", lease, lost_at[0])
        finally:
            self.server.thaw()
        self.assertFalse(lease.valid())
        await lease.release()
        self.assertIsNone(await info(self.r, self.key))

    async def test_client_kill_of_the_keepalive_connection_reconnects_and_extends(self) -> None:
        async with Lock(self.r, self.key, 0.3, keepalive=True) as lease:
            (first,) = await until("the keepalive connection", lambda: self.ids("dlock-keepalive"))
            await self.r.execute_command("CLIENT", "KILL", "ID", first)

            async def replaced() -> list[str]:
                return [i for i in await self.ids("dlock-keepalive") if i != first]

            await until("a new keepalive connection", replaced)
            extends = await self.extends()

            async def extended() -> bool:
                return await self.extends() >= extends + 3

            await until("extends on it", extended)
            self.assertFalse(lease.lost.is_set())
            self.assertEqual((await info(self.r, self.key))["owner"], lease.owner)

    async def test_takeover_after_del_is_lost_on_the_next_extend(self) -> None:
        lease = await Lock(self.r, self.key, 0.3, keepalive=True).acquire()
        await self.r.delete(self.key)
        other = await Lock(self.r, self.key, 10, owner="other").acquire()
        self.assertTrue(await lost_within(lease, 0.3))
        self.assertGreater(lease.remaining(), 0)
        with self.assertRaises(LockLost):
            await lease.extend()
        self.assertFalse(await lease.release())
        self.assertEqual((await info(self.r, self.key))["owner"], "other")
        await other.release()

    async def test_an_exception_in_the_with_body_releases(self) -> None:
        connections = await self.connections()
        lock = Lock(self.r, self.key)
        with self.assertRaises(ZeroDivisionError):
            async with lock as lease:
                1 / 0
        self.assertTrue(lease.released)
        self.assertIsNone(await info(self.r, self.key))
        with self.assertRaises(KeyError):
            async with lock.acquire(wait=1):
                raise KeyError("x")
        self.assertIsNone(await info(self.r, self.key))
        await self.assert_no_leftovers(connections)

    async def test_cancelling_the_task_inside_the_with_body_releases(self) -> None:
        entered = asyncio.Event()

        async def body() -> None:
            async with Lock(self.r, self.key):
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(body())
        await entered.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self.assertIsNone(await info(self.r, self.key))

    async def test_a_cancelled_wait_leaves_the_queue(self) -> None:
        holder = await Lock(self.r, self.key, 10).acquire()
        waiting = asyncio.create_task(Lock(self.r, self.key, 10).acquire())

        async def queued() -> bool:
            return (await info(self.r, self.key))["waiters"] == 1

        async def left() -> bool:
            return (await info(self.r, self.key))["waiters"] == 0

        await until("the waiter to queue", queued)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await until("the waiter to leave the queue", left)
        self.assertTrue(await holder.release())
        self.assertIsNone(await info(self.r, self.key))

    async def test_10000_sequential_leases_leave_no_task_or_connection(self) -> None:
        connections = await self.connections()
        lock = Lock(self.r, self.key)
        tokens = set()
        for _ in range(10_000):
            async with lock as lease:
                tokens.add(lease.token)
        self.assertEqual(len(tokens), 10_000)
        await self.assert_no_leftovers(connections)

    async def test_1000_held_leases_share_one_task_and_one_connection(self) -> None:
        connections = await self.connections()
        leases = [await Lock(self.r, f"{self.key}:{i}", 0.5, keepalive=True).acquire()
                  for i in range(1000)]
        self.assertEqual(len(asyncio.all_tasks()), self.tasks + 1)
        extends = await self.extends()

        async def extended() -> bool:
            return await self.extends() >= extends + 2000

        await until("every lease extended twice", extended)
        self.assertFalse(any(lease.lost.is_set() for lease in leases))
        self.assertEqual(len(await self.ids("dlock-keepalive")), 1)
        for lease in leases:
            self.assertTrue(await lease.release())
        await self.assert_no_leftovers(connections)

    async def test_tasks_sharing_one_semaphore_object_release_their_own_leases(self) -> None:
        semaphore = Semaphore(self.r, self.key, 2, 10)
        entered, leave = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with semaphore:
                entered.set()
                await leave.wait()

        task = asyncio.create_task(first())
        await entered.wait()
        async with semaphore as lease:
            leave.set()
            await task
            self.assertFalse(lease.released)
            self.assertEqual((await info(self.r, self.key))["holders_count"], 1)
        self.assertIsNone(await info(self.r, self.key))

    async def test_contenders_are_served_first_come_first_served(self) -> None:
        holder = await Lock(self.r, self.key, 10).acquire()
        order: list[int] = []

        async def contend(i: int) -> None:
            async with Lock(self.r, self.key, 10).acquire(wait=10) as lease:
                order.append(i)
                await lease.guard("RPUSH", f"{self.key}:log", i)

        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(contend(i)))

            async def queued(n: int = i + 1) -> bool:
                return (await info(self.r, self.key))["waiters"] == n

            await until(f"contender {i} to queue", queued)
        await holder.release()
        await asyncio.gather(*tasks)
        self.assertEqual(order, list(range(8)))
        self.assertEqual(await self.r.lrange(f"{self.key}:log", 0, -1),
                         [str(i).encode() for i in range(8)])

    async def test_guard_refuses_locally_after_the_deadline(self) -> None:
        lease = await Lock(self.r, self.key, 0.2).acquire()
        self.assertEqual(await lease.guard("SET", f"{self.key}:data", "v1"), b"OK")
        self.assertTrue(await lost_within(lease, 1))
        stats = await self.r.info("commandstats")
        guards = stats["cmdstat_dlock.guard"]["calls"]
        with self.assertRaises(LockLost):
            await lease.guard("SET", f"{self.key}:data", "v2")
        stats = await self.r.info("commandstats")
        self.assertEqual(stats["cmdstat_dlock.guard"]["calls"], guards)
        self.assertEqual(await self.r.get(f"{self.key}:data"), b"v1")
        await lease.release()

    async def test_guard_refused_by_the_server_marks_the_lease_lost(self) -> None:
        lease = await Lock(self.r, self.key, 10).acquire()
        await self.r.delete(self.key)
        other = await Lock(self.r, self.key, 10).acquire()
        with self.assertRaises(LockLost) as caught:
            await lease.guard("SET", f"{self.key}:data", "stale")
        self.assertEqual(str(caught.exception),
                         "fenced write refused: stale token, the lock is held with a newer one")
        self.assertTrue(lease.lost.is_set())
        await other.release()
        await lease.release()

    async def test_no_extend_after_release(self) -> None:
        monitor = Monitor(self.server)
        connections = await self.connections()
        lease = await Lock(self.r, self.key, 0.3, keepalive=True).acquire()
        extends = await self.extends()

        async def extended() -> bool:
            return await self.extends() >= extends + 5

        await until("a few extends", extended)
        self.assertTrue(await lease.release())
        await self.assert_no_leftovers(connections)
        seen = [c.split()[0] for c in monitor.commands_until_now() if "DLOCK" in c]
        released = seen.index("DLOCK.RELEASE")
        self.assertIn("DLOCK.EXTEND", seen[:released])
        self.assertEqual(seen[released + 1:], [])

    async def test_extend_moves_the_deadline_and_a_refused_extend_is_lost(self) -> None:
        lease = await Lock(self.r, self.key, 1).acquire()
        before = lease.deadline
        await lease.extend(5)
        self.assertGreater(lease.deadline, before + 3.9)
        self.assertGreater(await self.r.pttl(self.key), 4_000)
        await self.r.delete(self.key)
        with self.assertRaises(LockLost):
            await lease.extend()
        self.assertTrue(lease.lost.is_set())
        with self.assertRaises(NotHeld):
            await lease.release(strict=True)

    async def test_session_lease_is_lost_at_once_when_its_connection_goes(self) -> None:
        connections = await self.connections()
        lease = await Lock(self.r, self.key, session=True).acquire()
        self.assertEqual((await info(self.r, self.key))["session"], 1)
        (session,) = await self.ids("dlock-session")
        killed = time.monotonic()
        await self.r.execute_command("CLIENT", "KILL", "ID", session)
        self.assertTrue(await lost_within(lease, 1))
        print(f"\nasyncio session: lost {(time.monotonic() - killed) * 1000:.2f} ms after "
              "CLIENT KILL", end=" ", file=sys.stderr)
        successor = await Lock(self.r, self.key, 10).try_acquire()
        self.assertIsNotNone(successor)
        self.assertFalse(await lease.release())
        await successor.release()
        await self.assert_no_leftovers(connections)

    async def test_session_lease_release_closes_its_connection(self) -> None:
        connections = await self.connections()
        async with Lock(self.r, self.key, session=True) as lease:
            self.assertEqual(len(await self.ids("dlock-session")), 1)
        self.assertFalse(lease.lost.is_set())
        self.assertIsNone(await info(self.r, self.key))
        await self.assert_no_leftovers(connections)

    async def test_read_write_lock_and_semaphore(self) -> None:
        rw = ReadWriteLock(self.r, self.key, 10)
        first, second = await rw.read().acquire(), await rw.read().acquire()
        self.assertEqual((await info(self.r, self.key))["mode"], "shared")
        self.assertIsNone(await rw.write().try_acquire())
        await first.release()
        await second.release()
        async with rw.write():
            self.assertIsNone(await rw.read().try_acquire())
        pool = Semaphore(self.r, f"{self.key}:sem", 3, 10, permits=2)
        held = await pool.acquire()
        self.assertIsNone(await pool.try_acquire())
        with self.assertRaises(redis.ResponseError) as caught:
            await Lock(self.r, f"{self.key}:sem", 10).acquire()
        self.assertEqual(str(caught.exception), "WRONGTYPE the key holds a semaphore, not a lock")
        await held.release()


if __name__ == "__main__":
    unittest.main()
