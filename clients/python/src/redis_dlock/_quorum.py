"""What the sync and asyncio quorum locks share: the owner they send everywhere, the vote
count of one round of commands to N servers, the node-id check and the retry delay. No I/O.

The protocol (issue 19): ACQUIRE on all N servers in parallel with one owner; when a majority
granted before the validity deadline, T = the highest token granted, and FENCE key owner T on
the servers that granted; the lock is held with token T when a majority of those FENCEs
replied a token >= T before the deadline. Otherwise release everywhere and retry later.
"""

from __future__ import annotations

import math
import random
import secrets
from typing import Any, Callable, Iterable, Literal

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ModuleNotLoaded, DuplicateNodeId

NODE_MASK = 0xF
"""The low bits of a token that hold the issuing server's dlock.node-id."""

STRAGGLERS = 0.005
"""Seconds, at least, that a round of ACQUIRE or FENCE goes on waiting for the servers that
have not answered once a majority has: as long again as the majority took, so that every
server that can answer in time does (more servers fenced), while a frozen one costs little."""

RETRY_MAX = 0.2
"""Seconds: the longest random backoff between two attempts (less for short leases)."""

Reply = Any
"""A server's reply, or the exception its command ended with."""


def majority(n: int) -> int:
    return n // 2 + 1


def new_owner() -> str:
    """A random 128-bit owner id, 32 lowercase hex digits: the same on every server, which
    the server-generated `*` owner would not be."""
    return secrets.token_hex(16)


def retry_delay(ttl_ms: int) -> float:
    """A random backoff before the next attempt, so that contenders do not collide again."""
    return random.uniform(0.001, min(ttl_ms / 3000, RETRY_MAX))


def is_token(reply: Reply) -> bool:
    return isinstance(reply, int) and not isinstance(reply, bool) and reply > 0


Until = Literal["settled", "stragglers", "all"]
"""How long a round waits: until it is won or beaten; until then, and for the servers that
have not answered yet, as long again as the majority took (at least `STRAGGLERS`); or until
every server answered. Always at most until its time limit."""


class Votes:
    """The replies of one round: the same kind of command sent to `asked` of `n` servers at
    `started` (time.monotonic()).

    `yes(reply)` says whether a reply counts for the lock. A round is `won` when a majority
    of all `n` said yes, `beaten` when that can no longer happen.
    """

    def __init__(
        self, n: int, asked: Iterable[int], yes: Callable[[Reply], bool], started: float,
    ) -> None:
        self.n = n
        self.asked = set(asked)
        self.replies: dict[int, Reply] = {}
        self._yes = yes
        self._started = started
        self._won_at: float | None = None

    def add(self, server: int, reply: Reply, now: float) -> None:
        self.replies[server] = reply
        if self._won_at is None and self.won:
            self._won_at = now

    def wait_until(self, until: Until, limit: float) -> float:
        """When the round stops waiting for replies (-inf: now)."""
        if self.complete:
            return -math.inf
        if until == "all":
            return limit
        if self.beaten:
            return -math.inf
        if self._won_at is None:
            return limit
        if until == "settled":
            return -math.inf
        return min(limit, self._won_at + max(self._won_at - self._started, STRAGGLERS))

    def granted(self) -> dict[int, Reply]:
        """The yes replies, by server index."""
        return {i: r for i, r in self.replies.items() if self._yes(r)}

    def refused(self) -> int:
        """How many servers answered no (an answer, not an error or silence)."""
        return sum(1 for r in self.replies.values() if not isinstance(r, Exception)
                   and not self._yes(r))

    @property
    def won(self) -> bool:
        return len(self.granted()) >= majority(self.n)

    @property
    def beaten(self) -> bool:
        pending = len(self.asked) - len(self.replies)
        return len(self.granted()) + pending < majority(self.n)

    @property
    def complete(self) -> bool:
        return len(self.replies) == len(self.asked)

    def error(self) -> Exception | None:
        """The first error a server replied (WRONGTYPE, a refused FENCE, ...), which a
        connection problem is not."""
        return next(iter(self.errors().values()), None)

    def errors(self) -> dict[int, Exception]:
        """The errors servers replied, by server index (connection problems left out)."""
        return {i: r for i, r in self.replies.items()
                if isinstance(r, Exception) and not is_connection_error(r)}

    def acquire_error(self) -> Exception | None:
        """The error a round of ACQUIREs ends the attempt with: a server without the module
        always (a configuration to fix); another error (out of memory, READONLY, WRONGTYPE)
        only when the round did not win, since the lock does not need a minority's grants
        and a quorum lock is there to ride out a minority in trouble."""
        errors = list(self.errors().values())
        missing = next((e for e in errors if isinstance(e, ModuleNotLoaded)), None)
        if missing is not None or self.won:
            return missing
        return next(iter(errors), None)


def is_connection_error(error: Exception) -> bool:
    """A server that could not be reached or did not answer in time (asyncio's and the
    socket's TimeoutError are OSErrors)."""
    return isinstance(error, (RedisConnectionError, RedisTimeoutError, OSError))


def fence_token(grants: dict[int, Reply]) -> int:
    """T: the highest token granted. Raises `DuplicateNodeId` when two granting servers'
    tokens carry the same node id (tokens of two servers could then be equal)."""
    nodes: dict[int, int] = {}
    for server, token in sorted(grants.items()):
        node = token & NODE_MASK
        if node in nodes:
            raise DuplicateNodeId(conflict_message(nodes[node], server, node))
        nodes[node] = server
    return max(grants.values())


def node_id_of(info: Reply) -> int | None:
    """dlock_node_id from an `INFO dlock` reply: the parsed dict or the raw text."""
    if isinstance(info, dict):
        node = info.get("dlock_node_id")
        return None if node is None else int(node)
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("dlock_node_id:"):
            return int(line.partition(":")[2])
    return None


def node_ids(known: dict[int, int], infos: dict[int, Reply]) -> dict[int, int]:
    """`known` and the node ids of the servers that answered `INFO dlock` in `infos`; raises
    `DuplicateNodeId` when two servers share one, `ModuleNotLoaded` for a server without the
    module. A server that did not answer is left out, to be asked again next time."""
    ids = dict(known)
    for server, info in sorted(infos.items()):
        if isinstance(info, Exception):
            continue
        node = node_id_of(info)
        if node is None:
            raise ModuleNotLoaded(
                f"server {server} of the quorum has no dlock module loaded (INFO dlock is "
                "empty): load it with `MODULE LOAD /path/to/libdlock.so` (or `loadmodule "
                "/path/to/libdlock.so` in redis.conf)")
        ids[server] = node
    seen: dict[int, int] = {}
    for server, node in sorted(ids.items()):
        if node in seen:
            raise DuplicateNodeId(conflict_message(seen[node], server, node))
        seen[node] = server
    return ids


def conflict_message(first: int, second: int, node: int) -> str:
    return (
        f"servers {first} and {second} of the quorum both have dlock.node-id {node}: their "
        "tokens could be equal, and a resource could not tell two holders apart. Give every "
        "server its own id, 0-15 (`CONFIG SET dlock.node-id 3`, `dlock.node-id 3` in "
        "redis.conf, or `loadmodule /path/libdlock.so node-id 3`)")
