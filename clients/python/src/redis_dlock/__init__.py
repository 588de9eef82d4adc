"""Locks, read-write locks and semaphores on the dlock Redis module, for redis-py.

`Lock(client, key).acquire()` returns a `Lease`: the fencing token, the owner, a local
validity deadline, a keepalive that renews it in the background, and a `lost` event that is
set no later than that deadline when the lease cannot be kept. `redis_dlock.asyncio` offers
the same names for `redis.asyncio.Redis`.

`QuorumLock([client1, ..., clientN], key)` holds a lock on a majority of N independent
servers with a fencing token a resource can trust (see the README's "Quorum locks across
independent servers").
"""

from ._sync import Lease, Lock, QuorumLease, QuorumLock, ReadWriteLock, Semaphore
from .errors import (
    DlockError, LockLost, ModuleNotLoaded, DuplicateNodeId, NotAcquired, NotHeld,
)

__all__ = [
    "DlockError", "Lease", "Lock", "LockLost", "ModuleNotLoaded", "DuplicateNodeId",
    "NotAcquired", "NotHeld", "QuorumLease", "QuorumLock", "ReadWriteLock", "Semaphore",
]
