"""The client for `redis.Redis` (and a Sentinel `master_for` client, or `RedisCluster`)."""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from types import TracebackType
from typing import Any, Callable, Sequence

from redis import ConnectionPool
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError

from ._core import (
    KEEPALIVE_NAME, LINGER, QUORUM_NAME, QUORUM_TIMEOUT, SESSION_NAME, Key, LeaseCore, LockBase,
    Owner, ReadWriteLockBase, SemaphoreMixin, Spec, connection_kwargs, drift, extend_commands,
    log, node, plan, read_timeout, reply_limit, to_ms, wait_ms,
)
from ._quorum import (
    Reply, Until, Votes, fence_token, is_token, majority, new_owner, node_ids, retry_delay,
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


def _once(client: Any, *command: Any) -> Any:
    """`command`'s reply, the command sent exactly once on a connection of `client`'s pool.
    redis-py sends a command again when its reply did not come (its retries), and a RELEASE
    run twice ends two holds of a re-entrant owner: the second one another lease's."""
    pool = client.connection_pool
    conn = _pooled(pool)
    try:
        conn.send_command(*command)
        return conn.read_response()
    except ResponseError:
        raise
    except BaseException:
        # A request may still be pending on this connection: never reuse it.
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


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
    ending one to two `LINGER`s after the last one went, that extends them on its own connection
    and marks them lost at their deadline. It holds them weakly: a lease dropped without
    release is no longer kept alive, and its hold ends at its ttl on the server."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._cond = threading.Condition()
        self._io = threading.Lock()
        self._leases: weakref.WeakSet[Lease] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._wake = math.inf
        self._emptied = -math.inf

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
            else:
                # Wake the thread only when this lease needs it sooner than it planned to.
                expired, due, wake = plan([lease], time.monotonic())
                if expired or due or wake < self._wake:
                    self._cond.notify()

    def remove(self, lease: Lease) -> None:
        """Stop serving `lease`. Once this returns, no EXTEND of it is in flight or to come."""
        with self._cond:
            self._leases.discard(lease)
            if not self._leases:
                self._emptied = time.monotonic()
        if self._thread is threading.current_thread():
            return
        with self._io:
            pass

    def _run(self) -> None:
        me = threading.current_thread()
        conn = None
        noticed_idle = math.inf
        try:
            while True:
                with self._cond:
                    if self._thread is not me:
                        return
                    now = time.monotonic()
                    if not self._leases:
                        # Idle since the last release, or since noticed when the last lease
                        # was dropped without one.
                        noticed_idle = min(noticed_idle, now)
                        idle_since = max(noticed_idle, self._emptied)
                        if now >= idle_since + LINGER:
                            self._thread = None
                            return
                        self._wake = idle_since + LINGER
                        self._cond.wait(self._wake - now)
                        continue
                    noticed_idle = math.inf
                    expired, due, wake = plan(self._leases, now)
                    if not expired and not due:
                        # Waking at least every LINGER notices when the last lease went
                        # (release does not wake the thread: that would cost a switch).
                        self._wake = min(wake, now + LINGER)
                        self._cond.wait(self._wake - now)
                        continue
                    self._wake = now
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
            held = _once(self._client, "DLOCK.RELEASE", self.key, self.owner) == 1
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


_nodes: weakref.WeakKeyDictionary[Any, _Node] = weakref.WeakKeyDictionary()
_nodes_lock = threading.Lock()

_quorum_executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix=QUORUM_NAME)
"""The threads that talk to the servers of quorum locks, one command each at a time."""


class _Node:
    """One server of quorum locks: a connection pool of its own, made like the client's,
    whose connects are bounded (a frozen server must not hold a worker thread for long), and
    the server's node id once known. One per client connection pool."""

    def __init__(self, pool: Any) -> None:
        timeout = pool.connection_kwargs.get("socket_timeout") or QUORUM_TIMEOUT
        self._pool = ConnectionPool(
            connection_class=pool.connection_class,
            **connection_kwargs(pool, QUORUM_NAME, timeout))
        self.node_id: int | None = None

    @classmethod
    def of(cls, client: Any) -> _Node:
        with _nodes_lock:
            pool = client.connection_pool
            found = _nodes.get(pool)
            if found is None:
                found = _nodes[pool] = cls(pool)
            return found

    def call(self, limit: float, *command: Any) -> Reply:
        """The reply to `command`, or the error it ended with: a server error, or a
        connection error, or TimeoutError when no reply came by `limit`."""
        try:
            conn = _pooled(self._pool)
        except (ConnectionError, TimeoutError, OSError) as error:
            return error
        try:
            conn.send_command(*command)
            if not conn.can_read(max(limit - time.monotonic(), 0)):
                raise TimeoutError(f"no reply to {command[0]} in time")
            return conn.read_response()
        except ResponseError as error:
            return translate(error)
        except BaseException as error:
            # A request may still be pending on this connection: never reuse it.
            conn.disconnect()
            if isinstance(error, (ConnectionError, TimeoutError, OSError)):
                return error
            raise
        finally:
            self._pool.release(conn)


class _Lanes:
    """The commands of one attempt, and then of its lease, to each server, in order: a
    command is sent to a server only once the previous one has its reply or gave up, so that
    a RELEASE never overtakes the ACQUIRE it undoes."""

    def __init__(self, nodes: list[_Node]) -> None:
        self.nodes = nodes
        self._last: dict[int, Future[Reply]] = {}
        self._lock = threading.Lock()

    def everywhere(self, command: tuple[Any, ...]) -> dict[int, tuple[Any, ...]]:
        return dict.fromkeys(range(len(self.nodes)), command)

    def submit(self, server: int, limit: float, command: tuple[Any, ...]) -> Future[Reply]:
        with self._lock:
            future = _quorum_executor.submit(
                self._run, self._last.get(server), server, limit, command)
            self._last[server] = future
            return future

    def _run(
        self, previous: Future[Reply] | None, server: int, limit: float,
        command: tuple[Any, ...],
    ) -> Reply:
        if previous is not None:
            futures_wait([previous])
        return self.nodes[server].call(limit, *command)


def _round(
    lanes: _Lanes, commands: dict[int, tuple[Any, ...]], limit: float,
    yes: Callable[[Reply], bool], until: Until, calls_limit: float | None = None,
) -> Votes:
    """Send each server its command in parallel; the replies that came as `until` says, by
    `limit`. Each command may take until `calls_limit` (default: `limit`), in its lane."""
    votes = Votes(len(lanes.nodes), commands, yes, time.monotonic())
    calls_limit = limit if calls_limit is None else calls_limit
    futures = {lanes.submit(i, calls_limit, command): i for i, command in commands.items()}
    pending = set(futures)
    while pending:
        now = time.monotonic()
        wait_for = votes.wait_until(until, limit) - now
        if wait_for <= 0:
            break
        done, pending = futures_wait(pending, wait_for, FIRST_COMPLETED)
        now = time.monotonic()
        for future in done:
            votes.add(futures[future], future.result(), now)
    return votes


class _QuorumKeeper(_Scheduler):
    """Keeps every quorum lease of the process, in one thread like a pool's `_Scheduler`:
    renews each due lease with EXTEND on all its servers, moving its deadline only when a
    majority confirmed; a majority of refusals loses it, and so does its deadline."""

    def _extend(self, conn: Any, due: list[Any]) -> Any:
        with self._io:
            with self._cond:
                due = [lease for lease in due if lease in self._leases]
                if not due:
                    return conn
                limit = reply_limit(self._leases)
            lost = []
            for lease in due:
                votes = lease._renew(lease.ttl_ms, limit)
                if votes.refused() >= majority(votes.n):
                    lost.append(lease)
                elif not votes.won:
                    lease.retry_soon(time.monotonic())
        with self._cond:
            self._leases.difference_update(lost)
        for lease in lost:
            lease.mark_lost()
        return conn


_quorum_keeper = _QuorumKeeper(None)


def _forget_threads_after_fork() -> None:
    """A forked child has none of its parent's threads, but would inherit its schedulers,
    whose thread may still be lingering, and the quorum thread pool, which counts its idle
    threads and would hand them work nobody runs (and their locks may be held): it starts
    afresh."""
    global _schedulers, _schedulers_lock, _quorum_keeper, _quorum_executor, _nodes_lock
    _schedulers = weakref.WeakKeyDictionary()
    _schedulers_lock = threading.Lock()
    _quorum_keeper = _QuorumKeeper(None)
    _quorum_executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix=QUORUM_NAME)
    _nodes_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_threads_after_fork)


class QuorumLease(LeaseCore):
    """A quorum lock's lease: `Lease`'s interface (`token`, `owner`, `key`, `deadline`,
    `remaining()`, `valid()`, `extend()`, `release()`, `lost`, `on_lost()`, `check()`, a
    context manager), without `guard()`: no single server can check the token of a quorum
    lock, the resource must (README: "Quorum locks across independent servers").

    `token` is T, the highest token the servers granted, which a majority of them hold after
    FENCE. `lost` is a `threading.Event`.
    """

    def __init__(
        self, spec: Spec, token: int, owner: Owner, sent: float, lanes: _Lanes,
    ) -> None:
        self.lost = threading.Event()
        super().__init__(spec, token, owner, sent)
        self._lanes = lanes
        _quorum_keeper.add(self)

    def _renew(self, ttl_ms: int, limit: float) -> Votes:
        """EXTEND on every server; the deadline moves when a majority confirmed by `limit`."""
        sent = time.monotonic()
        command = ("DLOCK.EXTEND", self.key, self.owner, ttl_ms)
        votes = _round(self._lanes, self._lanes.everywhere(command), limit,
                       lambda reply: reply == 1, "settled")
        if votes.won:
            self.renewed(sent, ttl_ms)
        return votes

    def extend(self, ttl: float | None = None) -> None:
        """Renew the lease on every server for `ttl` seconds (default: its current ttl),
        moving `deadline` when a majority confirmed before it.

        Raises `LockLost` (and marks the lease lost) otherwise.
        """
        self.check()
        if not self._renew(self.ttl_ms if ttl is None else to_ms(ttl), self.deadline).won:
            _quorum_keeper.remove(self)
            self.mark_lost()
            raise LockLost(f"the quorum lease on {self.key!r} (token {self.token}) is lost")

    def release(self, strict: bool = False) -> bool:
        """Release the lease: stop its keepalive, then RELEASE on every server.

        Returns whether a majority still had it; with `strict`, raises `NotHeld` instead of
        returning False. Servers that cannot be reached are left alone: their hold ends at
        its lease. A second call does nothing and returns False.
        """
        if not self.mark_released():
            return False
        _quorum_keeper.remove(self)
        command = ("DLOCK.RELEASE", self.key, self.owner)
        # Past the lease's end on the servers there is nothing left to release.
        limit = max(self.deadline, time.monotonic()) + drift(self.ttl_ms)
        votes = _round(self._lanes, self._lanes.everywhere(command), limit,
                       lambda reply: reply == 1, "settled")
        if strict and not votes.won:
            raise NotHeld(f"a majority of the servers no longer had the lease on {self.key!r}")
        return votes.won

    def __enter__(self) -> QuorumLease:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class QuorumLock(LockBase):
    """An exclusive lock on `key` held on a majority of independent servers (issue 19's
    protocol), whose lease's token a fenced resource can trust.

    `clients` are `redis.Redis` clients of N independent servers with the module, each with
    its own `dlock.node-id`. `ttl`, `owner` and `keepalive` are `Lock`'s; without `owner`
    each attempt sends one random 128-bit owner to every server. There is no waiting in the
    servers' queues: an attempt that fails is released everywhere and retried after a random
    backoff.
    """

    def __init__(
        self, clients: Sequence[Any], key: Key, ttl: float | None = None, *,
        owner: Owner | None = None, keepalive: bool | None = None,
    ) -> None:
        if not clients:
            raise ValueError("a quorum lock needs at least one server")
        super().__init__(list(clients), key, ttl, owner=owner, keepalive=keepalive)
        self._nodes = [_Node.of(client) for client in clients]

    def acquire(self, wait: float | None = None) -> QuorumLease:
        """Attempt until a majority grants the lock, for up to `wait` seconds (None: forever).

        Raises `NotAcquired` when the time runs out, `DuplicateNodeId` when two servers share
        a node id.
        """
        limit = math.inf if wait is None else time.monotonic() + wait
        while True:
            lease, retry_at = self._attempt()
            if lease is not None:
                return lease
            if time.monotonic() >= limit:
                raise NotAcquired(f"{self._spec.key!r} was not granted within {wait} s")
            time.sleep(max(min(retry_at, limit) - time.monotonic(), 0))

    def try_acquire(self) -> QuorumLease | None:
        """One attempt; None when a majority did not grant it."""
        return self._attempt()[0]

    def _check_node_ids(self) -> None:
        """Check that the servers have distinct node ids, asking those whose id is not known
        yet (INFO dlock; once a majority answered the others get as long again, and one that
        did not answer is asked again next time)."""
        known = {i: n.node_id for i, n in enumerate(self._nodes) if n.node_id is not None}
        replies: dict[int, Reply] = {}
        if len(known) < len(self._nodes):
            unknown = [i for i in range(len(self._nodes)) if i not in known]
            limit = time.monotonic() + self._spec.ttl_ms / 1000
            votes = _round(_Lanes(self._nodes), dict.fromkeys(unknown, ("INFO", "dlock")), limit,
                           lambda reply: not isinstance(reply, Exception), "stragglers")
            replies = votes.replies
        for i, node_id in node_ids(known, replies).items():
            self._nodes[i].node_id = node_id

    def _attempt(self) -> tuple[QuorumLease | None, float]:
        """One attempt: the lease, or None and when to try again (the failed attempt's
        holds are released meanwhile)."""
        self._check_node_ids()
        owner = self._spec.owner if self._spec.owner is not None else new_owner()
        lanes = _Lanes(self._nodes)
        sent = time.monotonic()
        try:
            token = self._grant(lanes, owner, sent)
        except BaseException:
            self._release_everywhere(
                lanes, owner, time.monotonic() + retry_delay(self._spec.ttl_ms), sent)
            raise
        if token is not None:
            return QuorumLease(self._spec, token, owner, sent, lanes), sent
        retry_at = time.monotonic() + retry_delay(self._spec.ttl_ms)
        self._release_everywhere(lanes, owner, retry_at, sent)
        return None, retry_at

    def _grant(self, lanes: _Lanes, owner: Owner, sent: float) -> int | None:
        """ACQUIRE everywhere, then FENCE where granted: T when a majority holds it, fenced,
        before the validity deadline; otherwise None."""
        ttl_ms = self._spec.ttl_ms
        deadline = sent + ttl_ms / 1000 - drift(ttl_ms)
        command = ("DLOCK.ACQUIRE", self._spec.key, owner, ttl_ms)
        acquired = _round(lanes, lanes.everywhere(command), deadline, is_token, "stragglers")
        if (error := acquired.acquire_error()) is not None:
            raise error
        if not acquired.won:
            return None
        for server, error in acquired.errors().items():
            log.warning("quorum lock %r: server %d refused (%s: %s); a majority granted",
                        self._spec.key, server, type(error).__name__, error)
        grants = acquired.granted()
        token = fence_token(grants)
        command = ("DLOCK.FENCE", self._spec.key, owner, token)
        fenced = _round(lanes, dict.fromkeys(grants, command), deadline,
                        lambda reply: is_token(reply) and reply >= token, "stragglers")
        if (error := fenced.error()) is not None:
            raise error
        return token if fenced.won and time.monotonic() < deadline else None

    def _release_everywhere(
        self, lanes: _Lanes, owner: Owner, limit: float, sent: float,
    ) -> None:
        """RELEASE on every server of the attempt whose ACQUIREs left at `sent`, waiting for
        the replies until `limit`; each RELEASE may take until that attempt's holds end."""
        command = ("DLOCK.RELEASE", self._spec.key, owner)
        _round(lanes, lanes.everywhere(command), limit, lambda reply: reply == 1, "all",
               sent + self._spec.ttl_ms / 1000)

    def __enter__(self) -> QuorumLease:
        lease = self.acquire()
        self._entered(threading.get_ident(), lease)
        return lease

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._exiting(threading.get_ident()).__exit__(kind, error, traceback)
