"""Quorum locks (sync and asyncio) against three real servers with the module, node ids 1-3."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import unittest
from typing import Any

import redis

import redis_dlock.asyncio as aio
from redis_dlock import LockLost, DuplicateNodeId, NotAcquired, NotHeld, QuorumLock
from redis_dlock._core import drift

from .server import Server, wait_until
from .test_asyncio import info as async_info
from .test_asyncio import lost_within, until
from .test_sync import info, report_margin

NODE_IDS = (1, 2, 3)


def fences(r: redis.Redis) -> int:
    return int(r.info("dlock")["dlock_fences"])


class QuorumServers:
    """Three independent servers, node ids 1-3, shared by a test class; a test that stops or
    freezes one has it back (restarted empty, or thawed) before the next test."""

    servers: list[Server]

    @classmethod
    def setUpClass(cls) -> None:
        cls.servers = [Server(True, module_args=["node-id", str(n)]) for n in NODE_IDS]
        for server in cls.servers:
            cls.addClassCleanup(server.stop)

    def setUp(self) -> None:
        self.key = self.id().rsplit(".", 1)[-1]
        self.rs = [server.client() for server in self.servers]

    def tearDown(self) -> None:
        for server in self.servers:
            if server.process.poll() is not None:
                server.restart()
            else:
                server.thaw()
        for r in self.rs:
            r.delete(self.key)
            r.close()

    def released_everywhere(self, servers: list[int] | None = None) -> None:
        """A quorum release returns once the answers settle it: the last servers' RELEASE
        lands moments later. Wait until the key is free on `servers` (default: all)."""
        rs = self.rs if servers is None else [self.rs[i] for i in servers]
        wait_until("every server's RELEASE",
                   lambda: all(info(r, self.key) is None for r in rs))

    def raise_clock(self, server: int, lead_ms: int) -> int:
        """Push one server's token clock `lead_ms` ahead of the wall clock (with FENCE on a
        key of its own); the token it was raised to."""
        r = self.rs[server]
        token = r.execute_command("DLOCK.ACQUIRE", "clock", "raiser", 1000)
        raised = token + lead_ms * 8192
        self.assertEqual(r.execute_command("DLOCK.FENCE", "clock", "raiser", raised), raised)
        r.execute_command("DLOCK.RELEASE", "clock", "raiser")
        return raised


class SyncQuorumTest(QuorumServers, unittest.TestCase):

    def test_a_majority_grants_and_every_server_is_fenced_to_the_highest_token(self) -> None:
        raised = self.raise_clock(2, 2000)
        before = [fences(r) for r in self.rs]
        sent = time.monotonic()
        lease = QuorumLock(self.rs, self.key, 10).acquire()
        returned = time.monotonic()
        self.assertGreater(lease.token, raised)
        self.assertEqual(lease.token & 0xF, NODE_IDS[2], "T is the highest token: server 3's")
        self.assertRegex(lease.owner, r"^[0-9a-f]{32}$")
        self.assertGreaterEqual(lease.deadline, sent + 10 - drift(10_000))
        self.assertLessEqual(lease.deadline, returned + 10 - drift(10_000))
        self.assertTrue(lease.valid())
        for r, fenced in zip(self.rs, before):
            state = wait_until("the hold fenced to T", lambda: (s := info(r, self.key))
                               and s["token"] == lease.token and s)
            self.assertEqual(state["owner"], lease.owner)
            self.assertEqual(fences(r), fenced + 1)
        self.assertFalse(hasattr(lease, "guard"))
        self.assertTrue(lease.release())
        self.released_everywhere()
        # The fenced clocks issue tokens above T from now on, on every server.
        for r in self.rs:
            self.assertGreater(r.execute_command("DLOCK.ACQUIRE", "after", "x", 1000),
                               lease.token)

    def test_a_later_holder_gets_a_higher_token(self) -> None:
        lock = QuorumLock(self.rs, self.key, 10)
        tokens = []
        for _ in range(20):
            with lock as lease:
                tokens.append(lease.token)
        self.assertEqual(tokens, sorted(set(tokens)))

    def test_a_minority_down_still_acquires(self) -> None:
        self.servers[0].kill()
        with QuorumLock(self.rs, self.key, 10).acquire(wait=2) as lease:
            for r in self.rs[1:]:
                self.assertEqual(info(r, self.key)["token"], lease.token)
            self.assertTrue(lease.release())

    def test_a_minority_answering_errors_does_not_stop_the_lock(self) -> None:
        self.rs[0].config_set("maxmemory", 1)
        try:
            with self.assertLogs("redis_dlock", "WARNING") as logged:
                lease = QuorumLock(self.rs, self.key, 10).acquire(wait=1)
            self.assertIn("server 0 refused (OutOfMemoryError: command not allowed when "
                          "used memory > 'maxmemory'.); a majority granted", logged.output[0])
            self.assertIsNone(info(self.rs[0], self.key))
            for r in self.rs[1:]:
                self.assertEqual(info(r, self.key)["token"], lease.token)
            self.assertTrue(lease.release())
            # An attempt the lock is not won by raises the error that stood in its way.
            self.rs[1].execute_command("DLOCK.ACQUIRE", self.key, "other", 10_000)
            with self.assertRaises(redis.exceptions.OutOfMemoryError):
                QuorumLock(self.rs, self.key, 10).acquire(wait=1)
            self.assertIsNone(info(self.rs[2], self.key), "the attempt was released")
        finally:
            self.rs[0].config_set("maxmemory", 0)

    @unittest.skipUnless(hasattr(os, "fork"), "needs os.fork")
    def test_a_child_forked_after_quorum_locks_acquires_at_once(self) -> None:
        lock = QuorumLock(self.rs, self.key, 2)
        for _ in range(5):
            with lock.acquire(wait=2):
                pass
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                started = time.monotonic()
                with QuorumLock(self.rs, f"{self.key}:child", 2).acquire(wait=1):
                    code = 0 if time.monotonic() - started < 0.5 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, "the child's acquire stalled")

    def test_a_frozen_minority_costs_little(self) -> None:
        self.servers[0].freeze()
        started = time.monotonic()
        lease = QuorumLock(self.rs, self.key, 2).acquire(wait=1)
        took = time.monotonic() - started
        print(f"\nquorum acquire with one of 3 servers frozen: {took * 1000:.1f} ms", end=" ",
              file=sys.stderr)
        self.assertLess(took, 0.5)
        self.assertTrue(lease.release())

    def test_a_majority_down_is_not_acquired(self) -> None:
        self.servers[0].kill()
        self.servers[1].kill()
        lock = QuorumLock(self.rs, self.key, 10)
        self.assertIsNone(lock.try_acquire())
        started = time.monotonic()
        with self.assertRaises(NotAcquired):
            lock.acquire(wait=0.3)
        self.assertGreaterEqual(time.monotonic() - started, 0.3)
        self.assertIsNone(info(self.rs[2], self.key), "the failed attempts were released")

    def test_a_competing_holder_on_two_of_three_keeps_it_and_nothing_is_left_held(self) -> None:
        for r in self.rs[:2]:
            r.execute_command("DLOCK.ACQUIRE", self.key, "other", 10_000)
        lock = QuorumLock(self.rs, self.key, 10)
        self.assertIsNone(lock.try_acquire())
        with self.assertRaises(NotAcquired):
            lock.acquire(wait=0.3)
        for r in self.rs[:2]:
            self.assertEqual(info(r, self.key)["owner"], "other")
        self.assertIsNone(info(self.rs[2], self.key))

    def test_extend_and_release_go_to_every_server(self) -> None:
        lease = QuorumLock(self.rs, self.key, 5).acquire()
        self.assertFalse(lease.keepalive)
        sent = time.monotonic()
        lease.extend(20)
        self.assertAlmostEqual(lease.deadline, sent + 20 - drift(20_000), delta=0.05)
        for r in self.rs:
            self.assertGreater(r.pttl(self.key), 19_000)
        self.assertTrue(lease.release())
        self.assertFalse(lease.release())
        self.released_everywhere()
        with self.assertRaises(NotHeld):
            lease.check()

    def test_release_with_a_minority_gone_reports_a_majority(self) -> None:
        lease = QuorumLock(self.rs, self.key, 5).acquire()
        self.rs[0].delete(self.key)
        self.assertTrue(lease.release(strict=True))
        lease = QuorumLock(self.rs, self.key, 5).acquire()
        for r in self.rs[:2]:
            r.delete(self.key)
        with self.assertRaises(NotHeld):
            lease.release(strict=True)

    def test_keepalive_holds_a_100ms_quorum_lease_for_2s(self) -> None:
        with QuorumLock(self.rs, self.key, 0.1, keepalive=True) as lease:
            self.assertFalse(lease.lost.wait(2))
            self.assertTrue(lease.valid())
            self.assertIsNone(QuorumLock(self.rs, self.key, 1).try_acquire())
            for r in self.rs:
                self.assertEqual(info(r, self.key)["token"], lease.token)

    def test_lost_when_a_majority_refuses_extend(self) -> None:
        lost_at: list[float] = []
        lease = QuorumLock(self.rs, self.key, 0.6, keepalive=True).acquire()
        lease.on_lost(lambda _: lost_at.append(time.monotonic()))
        self.rs[0].delete(self.key)
        time.sleep(0.3)
        self.assertTrue(lease.valid(), "a minority refusing is not enough")
        self.rs[1].delete(self.key)
        self.assertTrue(lease.lost.wait(1))
        self.assertLess(lost_at[0], lease.deadline)
        with self.assertRaises(LockLost):
            lease.check()
        with self.assertRaises(LockLost):
            lease.extend()
        lease.release()
        self.released_everywhere([2])

    def test_a_refused_explicit_extend_is_lost(self) -> None:
        lease = QuorumLock(self.rs, self.key, 5).acquire()
        for r in self.rs[1:]:
            r.delete(self.key)
        with self.assertRaises(LockLost):
            lease.extend()
        self.assertTrue(lease.lost.is_set())
        self.assertFalse(lease.release())

    def test_a_frozen_majority_signals_lost_in_time(self) -> None:
        lost_at: list[float] = []
        lease = QuorumLock(self.rs, self.key, 0.5, keepalive=True).acquire()
        lease.on_lost(lambda _: lost_at.append(time.monotonic()))
        time.sleep(0.2)
        self.servers[0].freeze()
        self.servers[1].freeze()
        self.assertTrue(lease.lost.wait(2))
        report_margin("quorum, 2 of 3 servers SIGSTOPped", lease, lost_at[0])
        self.assertFalse(lease.valid())

    def test_an_exception_in_the_with_body_releases(self) -> None:
        with self.assertRaises(KeyError):
            with QuorumLock(self.rs, self.key, 5):
                raise KeyError("boom")
        self.released_everywhere()

    def test_duplicate_node_ids_are_refused(self) -> None:
        self.rs[1].config_set("dlock.node-id", NODE_IDS[0])
        try:
            fresh = [server.client() for server in self.servers]
            with self.assertRaises(DuplicateNodeId) as caught:
                QuorumLock(fresh, self.key, 5).acquire()
            self.assertIn("dlock.node-id 1", str(caught.exception))
            self.released_everywhere()
        finally:
            self.rs[1].config_set("dlock.node-id", NODE_IDS[1])

    def test_a_node_id_changed_after_the_check_is_caught_by_the_tokens(self) -> None:
        lock = QuorumLock(self.rs, self.key, 5)
        lock.acquire().release()
        self.rs[1].config_set("dlock.node-id", NODE_IDS[0])
        try:
            with self.assertRaises(DuplicateNodeId):
                lock.acquire()
            self.released_everywhere()
        finally:
            self.rs[1].config_set("dlock.node-id", NODE_IDS[1])

    def test_threads_contending_take_turns_with_rising_tokens(self) -> None:
        lock = QuorumLock(self.rs, self.key, 2)
        holders: list[int] = []
        tokens: list[int] = []
        inside = threading.Lock()

        def work() -> None:
            for _ in range(5):
                with lock.acquire(wait=10) as lease:
                    self.assertTrue(inside.acquire(blocking=False), "two holders at once")
                    holders.append(threading.get_ident())
                    tokens.append(lease.token)
                    time.sleep(0.002)
                    inside.release()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(len(tokens), 20)
        self.assertEqual(tokens, sorted(set(tokens)))


class AsyncQuorumTest(QuorumServers, unittest.IsolatedAsyncioTestCase):

    async def asyncSetUp(self) -> None:
        asyncio.get_running_loop().set_debug(False)
        self.ars = [server.async_client() for server in self.servers]

    async def asyncTearDown(self) -> None:
        for r in self.ars:
            await r.aclose()

    async def test_a_majority_grants_and_every_server_is_fenced_to_the_highest_token(
        self,
    ) -> None:
        raised = self.raise_clock(1, 2000)
        async with aio.QuorumLock(self.ars, self.key, 10).acquire() as lease:
            self.assertGreater(lease.token, raised)
            self.assertEqual(lease.token & 0xF, NODE_IDS[1])
            for r in self.ars:
                await until("the hold fenced to T",
                            lambda: self._token_is(r, lease.token))
        await until("every server's RELEASE", self._released_everywhere)

    async def _released_everywhere(self) -> bool:
        return all([await async_info(r, self.key) is None for r in self.ars])

    async def _token_is(self, r: Any, token: int) -> bool:
        state = await async_info(r, self.key)
        return state is not None and state["token"] == token

    async def test_a_minority_down_still_acquires(self) -> None:
        self.servers[2].kill()
        lease = await aio.QuorumLock(self.ars, self.key, 10).acquire(wait=2)
        for r in self.ars[:2]:
            self.assertEqual((await async_info(r, self.key))["token"], lease.token)
        self.assertTrue(await lease.release())

    async def test_a_minority_answering_errors_does_not_stop_the_lock(self) -> None:
        self.rs[2].config_set("maxmemory", 1)
        try:
            with self.assertLogs("redis_dlock", "WARNING") as logged:
                lease = await aio.QuorumLock(self.ars, self.key, 10).acquire(wait=1)
            self.assertIn("server 2 refused (OutOfMemoryError: ", logged.output[0])
            self.assertIsNone(await async_info(self.ars[2], self.key))
            self.assertTrue(await lease.release())
            self.rs[1].execute_command("DLOCK.ACQUIRE", self.key, "other", 10_000)
            with self.assertRaises(redis.exceptions.OutOfMemoryError):
                await aio.QuorumLock(self.ars, self.key, 10).acquire(wait=1)
            self.assertIsNone(await async_info(self.ars[0], self.key))
        finally:
            self.rs[2].config_set("maxmemory", 0)

    async def test_a_majority_down_is_not_acquired(self) -> None:
        self.servers[0].kill()
        self.servers[2].kill()
        lock = aio.QuorumLock(self.ars, self.key, 10)
        self.assertIsNone(await lock.try_acquire())
        with self.assertRaises(aio.NotAcquired):
            await lock.acquire(wait=0.3)
        self.assertIsNone(await async_info(self.ars[1], self.key))

    async def test_a_competing_holder_on_two_of_three_keeps_it(self) -> None:
        for r in self.ars[1:]:
            await r.execute_command("DLOCK.ACQUIRE", self.key, "other", 10_000)
        lock = aio.QuorumLock(self.ars, self.key, 10)
        self.assertIsNone(await lock.try_acquire())
        with self.assertRaises(aio.NotAcquired):
            await lock.acquire(wait=0.3)
        self.assertIsNone(await async_info(self.ars[0], self.key))

    async def test_extend_release_and_lost_when_a_majority_refuses(self) -> None:
        lease = await aio.QuorumLock(self.ars, self.key, 5).acquire()
        await lease.extend(20)
        for r in self.ars:
            self.assertGreater(await r.pttl(self.key), 19_000)
        self.assertTrue(await lease.release())
        self.assertFalse(await lease.release())
        lease = await aio.QuorumLock(self.ars, self.key, 0.6, keepalive=True).acquire()
        for r in self.ars[:2]:
            await r.delete(self.key)
        self.assertTrue(await lost_within(lease, 1))
        with self.assertRaises(aio.LockLost):
            lease.check()
        await lease.release()

    async def test_a_frozen_majority_signals_lost_in_time(self) -> None:
        lease = await aio.QuorumLock(self.ars, self.key, 0.5, keepalive=True).acquire()
        lost_at: list[float] = []
        lease.on_lost(lambda _: lost_at.append(time.monotonic()))
        await asyncio.sleep(0.2)
        self.servers[1].freeze()
        self.servers[2].freeze()
        self.assertTrue(await lost_within(lease, 2))
        report_margin("asyncio quorum, 2 of 3 servers SIGSTOPped", lease, lost_at[0])

    async def test_duplicate_node_ids_are_refused(self) -> None:
        self.rs[2].config_set("dlock.node-id", NODE_IDS[0])
        try:
            fresh = [server.async_client() for server in self.servers]
            with self.assertRaises(DuplicateNodeId):
                await aio.QuorumLock(fresh, self.key, 5).acquire()
            for r in fresh:
                await r.aclose()
        finally:
            self.rs[2].config_set("dlock.node-id", NODE_IDS[2])


if __name__ == "__main__":
    unittest.main()
