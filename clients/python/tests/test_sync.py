"""The sync client on `redis.Redis` against a real server with the module."""

from __future__ import annotations

import os
import sys
import threading
import time
import unittest
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_dlock import (
    Lease, Lock, LockLost, ModuleNotLoaded, NotAcquired, NotHeld, ReadWriteLock, Semaphore,
)
from redis_dlock._core import KEEPALIVE_NAME, LINGER, LeaseCore, Spec, drift, plan
from redis_dlock._sync import _Scheduler

from .server import Monitor, Server, calls, client_ids, connection_count, wait_until


def info(r: redis.Redis, key: str) -> dict[str, Any] | None:
    """DLOCK.INFO as a dict of str fields (RESP2 or RESP3)."""
    reply = r.execute_command("DLOCK.INFO", key)
    if reply is None:
        return None
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2]))
    return {k.decode(): v.decode() if isinstance(v, bytes) else v for k, v in reply.items()}


def report_margin(test: str, lease: Lease, lost_at: float) -> None:
    """Print, and check, by how much the lost signal preceded the deadlines."""
    before_local = (lease.deadline - lost_at) * 1000
    before_server = before_local + drift(lease.ttl_ms) * 1000
    print(f"\n{test}: lost fired {before_local:.2f} ms before the local deadline, "
          f"{before_server:.2f} ms before the lease's end on the server", end=" ",
          file=sys.stderr)
    assert before_server > 0, f"lost fired {-before_server:.2f} ms after the server's lease end"


class SyncTest(unittest.TestCase):
    server: Server

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = Server()
        cls.addClassCleanup(cls.server.stop)

    def setUp(self) -> None:
        self.r = self.server.client()
        self.key = self.id().rsplit(".", 1)[-1]
        # An earlier test's keepalive thread lingers up to two LINGERs after its last lease:
        # count threads once it has ended.
        wait_until("earlier keepalive threads to end", lambda: not any(
            t.name == KEEPALIVE_NAME for t in threading.enumerate()))
        self.threads = threading.active_count()
        # Earlier tests' connections close asynchronously: start from this one alone.
        wait_until("earlier connections to close", lambda: connection_count(self.r) == 1)

    def tearDown(self) -> None:
        self.r.close()

    def assert_no_leftovers(self, connections: int) -> None:
        """No keepalive thread or dedicated connection is left, nor any other connection
        beyond `connections`."""
        wait_until("the keepalive thread to end", lambda: threading.active_count() == self.threads)
        wait_until("the extra connections to close",
                   lambda: connection_count(self.r) == connections)

    def test_acquire_gives_token_owner_and_deadline_then_release_frees(self) -> None:
        sent = time.monotonic()
        lease = Lock(self.r, self.key, 10).acquire()
        self.assertRegex(lease.owner, r"^[0-9a-f]{32}$")
        self.assertGreater(lease.token, 0)
        self.assertEqual(lease.key, self.key)
        state = info(self.r, self.key)
        self.assertEqual((state["owner"], state["token"]), (lease.owner, lease.token))
        self.assertLessEqual(lease.deadline, sent + 10 - 0.102 + 0.05)
        self.assertGreater(lease.remaining(), 9.5)
        self.assertTrue(lease.valid())
        self.assertIsNone(lease.check())
        self.assertTrue(lease.release())
        self.assertFalse(lease.release())
        self.assertFalse(lease.valid())
        self.assertIsNone(info(self.r, self.key))
        with self.assertRaises(NotHeld):
            lease.check()

    def test_explicit_owner_reenters_with_the_same_token(self) -> None:
        lock = Lock(self.r, self.key, 10, owner="worker-1")
        first, second = lock.acquire(), lock.acquire()
        self.assertEqual((first.owner, second.token), ("worker-1", first.token))
        self.assertEqual(info(self.r, self.key)["holds"], 2)
        self.assertTrue(second.release())
        self.assertTrue(first.release())
        self.assertIsNone(info(self.r, self.key))

    def test_keepalive_rule_follows_the_ttl(self) -> None:
        kept = Lock(self.r, self.key).acquire()
        self.assertTrue(kept.keepalive)
        self.assertGreater(self.r.pttl(self.key), 29_000)
        kept.release()
        fixed = Lock(self.r, self.key, 2).acquire()
        self.assertFalse(fixed.keepalive)
        self.assertLessEqual(self.r.pttl(self.key), 2_000)
        fixed.release()
        with Lock(self.r, self.key, 2, keepalive=True).acquire() as kept:
            self.assertTrue(kept.keepalive)

    def test_a_dropped_lease_is_no_longer_kept_alive(self) -> None:
        Lock(self.r, self.key, 0.2, keepalive=True).acquire()
        wait_until("the keepalive thread to end", lambda: threading.active_count() == self.threads)
        wait_until("the hold to end at its ttl", lambda: info(self.r, self.key) is None)

    def test_try_acquire_and_a_wait_that_ends_without_grant(self) -> None:
        holder = Lock(self.r, self.key, 10).acquire()
        lock = Lock(self.r, self.key, 10)
        self.assertIsNone(lock.try_acquire())
        started = time.monotonic()
        with self.assertRaises(NotAcquired):
            lock.acquire(wait=0.2)
        self.assertGreaterEqual(time.monotonic() - started, 0.2)
        holder.release()
        lease = lock.try_acquire()
        self.assertIsNotNone(lease)
        lease.release()

    def test_a_wait_longer_than_the_socket_timeout_is_served(self) -> None:
        r = self.server.client(socket_timeout=0.2)
        for wait in (2.0, None):
            holder = Lock(r, self.key, 10).acquire()
            threading.Timer(0.5, holder.release).start()
            lease = Lock(r, self.key, 10).acquire(wait=wait)
            # Granted after waiting: the deadline counts from a restart of the lease.
            self.assertGreater(lease.remaining(), 9.8)
            self.assertTrue(lease.release())
        r.close()

    def test_module_not_loaded_says_how_to_load_it(self) -> None:
        bare = Server(module=False)
        self.addCleanup(bare.stop)
        with self.assertRaises(ModuleNotLoaded) as caught:
            Lock(bare.client(), self.key).acquire()
        self.assertIn("MODULE LOAD /path/to/libdlock.so", str(caught.exception))

    def test_release_that_cannot_reach_the_server(self) -> None:
        gone = Server()
        self.addCleanup(gone.stop)
        r = gone.client(retry=Retry(NoBackoff(), 0))
        first = Lock(r, self.key, 10).acquire()
        second = Lock(r, f"{self.key}:2", 10).acquire()
        gone.stop()
        with self.assertLogs("redis_dlock", "WARNING") as logged:
            with first:
                pass
        self.assertIn("its lease ends on the server", logged.output[0])
        with self.assertRaises(redis.ConnectionError):
            second.release()
        self.assertTrue(first.released and second.released)
        r.close()
        wait_until("the keepalive thread to end", lambda: threading.active_count() == self.threads)

    def test_a_release_whose_reply_is_lost_is_not_sent_again(self) -> None:
        # redis-py sends a command again when its reply does not come; a RELEASE run twice
        # would end the other lease of this re-entrant owner as well.
        frozen = Server()
        self.addCleanup(frozen.stop)
        r = frozen.client(socket_timeout=0.2)
        self.addCleanup(r.close)
        lock = Lock(r, self.key, 30, owner="worker-1")
        first, second = lock.acquire(), lock.acquire()
        frozen.freeze()
        # Thawed while redis-py would still be retrying, well after the read timed out.
        thaw = threading.Timer(1.0, frozen.thaw)
        thaw.start()
        self.addCleanup(thaw.join)
        with self.assertRaises(redis.TimeoutError):
            first.release()
        probe = frozen.client()
        self.addCleanup(probe.close)
        wait_until("the RELEASE sent to run", lambda: calls(probe, "dlock.release") == 1)
        self.assertEqual(info(probe, self.key)["holds"], 1)
        self.assertTrue(second.valid())
        self.assertTrue(second.release())
        self.assertIsNone(info(probe, self.key))
        self.assertEqual(calls(probe, "dlock.release"), 2)

    def test_keepalive_holds_a_100ms_lease_for_5s(self) -> None:
        extends = calls(self.r, "dlock.extend")
        with Lock(self.r, self.key, 0.1, keepalive=True) as lease:
            self.assertFalse(lease.lost.wait(5))
            self.assertTrue(lease.valid())
            self.assertEqual(info(self.r, self.key)["token"], lease.token)
            self.assertIsNone(Lock(self.r, self.key, 1).try_acquire())
        done = calls(self.r, "dlock.extend") - extends
        print(f"\nkeepalive: {done} extends in 5 s at ttl 100 ms", end=" ", file=sys.stderr)
        self.assertGreaterEqual(done, 100)

    def test_client_pause_past_the_deadline_signals_lost_in_time(self) -> None:
        lost_at: list[float] = []
        with Lock(self.r, self.key, 0.5, keepalive=True) as lease:
            lease.on_lost(lambda _: lost_at.append(time.monotonic()))
            self.r.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            self.assertTrue(lease.lost.wait(2))
            report_margin("CLIENT PAUSE ALL", lease, lost_at[0])
            self.assertFalse(lease.valid())
            with self.assertRaises(LockLost):
                lease.check()
            with self.assertRaises(LockLost):
                lease.guard("SET", "x", "1")
        self.assertEqual(len(lost_at), 1)
        self.assertIsNone(self.r.get("x"))

    def test_sigstop_past_the_deadline_signals_lost_in_time(self) -> None:
        lost_at: list[float] = []
        lease = Lock(self.r, self.key, 0.5, keepalive=True).acquire()
        lease.on_lost(lambda _: lost_at.append(time.monotonic()))
        wait_until("a first extend", lambda: client_ids(self.r, "dlock-keepalive"))
        self.server.freeze()
        try:
            self.assertTrue(lease.lost.wait(2))
            report_margin("SIGSTOP", lease, lost_at[0])
        finally:
            self.server.thaw()
        self.assertFalse(lease.valid())
        lease.release()
        self.assertIsNone(info(self.r, self.key))

    def test_client_kill_of_the_keepalive_connection_reconnects_and_extends(self) -> None:
        with Lock(self.r, self.key, 0.3, keepalive=True) as lease:
            (first,) = wait_until("the keepalive connection",
                                  lambda: client_ids(self.r, "dlock-keepalive"))
            self.r.execute_command("CLIENT", "KILL", "ID", first)
            (second,) = wait_until(
                "a new keepalive connection",
                lambda: [i for i in client_ids(self.r, "dlock-keepalive") if i != first])
            extends = calls(self.r, "dlock.extend")
            wait_until("extends on it", lambda: calls(self.r, "dlock.extend") >= extends + 3)
            self.assertFalse(lease.lost.is_set())
            self.assertTrue(lease.valid())
            self.assertEqual(info(self.r, self.key)["owner"], lease.owner)

    def test_takeover_after_del_is_lost_on_the_next_extend(self) -> None:
        lease = Lock(self.r, self.key, 0.3, keepalive=True).acquire()
        self.r.delete(self.key)
        other = Lock(self.r, self.key, 10, owner="other").acquire()
        self.assertTrue(lease.lost.wait(0.3))
        self.assertTrue(lease.remaining() > 0, "lost by the extend's 0, not by the deadline")
        with self.assertRaises(LockLost):
            lease.check()
        with self.assertRaises(LockLost):
            lease.extend()
        self.assertFalse(lease.release())
        self.assertEqual(info(self.r, self.key)["owner"], "other")
        other.release()

    def test_an_exception_in_the_with_body_releases(self) -> None:
        lock = Lock(self.r, self.key)
        with self.assertRaises(ZeroDivisionError):
            with lock as lease:
                self.assertEqual(info(self.r, self.key)["owner"], lease.owner)
                1 / 0
        self.assertTrue(lease.released)
        self.assertIsNone(info(self.r, self.key))
        with self.assertRaises(KeyError):
            with lock.acquire(wait=1):
                raise KeyError("x")
        self.assertIsNone(info(self.r, self.key))
        self.assert_no_leftovers(1)
        self.assertEqual(client_ids(self.r, "dlock-keepalive"), [])

    def test_one_lease_after_another_keeps_one_thread_which_ends_after_the_last(self) -> None:
        lock = Lock(self.r, self.key, 10)
        lock.acquire().release()
        thread = _Scheduler.of(self.r)._thread
        assert thread is not None
        for _ in range(100):
            lock.acquire().release()
            self.assertIs(_Scheduler.of(self.r)._thread, thread)
        released = time.monotonic()
        thread.join(10)
        self.assertGreaterEqual(time.monotonic() - released, LINGER - 0.05)
        self.assert_no_leftovers(1)

    @unittest.skipUnless(hasattr(os, "fork"), "needs os.fork")
    def test_a_child_forked_while_the_keepalive_thread_lingers_keeps_its_leases(self) -> None:
        Lock(self.r, self.key, 10).acquire().release()
        self.assertIsNotNone(_Scheduler.of(self.r)._thread)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                lease = Lock(self.r, self.key, 0.3, keepalive=True).acquire()
                time.sleep(0.6)
                code = 0 if lease.valid() and lease.release() else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, "the child's lease was lost")
        self.assert_no_leftovers(1)

    def test_10000_sequential_leases_leave_no_thread_or_connection(self) -> None:
        connections = connection_count(self.r)
        lock = Lock(self.r, self.key)
        tokens = set()
        for _ in range(10_000):
            with lock as lease:
                tokens.add(lease.token)
        self.assertEqual(len(tokens), 10_000)
        self.assert_no_leftovers(connections)

    def test_1000_held_leases_share_one_thread_and_one_connection(self) -> None:
        connections = connection_count(self.r)
        leases = [Lock(self.r, f"{self.key}:{i}", 0.5, keepalive=True).acquire()
                  for i in range(1000)]
        self.assertEqual(threading.active_count(), self.threads + 1)
        extends = calls(self.r, "dlock.extend")
        wait_until("every lease extended twice",
                   lambda: calls(self.r, "dlock.extend") >= extends + 2000)
        self.assertFalse(any(lease.lost.is_set() for lease in leases))
        self.assertEqual(len(client_ids(self.r, "dlock-keepalive")), 1)
        self.assertEqual(connection_count(self.r), connections + 1)
        self.assertTrue(all(lease.release() for lease in leases))
        self.assert_no_leftovers(connections)

    def test_threads_sharing_one_semaphore_object_release_their_own_leases(self) -> None:
        semaphore = Semaphore(self.r, self.key, 2, 10)
        entered, leave = threading.Event(), threading.Event()

        def first() -> None:
            with semaphore:
                entered.set()
                leave.wait(5)

        thread = threading.Thread(target=first)
        thread.start()
        entered.wait(5)
        with semaphore as lease:
            leave.set()
            thread.join()
            self.assertFalse(lease.released)
            self.assertEqual(info(self.r, self.key)["holders_count"], 1)
        self.assertIsNone(info(self.r, self.key))

    def test_contenders_are_served_first_come_first_served(self) -> None:
        holder = Lock(self.r, self.key, 10).acquire()
        order: list[int] = []

        def contend(i: int) -> None:
            with Lock(self.r, self.key, 10).acquire(wait=10) as lease:
                order.append(i)
                lease.guard("RPUSH", f"{self.key}:log", i)

        threads = []
        for i in range(8):
            threads.append(threading.Thread(target=contend, args=(i,)))
            threads[-1].start()
            wait_until(f"contender {i} to queue",
                       lambda: info(self.r, self.key)["waiters"] == i + 1)
        holder.release()
        for thread in threads:
            thread.join()
        self.assertEqual(order, list(range(8)))
        self.assertEqual(self.r.lrange(f"{self.key}:log", 0, -1),
                         [str(i).encode() for i in range(8)])

    def test_guard_refuses_locally_after_the_deadline(self) -> None:
        lease = Lock(self.r, self.key, 0.2).acquire()
        self.assertEqual(lease.guard("SET", f"{self.key}:data", "v1"), b"OK")
        self.assertTrue(lease.lost.wait(1))
        guards = calls(self.r, "dlock.guard")
        with self.assertRaises(LockLost):
            lease.guard("SET", f"{self.key}:data", "v2")
        self.assertEqual(calls(self.r, "dlock.guard"), guards)
        self.assertEqual(self.r.get(f"{self.key}:data"), b"v1")
        lease.release()

    def test_guard_refused_by_the_server_marks_the_lease_lost(self) -> None:
        lease = Lock(self.r, self.key, 10).acquire()
        self.r.delete(self.key)
        other = Lock(self.r, self.key, 10).acquire()
        with self.assertRaises(LockLost) as caught:
            lease.guard("SET", f"{self.key}:data", "stale")
        self.assertEqual(str(caught.exception),
                         "fenced write refused: stale token, the lock is held with a newer one")
        self.assertTrue(lease.lost.is_set())
        self.assertIsNone(self.r.get(f"{self.key}:data"))
        other.release()
        lease.release()

    def test_no_extend_after_release(self) -> None:
        monitor = Monitor(self.server)
        connections = connection_count(self.r)
        lease = Lock(self.r, self.key, 0.3, keepalive=True).acquire()
        extends = calls(self.r, "dlock.extend")
        wait_until("a few extends", lambda: calls(self.r, "dlock.extend") >= extends + 5)
        self.assertTrue(lease.release())
        self.assert_no_leftovers(connections)
        seen = [c.split()[0] for c in monitor.commands_until_now() if "DLOCK" in c]
        released = seen.index("DLOCK.RELEASE")
        self.assertIn("DLOCK.EXTEND", seen[:released])
        self.assertEqual(seen[released + 1:], [])

    def test_extend_moves_the_deadline_and_a_refused_extend_is_lost(self) -> None:
        lease = Lock(self.r, self.key, 1).acquire()
        before = lease.deadline
        lease.extend(5)
        self.assertGreater(lease.deadline, before + 3.9)
        self.assertGreater(self.r.pttl(self.key), 4_000)
        self.r.delete(self.key)
        with self.assertRaises(LockLost):
            lease.extend()
        self.assertTrue(lease.lost.is_set())
        with self.assertRaises(NotHeld):
            lease.release(strict=True)

    def test_release_of_a_lease_the_server_no_longer_has(self) -> None:
        lease = Lock(self.r, self.key, 10).acquire()
        self.r.delete(self.key)
        self.assertFalse(lease.release())
        lease = Lock(self.r, self.key, 10).acquire()
        self.r.delete(self.key)
        with self.assertRaises(NotHeld):
            lease.release(strict=True)
        self.assertFalse(lease.release(strict=True))

    def test_session_lease_is_lost_at_once_when_its_connection_goes(self) -> None:
        connections = connection_count(self.r)
        lease = Lock(self.r, self.key, session=True).acquire()
        self.assertEqual(info(self.r, self.key)["session"], 1)
        (session,) = client_ids(self.r, "dlock-session")
        killed = time.monotonic()
        self.r.execute_command("CLIENT", "KILL", "ID", session)
        self.assertTrue(lease.lost.wait(1))
        print(f"\nsession: lost {(time.monotonic() - killed) * 1000:.2f} ms after CLIENT KILL",
              end=" ", file=sys.stderr)
        successor = Lock(self.r, self.key, 10).try_acquire()
        self.assertIsNotNone(successor)
        self.assertFalse(lease.release())
        successor.release()
        self.assert_no_leftovers(connections)

    def test_session_lease_release_closes_its_connection(self) -> None:
        connections = connection_count(self.r)
        with Lock(self.r, self.key, session=True) as lease:
            self.assertEqual(len(client_ids(self.r, "dlock-session")), 1)
        self.assertFalse(lease.lost.is_set())
        self.assertIsNone(info(self.r, self.key))
        self.assert_no_leftovers(connections)

    def test_read_write_lock_shares_reads_and_excludes_writes(self) -> None:
        rw = ReadWriteLock(self.r, self.key, 10)
        first, second = rw.read().acquire(), rw.read().acquire()
        self.assertNotEqual(first.owner, second.owner)
        self.assertEqual(info(self.r, self.key)["mode"], "shared")
        self.assertIsNone(rw.write().try_acquire())
        first.release()
        second.release()
        with rw.write() as writer:
            self.assertEqual(info(self.r, self.key)["mode"], "exclusive")
            self.assertIsNone(rw.read().try_acquire())
        self.assertTrue(writer.released)

    def test_semaphore_grants_up_to_its_limit(self) -> None:
        pool = Semaphore(self.r, self.key, 3, 10, permits=2)
        one = Semaphore(self.r, self.key, 3, 10)
        held = pool.acquire()
        self.assertIsNone(pool.try_acquire())
        extra = one.acquire()
        self.assertEqual(info(self.r, self.key)["mode"], "semaphore")
        self.assertIsNone(one.try_acquire())
        held.release()
        self.assertIsNotNone(again := one.try_acquire())
        again.release()
        extra.release()
        held = pool.acquire()
        with self.assertRaises(redis.ResponseError) as caught:
            Lock(self.r, self.key, 10).acquire()
        self.assertEqual(str(caught.exception), "WRONGTYPE the key holds a semaphore, not a lock")
        held.release()


class PlanTest(unittest.TestCase):
    def test_leases_due_close_together_are_renewed_in_one_batch(self) -> None:
        # ttl 3 s: each lease is due 1 s after its grant, and may go 0.1 s early with another.
        spec = Spec.make("k", 3.0, "o", False, True)
        leases = [LeaseCore(spec, 1, "o", sent) for sent in (0.0, 0.05, 0.099, 0.2)]
        for lease in leases:
            lease.lost = threading.Event()
        self.assertEqual(plan(leases, 0.99)[:2], ([], []))
        self.assertEqual(plan(leases, 1.0)[:2], ([], leases[:3]))


if __name__ == "__main__":
    unittest.main()
