"""One exception type per meaning, all subclasses of `DlockError`.

Other server errors (`WRONGTYPE ...`, `ERR syntax error`, ...) and connection errors pass
through as redis-py's own exception types.
"""

from redis.exceptions import ResponseError


class DlockError(Exception):
    """Base class of every error this package raises."""


class NotAcquired(DlockError):
    """The wait ended without the lock being granted."""


class LockLost(DlockError):
    """The lease is lost: an extend was refused, or its validity deadline passed."""


class NotHeld(DlockError):
    """The server no longer had the lease (strict release), or it was already released."""


class ModuleNotLoaded(DlockError):
    """The server does not know the DLOCK.* commands."""


def translate(error: ResponseError) -> Exception:
    """`ModuleNotLoaded` for an unknown-command error, otherwise the error itself."""
    if "unknown command" in str(error).lower():
        return ModuleNotLoaded(
            "the dlock module is not loaded on this server: load it with "
            "`MODULE LOAD /path/to/libdlock.so` (or `loadmodule /path/to/libdlock.so` in "
            f"redis.conf); the server said: {error}"
        )
    return error


def is_fence_refusal(error: ResponseError) -> bool:
    """Whether DLOCK.GUARD refused because the token is not a live holder's."""
    return "fenced write refused" in str(error)


class DuplicateNodeId(DlockError):
    """Two servers of a quorum lock have the same dlock.node-id, so their tokens could be
    equal."""
