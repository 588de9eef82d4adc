"""The client for `redis.Redis` (and a Sentinel `master_for` client, or `RedisCluster`)."""

from __future__ import annotations

import math
import threading
import time
import weakref
from types import TracebackType
from typing import Any

from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError

from ._core import (
    KEEPALIVE_NAME, SESSION_NAME, LeaseCore, LockBase, Owner, ReadWriteLockBase,
    SemaphoreMixin, Spec, connection_kwargs, drift, extend_commands, log, node, plan,
    read_timeout, reply_limit, to_ms, wait_ms,
)
from .errors import LockLost, NotAcquired, NotHeld, is_fence_refusal, translate

_schedulers: weakref.WeakKeyDictionary[Any, _Scheduler] = weakref.WeakKeyDictionary()
_schedulers_lock = threading.Lock()


def _connect(pool: Any, name: str, timeout: float | None) -> Any:
    conn = pool.connection_class(**connection_kwargs(pool, name, timeout))
    conn.connect()
    return conn


def _pooled(pool: Any) -> Any:
    try:
        return pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command name
        return pool.get_connection("DLOCK.ACQUIRE")


def _reply(conn: Any, limit: float) -> Any:
    """The next reply, or the error it carries; TimeoutError if none comes by `limit`."""
    if not conn.can_read(max(limit - time.monotonic(), 0)):
        raise TimeoutError("no reply before the lease's deadline")
    try:
        return conn.read_response()
    except ResponseError as error:
        return error


class _Scheduler:
    """Keeps one connection pool's leases: a daemon thread, started with the first lease and
    joined when the last one goes, that extends them on its own connection and marks them
    lost at their deadline. It holds them weakly: a lease dropped without release is no
    longer kept alive, and its hold ends at its ttl on the server."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._cond = threading.Condition()
        self._io = threading.Lock()
        self._leases: weakref.WeakSet[Lease] = weakref.WeakSet()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, client: Any) -> _Scheduler:
        with _schedulers_lock:
            pool = client.connection_pool
            scheduler = _schedulers.get(pool)
            if scheduler is None:
                scheduler = _schedulers[pool] = cls(pool)
            return scheduler

    def add(self, lease: Lease) -> None:
        with self._cond:
            self._leases.add(lease)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=KEEPALIVE_NAME, daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, lease: Lease) -> None:
        """Stop serving `lease`. Once this returns, no EXTEND of it is in flight or to come."""
        with self._cond:
            self._leases.discard(lease)
            thread = None
            if not self._leases:
                thread, self._thread = self._thread, None
            self._cond.notify()
        if thread is threading.current_thread():
            return
        with self._io:
            pass
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        me = threading.current_thread()
        conn = None
        try:
            while True:
                with self._cond:
                    if self._thread is not me:
                        return
                    if not self._leases:
                        self._thread = None
                        return
                    now = time.monotonic()
                    expired, due, wake = plan(self._leases, now)
                    if not expired and not due:
                        self._cond.wait(wake - now)
                        continue
                    self._leases.difference_update(expired)
                for lease in expired:
                    lease.mark_lost()
                if due:
                    conn = self._extend(conn, due)
        finally:
            if conn is not None:
                conn.disconnect()

    def _extend(self, conn: Any, due: list[Lease]) -> Any:
        """Send the due EXTENDs in one batch and read the replies until `reply_limit`."""
        with self._io:
            with self._cond:
                due = [lease for lease in due if lease in self._leases]
                if not due:
                    return conn
                limit = reply_limit(self._leases)
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = _connect(self._pool, KEEPALIVE_NAME, max(limit - sent, 0.001))
                conn.send_packed_command(conn.pack_commands(extend_commands(due)))
                replies = [_reply(conn, limit) for _ in due]
            except (ConnectionError, TimeoutError, OSError):
                if conn is not None:
                    conn.disconnect()
                now = time.monotonic()
                for lease in due:
                    lease.retry_soon(now)
                return None
            lost = []
            for lease, reply in zip(due, replies):
                if reply == 1:
                    lease.renewed(sent, lease.ttl_ms)
                else:
                    lost.append(lease)
        with self._cond:
            self._leases.difference_update(lost)
        for lease in lost:
            lease.mark_lost()
        return conn


class Lease(LeaseCore):
    """A granted hold: `token`, `owner`, `key`, `deadline` (time.monotonic() seconds).

    `lost` is a `threading.Event`. Use it as a context manager to release on exit.
    """

    def __init__(
        self, spec: Spec, token: int, owner: Owner, sent: float, client: Any,
        session: Any | None,
    ) -> None:
        self.lost = threading.Event()
        super().__init__(spec, token, owner, sent)
        self._client = client
        self._scheduler = _Scheduler.of(client)
        self._session = session
        self._watcher: threading.Thread | None = None
        self._scheduler.add(self)
        if session is not None:
            self._watcher = threading.Thread(
                target=self._watch, args=(session,), name=SESSION_NAME, daemon=True)
            self._watcher.start()

    def _watch(self, session: Any) -> None:
        # The server never writes to an idle session connection: anything read (an EOF, an
        # error) means the connection, and with it the hold, is gone.
        try:
            session.read_response()
        except Exception:
            pass
        self._lose()

    def _lose(self) -> None:
        self._scheduler.remove(self)
        self.mark_lost()

    def extend(self, ttl: float | None = None) -> None:
        """Renew the lease for `ttl` seconds (default: its current ttl), moving `deadline`.

        Raises `LockLost` (and marks the lease lost) when the server no longer has it.
        """
        self.check()
        ttl_ms = self.ttl_ms if ttl is None else to_ms(ttl)
        sent = time.monotonic()
        if self._client.execute_command("DLOCK.EXTEND", self.key, self.owner, ttl_ms) != 1:
            self._lose()
            raise LockLost(f"the lease on {self.key!r} (token {self.token}) is lost")
        self.renewed(sent, ttl_ms)

    def release(self, strict: bool = False) -> bool:
        """Release the lease: stop its keepalive, then send RELEASE.

        Returns whether the server still had it; with `strict`, raises `NotHeld` instead of
        returning False. A second call does nothing and returns False. Connection errors
        propagate; the hold then ends at its lease on the server.
        """
        if not self.mark_released():
            return False
        self._scheduler.remove(self)
        try:
            held = self._client.execute_command("DLOCK.RELEASE", self.key, self.owner) == 1
        finally:
            if self._session is not None:
                self._session.disconnect()
            if self._watcher is not None and self._watcher is not threading.current_thread():
                self._watcher.join()
        if strict and not held:
            raise NotHeld(f"the server no longer had the lease on {self.key!r}")
        return bool(held)

    def guard(self, *command: Any) -> Any:
        """Run `command` through DLOCK.GUARD with this lease's token; its reply.

        Raises `LockLost` without sending when the lease is lost or expired, and when the
        server refuses the token (the lease is then marked lost).
        """
        self.check()
        try:
            return self._client.execute_command("DLOCK.GUARD", self.key, self.token, *command)
        except ResponseError as error:
            if not is_fence_refusal(error):
                raise
            self._lose()
            raise LockLost(str(error)) from error

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.release()
        except RedisError:
            log.warning("release of %r failed; its lease ends on the server", self, exc_info=True)


class Lock(LockBase):
    """An exclusive lock on `key`.

    `ttl` is the lease in seconds. Without it the lease is 30 s and kept alive in the
    background until released; with it the lease is exactly that long, unless
    `keepalive=True`. `owner` defaults to one the server generates; `session=True` ties the
    hold to a connection of its own as well.
    """

    def acquire(self, wait: float | None = None) -> Lease:
        """Wait up to `wait` seconds (None: forever) for the lock, in the server's queue.

        Raises `NotAcquired` when the wait ends without a grant.
        """
        lease = self._acquire(wait_ms(wait))
        if lease is None:
            raise NotAcquired(f"{self._spec.key!r} was not granted within {wait} s")
        return lease

    def try_acquire(self) -> Lease | None:
        """Take the lock if it is free now; None otherwise."""
        return self._acquire(None)

    def _acquire(self, wait: int | None) -> Lease | None:
        client = node(self._client, self._spec.key)
        pool = client.connection_pool
        conn = _connect(pool, SESSION_NAME, None) if self._spec.session else _pooled(pool)
        granted = None
        try:
            sent = time.monotonic()
            conn.send_command(*self._spec.acquire_args(wait))
            usual = pool.connection_kwargs.get("socket_timeout")
            if not conn.can_read(read_timeout(wait, usual)):
                raise TimeoutError(f"no reply to DLOCK.ACQUIRE {self._spec.key!r} in time")
            granted = self._spec.grant(conn.read_response())
            if granted is not None and time.monotonic() - sent > drift(self._spec.ttl_ms):
                # Granted after waiting, at an unknown moment since `sent`: restart the lease
                # so that its deadline counts from a known send time.
                sent = time.monotonic()
                conn.send_command("DLOCK.EXTEND", self._spec.key, granted[1], self._spec.ttl_ms)
                if conn.read_response() != 1:
                    sent = -math.inf
        except ResponseError as error:
            raise translate(error) from None
        except BaseException:
            # A request may still be pending on this connection: never reuse it.
            conn.disconnect()
            raise
        finally:
            if self._spec.session:
                if granted is None:
                    conn.disconnect()
            else:
                pool.release(conn)
        if granted is None:
            return None
        token, owner = granted
        return Lease(self._spec, token, owner, sent, client, conn if self._spec.session else None)

    def __enter__(self) -> Lease:
        lease = self.acquire()
        self._entered(threading.get_ident(), lease)
        return lease

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._exiting(threading.get_ident()).__exit__(kind, error, traceback)


class ReadWriteLock(ReadWriteLockBase[Lock]):
    """A read-write lock on `key`: `read()` and `write()` are sync `Lock` views (shared and
    exclusive) taking `Lock`'s arguments."""

    _lock = Lock


class Semaphore(SemaphoreMixin, Lock):
    """A counting semaphore: `Semaphore(client, key, limit, ttl=None, *, permits=1, ...)`,
    each lease holding `permits` of the `limit`; the other arguments are `Lock`'s."""
