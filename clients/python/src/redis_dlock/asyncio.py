"""The same API for `redis.asyncio.Redis`: `await lock.acquire()`, `async with lock as lease`.

`Lease.lost` is an `asyncio.Event`; the keepalive is one task per connection pool.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from types import TracebackType
from collections.abc import Coroutine, Generator
from typing import Any, Callable, Sequence, TypeVar

from redis.exceptions import ConnectionError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._core import (
    KEEPALIVE_NAME, SESSION_NAME, Key, LeaseCore, LockBase, Owner, ReadWriteLockBase,
    SemaphoreMixin, Spec, connection_kwargs, drift, extend_commands, log, node, plan,
    read_timeout, reply_limit, to_ms, wait_ms,
)
from ._quorum import (
    Reply, Until, Votes, fence_token, is_token, majority, new_owner, node_ids, retry_delay,
)
from .errors import (
    DlockError, LockLost, ModuleNotLoaded, DuplicateNodeId, NotAcquired, NotHeld,
    is_fence_refusal, translate,
)

__all__ = [
    "DlockError", "Lease", "Lock", "LockLost", "ModuleNotLoaded", "DuplicateNodeId",
    "NotAcquired", "NotHeld", "QuorumLease", "QuorumLock", "ReadWriteLock", "Semaphore",
]

_schedulers: weakref.WeakKeyDictionary[Any, _Scheduler] = weakref.WeakKeyDictionary()


async def _connect(pool: Any, name: str) -> Any:
    conn = pool.connection_class(**connection_kwargs(pool, name, None))
    await conn.connect()
    return conn


async def _pooled(pool: Any) -> Any:
    try:
        return await pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command name
        return await pool.get_connection("DLOCK.ACQUIRE")


async def _once(client: Any, *command: Any) -> Any:
    """`command`'s reply, the command sent exactly once on a connection of `client`'s pool.
    redis-py sends a command again when its reply did not come (its retries), and a RELEASE
    or an ACQUIRE run twice ends or takes two holds of a re-entrant owner."""
    pool = client.connection_pool
    conn = await _pooled(pool)
    try:
        await conn.send_command(*command)
        return await conn.read_response()
    except ResponseError:
        raise
    except BaseException:
        # A request may still be pending on this connection (or a timeout cancelled the
        # read): never reuse it.
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


async def _reply(conn: Any) -> Any:
    try:
        return await conn.read_response()
    except ResponseError as error:
        return error


class _Scheduler:
    """Keeps one connection pool's leases: a task, started with the first lease and awaited
    when the last one goes, that extends them on its own connection and marks them lost at
    their deadline."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._wake = asyncio.Event()
        self._io = asyncio.Lock()
        self._leases: weakref.WeakSet[Lease] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, client: Any) -> _Scheduler:
        pool = client.connection_pool
        scheduler = _schedulers.get(pool)
        if scheduler is None:
            scheduler = _schedulers[pool] = cls(pool)
        return scheduler

    def add(self, lease: Lease) -> None:
        self._leases.add(lease)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=KEEPALIVE_NAME)
        self._wake.set()

    async def remove(self, lease: Lease) -> None:
        """Stop serving `lease`. Once this returns, no EXTEND of it is in flight or to come."""
        self._leases.discard(lease)
        task = None
        if not self._leases:
            task, self._task = self._task, None
        self._wake.set()
        if task is asyncio.current_task():
            return
        async with self._io:
            pass
        if task is not None:
            await task

    async def _run(self) -> None:
        me = asyncio.current_task()
        conn = None
        try:
            while self._task is me:
                if not self._leases:
                    self._task = None
                    return
                now = time.monotonic()
                expired, due, wake = plan(self._leases, now)
                if not expired and not due:
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(wake - now):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
                self._leases.difference_update(expired)
                for lease in expired:
                    lease.mark_lost()
                if due:
                    conn = await self._extend(conn, due)
        finally:
            if conn is not None:
                await conn.disconnect()

    async def _extend(self, conn: Any, due: list[Lease]) -> Any:
        """Send the due EXTENDs in one batch and read the replies until `reply_limit`."""
        async with self._io:
            due = [lease for lease in due if lease in self._leases]
            if not due:
                return conn
            limit = reply_limit(self._leases)
            sent = time.monotonic()
            try:
                async with asyncio.timeout(max(limit - sent, 0)):
                    if conn is None:
                        conn = await _connect(self._pool, KEEPALIVE_NAME)
                    await conn.send_packed_command(conn.pack_commands(extend_commands(due)))
                    replies = [await _reply(conn) for _ in due]
            except (ConnectionError, RedisTimeoutError, TimeoutError, OSError):
                if conn is not None:
                    await conn.disconnect()
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
        self._leases.difference_update(lost)
        for lease in lost:
            lease.mark_lost()
        return conn


class Lease(LeaseCore):
    """A granted hold: `token`, `owner`, `key`, `deadline` (time.monotonic() seconds).

    `lost` is an `asyncio.Event`. Use `async with` to release on exit.
    """

    def __init__(
        self, spec: Spec, token: int, owner: Owner, sent: float, client: Any,
        session: Any | None,
    ) -> None:
        self.lost = asyncio.Event()
        super().__init__(spec, token, owner, sent)
        self._client = client
        self._scheduler = _Scheduler.of(client)
        self._session = session
        self._watcher: asyncio.Task[None] | None = None
        self._scheduler.add(self)
        if session is not None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(session), name=SESSION_NAME)

    async def _watch(self, session: Any) -> None:
        # The server never writes to an idle session connection: anything read (an EOF, an
        # error) means the connection, and with it the hold, is gone.
        try:
            await session.read_response()
        except Exception:
            pass
        await self._lose()

    async def _lose(self) -> None:
        await self._scheduler.remove(self)
        self.mark_lost()

    async def extend(self, ttl: float | None = None) -> None:
        """Renew the lease for `ttl` seconds (default: its current ttl), moving `deadline`.

        Raises `LockLost` (and marks the lease lost) when the server no longer has it.
        """
        self.check()
        ttl_ms = self.ttl_ms if ttl is None else to_ms(ttl)
        sent = time.monotonic()
        if await self._client.execute_command("DLOCK.EXTEND", self.key, self.owner, ttl_ms) != 1:
            await self._lose()
            raise LockLost(f"the lease on {self.key!r} (token {self.token}) is lost")
        self.renewed(sent, ttl_ms)

    async def release(self, strict: bool = False) -> bool:
        """Release the lease: stop its keepalive, then send RELEASE.

        Returns whether the server still had it; with `strict`, raises `NotHeld` instead of
        returning False. A second call does nothing and returns False. Connection errors
        propagate; the hold then ends at its lease on the server.
        """
        if not self.mark_released():
            return False
        await self._scheduler.remove(self)
        try:
            held = await _once(self._client, "DLOCK.RELEASE", self.key, self.owner) == 1
        finally:
            if self._watcher is not None and self._watcher is not asyncio.current_task():
                self._watcher.cancel()
                await asyncio.gather(self._watcher, return_exceptions=True)
            if self._session is not None:
                await self._session.disconnect()
        if strict and not held:
            raise NotHeld(f"the server no longer had the lease on {self.key!r}")
        return bool(held)

    async def guard(self, *command: Any) -> Any:
        """Run `command` through DLOCK.GUARD with this lease's token; its reply.

        Raises `LockLost` without sending when the lease is lost or expired, and when the
        server refuses the token (the lease is then marked lost).
        """
        self.check()
        try:
            return await self._client.execute_command(
                "DLOCK.GUARD", self.key, self.token, *command)
        except ResponseError as error:
            if not is_fence_refusal(error):
                raise
            await self._lose()
            raise LockLost(str(error)) from error

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self.release()
        except RedisError:
            log.warning("release of %r failed; its lease ends on the server", self, exc_info=True)


LeaseT = TypeVar("LeaseT", "Lease", "QuorumLease")


class _Acquiring(Coroutine[Any, Any, LeaseT]):
    """What `acquire()` returns: a coroutine (await it, or make it a task) giving the lease,
    and an async context manager releasing that lease on exit."""

    def __init__(self, lease: Coroutine[Any, Any, LeaseT]) -> None:
        self._pending = lease
        self._lease: LeaseT | None = None

    def __await__(self) -> Generator[Any, None, LeaseT]:
        return self._pending.__await__()

    def send(self, value: Any) -> Any:
        return self._pending.send(value)

    def throw(self, *error: Any) -> Any:
        return self._pending.throw(*error)

    def close(self) -> None:
        self._pending.close()

    async def __aenter__(self) -> LeaseT:
        self._lease = await self._pending
        return self._lease

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._lease is not None:
            await self._lease.__aexit__(kind, error, traceback)


class Lock(LockBase):
    """An exclusive lock on `key`.

    `ttl` is the lease in seconds. Without it the lease is 30 s and kept alive in the
    background until released; with it the lease is exactly that long, unless
    `keepalive=True`. `owner` defaults to one the server generates; `session=True` ties the
    hold to a connection of its own as well.
    """

    def acquire(self, wait: float | None = None) -> _Acquiring[Lease]:
        """Wait up to `wait` seconds (None: forever) for the lock, in the server's queue.

        Await it for the `Lease`, or `async with` it. Raises `NotAcquired` when the wait
        ends without a grant.
        """
        return _Acquiring(self._acquire_or_raise(wait))

    async def _acquire_or_raise(self, wait: float | None) -> Lease:
        lease = await self._acquire(wait_ms(wait))
        if lease is None:
            raise NotAcquired(f"{self._spec.key!r} was not granted within {wait} s")
        return lease

    async def try_acquire(self) -> Lease | None:
        """Take the lock if it is free now; None otherwise."""
        return await self._acquire(None)

    async def _acquire(self, wait: int | None) -> Lease | None:
        client = node(self._client, self._spec.key)
        pool = client.connection_pool
        conn = await _connect(pool, SESSION_NAME) if self._spec.session else await _pooled(pool)
        own_timeout, conn.socket_timeout = conn.socket_timeout, None
        granted = None
        try:
            sent = time.monotonic()
            limit = read_timeout(wait, pool.connection_kwargs.get("socket_timeout"))
            try:
                async with asyncio.timeout(limit):
                    await conn.send_command(*self._spec.acquire_args(wait))
                    granted = self._spec.grant(await conn.read_response())
            except TimeoutError:
                raise RedisTimeoutError(
                    f"no reply to DLOCK.ACQUIRE {self._spec.key!r} in time") from None
            if granted is not None and time.monotonic() - sent > drift(self._spec.ttl_ms):
                # Granted after waiting, at an unknown moment since `sent`: restart the lease
                # so that its deadline counts from a known send time.
                sent = time.monotonic()
                await conn.send_command(
                    "DLOCK.EXTEND", self._spec.key, granted[1], self._spec.ttl_ms)
                if await conn.read_response() != 1:
                    sent = -math.inf
        except ResponseError as error:
            raise translate(error) from None
        except BaseException:
            # A request may still be pending on this connection: never reuse it.
            await conn.disconnect()
            raise
        finally:
            conn.socket_timeout = own_timeout
            if self._spec.session:
                if granted is None:
                    await conn.disconnect()
            else:
                await pool.release(conn)
        if granted is None:
            return None
        token, owner = granted
        return Lease(self._spec, token, owner, sent, client, conn if self._spec.session else None)

    async def __aenter__(self) -> Lease:
        lease = await self.acquire()
        self._entered(asyncio.current_task(), lease)
        return lease

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._exiting(asyncio.current_task()).__aexit__(kind, error, traceback)


class ReadWriteLock(ReadWriteLockBase[Lock]):
    """A read-write lock on `key`: `read()` and `write()` are asyncio `Lock` views (shared and
    exclusive) taking `Lock`'s arguments."""

    _lock = Lock


class Semaphore(SemaphoreMixin, Lock):
    """A counting semaphore: `Semaphore(client, key, limit, ttl=None, *, permits=1, ...)`,
    each lease holding `permits` of the `limit`; the other arguments are `Lock`'s."""


_quorum_keepers: weakref.WeakKeyDictionary[Any, _QuorumKeeper] = weakref.WeakKeyDictionary()
_node_ids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
"""The node id of each server of quorum locks, by its client's connection pool, once known."""


async def _call(client: Any, limit: float, *command: Any) -> Reply:
    """The reply to `command`, or the error it ended with: a server error, or a connection
    error, or TimeoutError when no reply came by `limit`."""
    try:
        async with asyncio.timeout(max(limit - time.monotonic(), 0)):
            return await _once(client, *command)
    except ResponseError as error:
        return translate(error)
    except (ConnectionError, RedisTimeoutError, OSError) as error:
        return error


class _Lanes:
    """The commands of one attempt, and then of its lease, to each server, in order: a
    command is sent to a server only once the previous one has its reply or gave up, so that
    a RELEASE never overtakes the ACQUIRE it undoes."""

    def __init__(self, clients: list[Any]) -> None:
        self.clients = clients
        self._last: dict[int, asyncio.Task[Reply]] = {}

    def everywhere(self, command: tuple[Any, ...]) -> dict[int, tuple[Any, ...]]:
        return dict.fromkeys(range(len(self.clients)), command)

    def submit(self, server: int, limit: float, command: tuple[Any, ...]) -> asyncio.Task[Reply]:
        task = asyncio.ensure_future(self._run(self._last.get(server), server, limit, command))
        self._last[server] = task
        return task

    async def _run(
        self, previous: asyncio.Task[Reply] | None, server: int, limit: float,
        command: tuple[Any, ...],
    ) -> Reply:
        if previous is not None:
            await asyncio.wait([previous])
        return await _call(self.clients[server], limit, *command)


async def _round(
    lanes: _Lanes, commands: dict[int, tuple[Any, ...]], limit: float,
    yes: Callable[[Reply], bool], until: Until, calls_limit: float | None = None,
) -> Votes:
    """Send each server its command in parallel, one task each; the replies that came as
    `until` says, by `limit`. Each command may take until `calls_limit` (default: `limit`),
    in its lane."""
    votes = Votes(len(lanes.clients), commands, yes, time.monotonic())
    calls_limit = limit if calls_limit is None else calls_limit
    tasks = {lanes.submit(i, calls_limit, command): i for i, command in commands.items()}
    pending = set(tasks)
    while pending:
        wait_for = votes.wait_until(until, limit) - time.monotonic()
        if wait_for <= 0:
            break
        done, pending = await asyncio.wait(
            pending, timeout=wait_for, return_when=asyncio.FIRST_COMPLETED)
        now = time.monotonic()
        for task in done:
            votes.add(tasks[task], task.result(), now)
    return votes


class _QuorumKeeper(_Scheduler):
    """Keeps the quorum leases of one event loop, in one task like a pool's `_Scheduler`:
    renews each due lease with EXTEND on all its servers, moving its deadline only when a
    majority confirmed; a majority of refusals loses it, and so does its deadline."""

    @classmethod
    def of_loop(cls) -> _QuorumKeeper:
        loop = asyncio.get_running_loop()
        keeper = _quorum_keepers.get(loop)
        if keeper is None:
            keeper = _quorum_keepers[loop] = cls(None)
        return keeper

    async def _extend(self, conn: Any, due: list[Any]) -> Any:
        async with self._io:
            due = [lease for lease in due if lease in self._leases]
            if not due:
                return conn
            limit = reply_limit(self._leases)
            lost = []
            for lease in due:
                votes = await lease._renew(lease.ttl_ms, limit)
                if votes.refused() >= majority(votes.n):
                    lost.append(lease)
                elif not votes.won:
                    lease.retry_soon(time.monotonic())
        self._leases.difference_update(lost)
        for lease in lost:
            lease.mark_lost()
        return conn


class QuorumLease(LeaseCore):
    """A quorum lock's lease: `Lease`'s interface (`token`, `owner`, `key`, `deadline`,
    `remaining()`, `valid()`, `await extend()`, `await release()`, `lost`, `on_lost()`,
    `check()`, `async with`), without `guard()`: no single server can check the token of a
    quorum lock, the resource must (README: "Quorum locks across independent servers").

    `token` is T, the highest token the servers granted, which a majority of them hold after
    FENCE. `lost` is an `asyncio.Event`.
    """

    def __init__(
        self, spec: Spec, token: int, owner: Owner, sent: float, lanes: _Lanes,
    ) -> None:
        self.lost = asyncio.Event()
        super().__init__(spec, token, owner, sent)
        self._lanes = lanes
        self._keeper = _QuorumKeeper.of_loop()
        self._keeper.add(self)

    async def _renew(self, ttl_ms: int, limit: float) -> Votes:
        """EXTEND on every server; the deadline moves when a majority confirmed by `limit`."""
        sent = time.monotonic()
        command = ("DLOCK.EXTEND", self.key, self.owner, ttl_ms)
        votes = await _round(self._lanes, self._lanes.everywhere(command), limit,
                             lambda reply: reply == 1, "settled")
        if votes.won:
            self.renewed(sent, ttl_ms)
        return votes

    async def extend(self, ttl: float | None = None) -> None:
        """Renew the lease on every server for `ttl` seconds (default: its current ttl),
        moving `deadline` when a majority confirmed before it.

        Raises `LockLost` (and marks the lease lost) otherwise.
        """
        self.check()
        votes = await self._renew(self.ttl_ms if ttl is None else to_ms(ttl), self.deadline)
        if not votes.won:
            await self._keeper.remove(self)
            self.mark_lost()
            raise LockLost(f"the quorum lease on {self.key!r} (token {self.token}) is lost")

    async def release(self, strict: bool = False) -> bool:
        """Release the lease: stop its keepalive, then RELEASE on every server.

        Returns whether a majority still had it; with `strict`, raises `NotHeld` instead of
        returning False. Servers that cannot be reached are left alone: their hold ends at
        its lease. A second call does nothing and returns False.
        """
        if not self.mark_released():
            return False
        await self._keeper.remove(self)
        command = ("DLOCK.RELEASE", self.key, self.owner)
        # Past the lease's end on the servers there is nothing left to release.
        limit = max(self.deadline, time.monotonic()) + drift(self.ttl_ms)
        votes = await _round(self._lanes, self._lanes.everywhere(command), limit,
                             lambda reply: reply == 1, "settled")
        if strict and not votes.won:
            raise NotHeld(f"a majority of the servers no longer had the lease on {self.key!r}")
        return votes.won

    async def __aenter__(self) -> QuorumLease:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.release()


class QuorumLock(LockBase):
    """An exclusive lock on `key` held on a majority of independent servers (issue 19's
    protocol), whose lease's token a fenced resource can trust.

    `clients` are `redis.asyncio.Redis` clients of N independent servers with the module,
    each with its own `dlock.node-id`. `ttl`, `owner` and `keepalive` are `Lock`'s; without
    `owner` each attempt sends one random 128-bit owner to every server. There is no waiting
    in the servers' queues: an attempt that fails is released everywhere and retried after a
    random backoff.
    """

    def __init__(
        self, clients: Sequence[Any], key: Key, ttl: float | None = None, *,
        owner: Owner | None = None, keepalive: bool | None = None,
    ) -> None:
        if not clients:
            raise ValueError("a quorum lock needs at least one server")
        super().__init__(list(clients), key, ttl, owner=owner, keepalive=keepalive)
        self._clients: list[Any] = list(clients)

    def acquire(self, wait: float | None = None) -> _Acquiring[QuorumLease]:
        """Attempt until a majority grants the lock, for up to `wait` seconds (None:
        forever). Await it for the `QuorumLease`, or `async with` it.

        Raises `NotAcquired` when the time runs out, `DuplicateNodeId` when two servers share
        a node id.
        """
        return _Acquiring(self._acquire_or_raise(wait))

    async def _acquire_or_raise(self, wait: float | None) -> QuorumLease:
        limit = math.inf if wait is None else time.monotonic() + wait
        while True:
            lease, retry_at = await self._attempt()
            if lease is not None:
                return lease
            if time.monotonic() >= limit:
                raise NotAcquired(f"{self._spec.key!r} was not granted within {wait} s")
            await asyncio.sleep(max(min(retry_at, limit) - time.monotonic(), 0))

    async def try_acquire(self) -> QuorumLease | None:
        """One attempt; None when a majority did not grant it."""
        return (await self._attempt())[0]

    async def _check_node_ids(self) -> None:
        """Check that the servers have distinct node ids, asking those whose id is not known
        yet (INFO dlock; once a majority answered the others get as long again, and one that
        did not answer is asked again next time)."""
        pools = [client.connection_pool for client in self._clients]
        known = {i: _node_ids[pool] for i, pool in enumerate(pools) if pool in _node_ids}
        replies: dict[int, Reply] = {}
        if len(known) < len(pools):
            unknown = [i for i in range(len(pools)) if i not in known]
            limit = time.monotonic() + self._spec.ttl_ms / 1000
            votes = await _round(
                _Lanes(self._clients), dict.fromkeys(unknown, ("INFO", "dlock")), limit,
                lambda reply: not isinstance(reply, Exception), "stragglers")
            replies = votes.replies
        for i, node_id in node_ids(known, replies).items():
            _node_ids[pools[i]] = node_id

    async def _attempt(self) -> tuple[QuorumLease | None, float]:
        """One attempt: the lease, or None and when to try again (the failed attempt's
        holds are released meanwhile)."""
        await self._check_node_ids()
        owner = self._spec.owner if self._spec.owner is not None else new_owner()
        lanes = _Lanes(self._clients)
        sent = time.monotonic()
        try:
            token = await self._grant(lanes, owner, sent)
        except BaseException:
            await self._release_everywhere(
                lanes, owner, time.monotonic() + retry_delay(self._spec.ttl_ms), sent)
            raise
        if token is not None:
            return QuorumLease(self._spec, token, owner, sent, lanes), sent
        retry_at = time.monotonic() + retry_delay(self._spec.ttl_ms)
        await self._release_everywhere(lanes, owner, retry_at, sent)
        return None, retry_at

    async def _grant(self, lanes: _Lanes, owner: Owner, sent: float) -> int | None:
        """ACQUIRE everywhere, then FENCE where granted: T when a majority holds it, fenced,
        before the validity deadline; otherwise None."""
        ttl_ms = self._spec.ttl_ms
        deadline = sent + ttl_ms / 1000 - drift(ttl_ms)
        command = ("DLOCK.ACQUIRE", self._spec.key, owner, ttl_ms)
        acquired = await _round(lanes, lanes.everywhere(command), deadline, is_token,
                                "stragglers")
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
        fenced = await _round(lanes, dict.fromkeys(grants, command), deadline,
                              lambda reply: is_token(reply) and reply >= token, "stragglers")
        if (error := fenced.error()) is not None:
            raise error
        return token if fenced.won and time.monotonic() < deadline else None

    async def _release_everywhere(
        self, lanes: _Lanes, owner: Owner, limit: float, sent: float,
    ) -> None:
        """RELEASE on every server of the attempt whose ACQUIREs left at `sent`, waiting for
        the replies until `limit`; each RELEASE may take until that attempt's holds end."""
        command = ("DLOCK.RELEASE", self._spec.key, owner)
        await _round(lanes, lanes.everywhere(command), limit, lambda reply: reply == 1,
                     "all", sent + self._spec.ttl_ms / 1000)

    async def __aenter__(self) -> QuorumLease:
        lease = await self.acquire()
        self._entered(asyncio.current_task(), lease)
        return lease

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._exiting(asyncio.current_task()).__aexit__(kind, error, traceback)
