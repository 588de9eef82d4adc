"""What the sync and asyncio clients share: a lock's settings, the commands they send, a
lease's clock and lost signal, and the keepalive's schedule. No I/O here."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Generic, Iterable, TypeVar

from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import LockLost, NotHeld

DEFAULT_TTL = 30.0
"""Seconds of lease when no ttl is given (the lease is then kept alive)."""

WAIT_MARGIN = 2.0
"""Seconds a blocking ACQUIRE's read timeout exceeds its WAIT: the server answers at the
timeout within a few milliseconds, so only a stuck server or network outlasts this."""

WAKE_EARLY = 0.002
"""Seconds before its deadline that the keepalive marks a lease lost, so that thread or task
wake-up latency does not make the signal late."""

READ_EARLY = 0.005
"""Seconds before the earliest deadline that the keepalive stops waiting for replies: socket
timeouts count whole milliseconds, and closing the connection takes time too."""

LINGER = 0.5
"""Seconds the keepalive thread stays (one to two of them) after its last lease went, so that
a process taking one lease after another does not start and join a thread for each: that
cost about half a millisecond per lease, more than the two commands themselves."""

BATCH_EARLY = 0.1
"""The fraction of its renewal period (ttl/3) by which a lease may be renewed early, to go in
the batch of a lease that is due."""

KEEPALIVE_NAME = "dlock-keepalive"
SESSION_NAME = "dlock-session"
QUORUM_NAME = "dlock-quorum"

QUORUM_TIMEOUT = 1.0
"""Seconds a quorum lock's connection may take to connect and greet a server when the
client sets no socket_timeout (replies are awaited only until the lease's deadline)."""

log = logging.getLogger("redis_dlock")

Key = str | bytes
Owner = str | bytes


def to_ms(seconds: float) -> int:
    """Seconds as the whole milliseconds the server takes, at least 1."""
    return max(1, round(seconds * 1000))


def wait_ms(wait: float | None) -> int | None:
    """The WAIT argument for `acquire(wait)`: 0 waits forever, None sends no WAIT."""
    if wait is None:
        return 0
    return to_ms(wait) if wait > 0 else None


def read_timeout(wait: int | None, usual: float | None) -> float | None:
    """The read timeout of an ACQUIRE with WAIT `wait` ms: the client's `usual` one without
    WAIT, none for a forever wait."""
    if wait is None:
        return usual
    return None if wait == 0 else wait / 1000 + WAIT_MARGIN


def drift(ttl_ms: int) -> float:
    """Clock drift allowance, in seconds, for a lease of `ttl_ms`."""
    return (ttl_ms / 100 + 2) / 1000


@dataclass(frozen=True)
class Spec:
    """How a lock object acquires: the key, lease, owner and mode arguments."""

    key: Key
    ttl_ms: int
    owner: Owner | None
    session: bool
    keepalive: bool
    mode: tuple[Any, ...] = ()

    @classmethod
    def make(
        cls, key: Key, ttl: float | None, owner: Owner | None, session: bool,
        keepalive: bool | None,
    ) -> Spec:
        """Apply the keepalive rule: kept alive exactly when no ttl is given, unless told."""
        if keepalive is None:
            keepalive = ttl is None
        return cls(key, to_ms(DEFAULT_TTL if ttl is None else ttl), owner, session, keepalive)

    def with_mode(self, *mode: Any) -> Spec:
        return replace(self, mode=mode)

    def acquire_args(self, wait: int | None) -> list[Any]:
        args = ["DLOCK.ACQUIRE", self.key, "*" if self.owner is None else self.owner,
                self.ttl_ms, *self.mode]
        if wait is not None:
            args += ["WAIT", wait]
        if self.session:
            args.append("SESSION")
        return args

    def grant(self, reply: Any) -> tuple[int, Owner] | None:
        """(token, owner) from ACQUIRE's reply, or None when not granted."""
        if reply is None:
            return None
        if self.owner is None:
            token, owner = reply
            return int(token), owner.decode() if isinstance(owner, bytes) else owner
        return int(reply), self.owner


class LeaseCore:
    """A granted lease: its identity, its local validity clock and its lost signal.

    The sync and asyncio `Lease` classes add the commands. `lost` is an event that is set
    once, when the lease is lost; a released lease is never lost.
    """

    lost: Any

    def __init__(self, spec: Spec, token: int, owner: Owner, sent: float) -> None:
        self.key: Key = spec.key
        self.token: int = token
        self.owner: Owner = owner
        self.keepalive: bool = spec.keepalive
        self.deadline: float = 0.0
        self.next_extend: float = 0.0
        self.ttl_ms: int = spec.ttl_ms
        self._state = threading.Lock()
        self._callbacks: list[Callable[[Any], Any]] = []
        self._released = False
        self.renewed(sent, spec.ttl_ms)

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self.lost.is_set() else "held"
        return f"<Lease key={self.key!r} owner={self.owner!r} token={self.token} {state}>"

    def renewed(self, sent: float, ttl_ms: int) -> None:
        """Move the deadline after a grant or extend whose request left at `sent`."""
        self.ttl_ms = ttl_ms
        self.deadline = sent + ttl_ms / 1000 - drift(ttl_ms)
        self.next_extend = sent + ttl_ms / 3000

    def retry_soon(self, now: float) -> None:
        """After a failed extend: try again shortly, until the deadline."""
        self.next_extend = now + min(self.ttl_ms / 20_000, 0.1)

    @property
    def released(self) -> bool:
        """Whether `release()` was called."""
        return self._released

    def remaining(self) -> float:
        """Seconds until the local validity deadline, floored at 0."""
        return max(0.0, self.deadline - time.monotonic())

    def valid(self) -> bool:
        """Not lost, not released, and the deadline has not passed."""
        return not self.lost.is_set() and not self._released and time.monotonic() < self.deadline

    def on_lost(self, callback: Callable[[Any], Any]) -> None:
        """Call `callback(lease)` when the lease is lost (at once if it already is).

        It runs in the keepalive thread (sync) or on the event loop (asyncio): keep it short.
        """
        with self._state:
            if not self.lost.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def check(self) -> None:
        """Raise `LockLost` when the lease is lost or past its deadline, `NotHeld` when it
        was released; otherwise return."""
        if self._released:
            raise NotHeld(f"the lease on {self.key!r} was released")
        if time.monotonic() >= self.deadline:
            self.mark_lost()
        if self.lost.is_set():
            raise LockLost(f"the lease on {self.key!r} (token {self.token}) is lost")

    def mark_lost(self) -> None:
        """Set `lost` and run the callbacks, once; nothing for a released lease."""
        with self._state:
            if self.lost.is_set() or self._released:
                return
            self.lost.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("on_lost callback of %r failed", self)

    def mark_released(self) -> bool:
        """Whether this call released the lease (False when it already was)."""
        with self._state:
            first, self._released = not self._released, True
            return first


def plan(leases: Iterable[LeaseCore], now: float) -> tuple[list[Any], list[Any], float]:
    """The keepalive's next step: leases past their deadline, leases due for an extend, and
    when to wake up next if there is nothing to do now.

    When a lease is due, those due within `BATCH_EARLY` of their renewal period go with it:
    leases taken one after another are then renewed in one batch from their first renewal on,
    instead of waking the keepalive (and scanning every lease) once for each."""
    expired, kept, wake = [], [], float("inf")
    for lease in leases:
        if now >= lease.deadline - WAKE_EARLY:
            expired.append(lease)
            continue
        wake = min(wake, lease.deadline - WAKE_EARLY)
        if lease.keepalive:
            kept.append(lease)
            wake = min(wake, lease.next_extend)
    due = []
    if any(now >= lease.next_extend for lease in kept):
        due = [lease for lease in kept
               if now >= lease.next_extend - lease.ttl_ms / 3000 * BATCH_EARLY]
    return expired, due, wake


def reply_limit(leases: Iterable[LeaseCore]) -> float:
    """When a keepalive batch must stop waiting for replies: the earliest deadline of any
    lease, so that a frozen server cannot hold a lease past its own."""
    return min(lease.deadline for lease in leases) - READ_EARLY


def extend_commands(leases: Iterable[LeaseCore]) -> list[tuple[Any, ...]]:
    return [("DLOCK.EXTEND", lease.key, lease.owner, lease.ttl_ms) for lease in leases]


def connection_kwargs(pool: Any, name: str, timeout: float | None) -> dict[str, Any]:
    """Settings of a dedicated connection named `name`, made like the pool's own, without
    redis-py's retries (our callers retry within a deadline), reads bounded by `timeout`."""
    kwargs = dict(pool.connection_kwargs, client_name=name, retry=Retry(NoBackoff(), 0))
    kwargs["socket_timeout"] = timeout
    if timeout is not None:
        kwargs["socket_connect_timeout"] = timeout
    return kwargs


def node(client: Any, key: Key) -> Any:
    """The client serving `key`: the client itself, or on a Redis Cluster the node holding
    the key's slot (blocking reads and the keepalive need its connection pool)."""
    if hasattr(client, "connection_pool"):
        return client
    return client.get_node_from_key(key).redis_connection


class LockBase:
    """What every lock object holds: the client, how it acquires, and the leases its `with`
    blocks hold, per thread or task, so that threads and tasks can share one lock object."""

    def __init__(
        self, client: Any, key: Key, ttl: float | None = None, *, owner: Owner | None = None,
        session: bool = False, keepalive: bool | None = None,
    ) -> None:
        self._client = client
        self._spec = Spec.make(key, ttl, owner, session, keepalive)
        self._held: dict[Any, list[Any]] = {}

    def _entered(self, holder: Any, lease: Any) -> None:
        """Remember the lease a `with` block of `holder` (a thread or task) acquired."""
        self._held.setdefault(holder, []).append(lease)

    def _exiting(self, holder: Any) -> Any:
        """The lease of `holder`'s innermost `with` block, forgotten."""
        leases = self._held[holder]
        lease = leases.pop()
        if not leases:
            del self._held[holder]
        return lease


L = TypeVar("L", bound=LockBase)


class ReadWriteLockBase(Generic[L]):
    """A read-write lock on `key`: `read()` gives shared holds, `write()` exclusive ones.

    The arguments are `Lock`'s, applied to both views.
    """

    _lock: type[L]

    def __init__(
        self, client: Any, key: Key, ttl: float | None = None, *, owner: Owner | None = None,
        session: bool = False, keepalive: bool | None = None,
    ) -> None:
        self._write = self._lock(client, key, ttl, owner=owner, session=session,
                                 keepalive=keepalive)
        self._read = self._lock(client, key, ttl, owner=owner, session=session,
                                keepalive=keepalive)
        self._read._spec = self._read._spec.with_mode("SHARED")

    def read(self) -> L:
        """The shared (reader) view."""
        return self._read

    def write(self) -> L:
        """The exclusive (writer) view."""
        return self._write


class SemaphoreMixin(LockBase):
    """A counting semaphore of `limit` permits on `key`; each lease holds `permits`.

    The other arguments are `Lock`'s.
    """

    def __init__(
        self, client: Any, key: Key, limit: int, ttl: float | None = None, *, permits: int = 1,
        owner: Owner | None = None, session: bool = False, keepalive: bool | None = None,
    ) -> None:
        super().__init__(client, key, ttl, owner=owner, session=session, keepalive=keepalive)
        self._spec = self._spec.with_mode("SEMAPHORE", limit, "PERMITS", permits)
