//! Every error a client can receive, in Redis's voice, one constant per failure.

use redis_module::RedisError;

use crate::lock::AcquireError;

pub const ERR_SYNTAX: &str = "ERR syntax error";
pub const ERR_TTL: &str = "ERR ttl must be a positive integer in milliseconds";
pub const ERR_TTL_RANGE: &str = "ERR ttl is above the maximum of 1099511627776 ms (2^40)";
pub const ERR_OWNER_EMPTY: &str = "ERR owner must not be empty";
pub const ERR_TOKENS_EXHAUSTED: &str =
    "ERR fencing tokens exhausted: no token above the last one fits in 63 bits";
pub const ERR_APPLY_INTERNAL: &str =
    "ERR DLOCK.APPLY is internal: only a master's replication stream or the AOF may send it";
pub const ERR_APPLY_ARGS: &str = "ERR DLOCK.APPLY arguments are out of range";
/// Why a hold from outside (`DLOCK.APPLY`, an RDB file, `RESTORE`) is refused: the same text
/// in the reply to a master and, without "ERR ", in the log line of a refused load.
pub const ERR_HOLD_INVALID: &str =
    "ERR invalid hold: the owner is empty, the token is not positive or the hold count is 0";
pub const ERR_HOLD_LEASE_END: &str =
    "ERR invalid hold: the lease end is negative (it is a Unix time in milliseconds)";
pub const ERR_HOLD_TOKEN_LEAD: &str = "ERR invalid hold: its token leads this server's clock by \
     more than dlock.max-token-lead (0 disables the check)";
pub const ERR_HOLD_WRITERS: &str =
    "ERR invalid lock: an exclusive hold beside another owner's hold";
pub const ERR_HOLD_MODES: &str =
    "ERR invalid lock: lock and semaphore holds, or semaphores of different limits, on one key";
pub const ERR_HOLD_PERMITS: &str = "ERR invalid lock: more permits than the semaphore's limit";
pub const ERR_HOLD_DUPLICATE: &str = "ERR invalid lock: two holds of one owner in one mode";
pub const ERR_HOLD_RULES: &str = "ERR invalid lock: its holds break the lock's rules";
pub const ERR_HOLD_UNREADABLE: &str = "ERR the value is truncated or unreadable";
pub const ERR_HOLDS_OVERFLOW: &str = "ERR too many re-entries: the hold count would overflow";
pub const ERR_KEY_UNWRITABLE: &str = "ERR the key could not be opened for writing";
pub const ERR_WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
pub const ERR_TIMEOUT: &str = "ERR timeout must be a non-negative integer in milliseconds";
pub const ERR_TIMEOUT_RANGE: &str = "ERR timeout is above the maximum of 1099511627776 ms (2^40)";
pub const ERR_BLOCK: &str = "ERR the server refused to block the client";
pub const ERR_SLOT_MOVED: &str =
    "TRYAGAIN the key's slot moved to another node while the client waited; send the command again";
pub const ERR_LIMIT: &str = "ERR limit must be an integer from 1 to 4294967294";
pub const ERR_PERMITS: &str = "ERR permits must be a positive integer";
pub const ERR_PERMITS_ABOVE_LIMIT: &str = "ERR permits exceed the semaphore's limit";
pub const ERR_LIMIT_MISMATCH: &str = "ERR limit does not match the semaphore's limit";
pub const ERR_NOT_A_LOCK: &str = "WRONGTYPE the key holds a semaphore, not a lock";
pub const ERR_NOT_A_SEMAPHORE: &str = "WRONGTYPE the key holds a lock, not a semaphore";
pub const ERR_UPGRADE: &str =
    "ERR cannot upgrade: other owners hold the lock shared, and waiting for them would deadlock";

/// The owner is longer than `dlock.max-owner-length`.
pub fn err_owner_too_long(limit: usize) -> String {
    format!("ERR owner is longer than {limit} bytes")
}

/// The lease is longer than `dlock.max-ttl`.
pub fn err_ttl_above_max(limit: i64) -> String {
    format!("ERR ttl is above the limit of {limit} ms (dlock.max-ttl)")
}

/// The lock already has `dlock.max-waiters` waiters.
pub fn err_too_many_waiters(limit: usize) -> String {
    format!("ERR too many clients wait for this lock (dlock.max-waiters is {limit})")
}

pub const ERR_TOKEN: &str = "ERR token must be a positive integer";
/// Redis puts this after its own `ERR CONFIG SET failed (possibly related to argument ...) - `.
pub const ERR_CONFIG_TOKEN_LEAD: &str = "the token clock already leads this server's clock by \
     more than that: this server would refuse its own RDB and AOF files";
pub const ERR_TOKEN_LEAD: &str = "ERR token leads this server's clock by more than \
     dlock.max-token-lead (0 disables the check)";
pub const ERR_FENCE_NOT_HELD: &str = "ERR fenced write refused: the lock is not held";
pub const ERR_FENCE_STALE: &str =
    "ERR fenced write refused: stale token, the lock is held with a newer one";
pub const ERR_FENCE_UNKNOWN: &str =
    "ERR fenced write refused: no holder of the lock has this token";
pub const ERR_GUARD_CALL: &str = "ERR DLOCK.GUARD could not run the command";
pub const ERR_GUARD_NESTED: &str = "ERR DLOCK.GUARD cannot run 'dlock.guard': guards do not nest";

/// The command inside `DLOCK.GUARD` may block, which a command run inside another cannot do.
pub fn err_guard_blocking(command: &str) -> String {
    format!("ERR DLOCK.GUARD cannot run '{command}': it may block")
}

/// The user may not run the command inside `DLOCK.GUARD` (Redis's own wording).
pub fn err_guard_noperm(user: &str, command: &str) -> String {
    format!("NOPERM User {user} has no permissions to run the '{command}' command")
}

/// The command inside `DLOCK.GUARD` cannot run inside another command (Redis's `noscript`).
pub fn err_guard_noscript(command: &str) -> String {
    format!("ERR DLOCK.GUARD cannot run '{command}': it cannot run inside another command")
}

pub const ERR_REPLICA: &str =
    "READONLY dlock writes are only accepted by a master (this server is a replica)";
pub const ERR_SESSION_CONNECTION: &str =
    "ERR SESSION needs a client connection: it cannot be used from a script or a module call";

/// What a client is told when its request can never be granted as it stands.
pub fn acquire_error(error: AcquireError) -> &'static str {
    match error {
        AcquireError::TokensExhausted => ERR_TOKENS_EXHAUSTED,
        AcquireError::TooManyHolds => ERR_HOLDS_OVERFLOW,
        AcquireError::NotALock => ERR_NOT_A_LOCK,
        AcquireError::NotASemaphore => ERR_NOT_A_SEMAPHORE,
        AcquireError::LimitMismatch => ERR_LIMIT_MISMATCH,
        AcquireError::PermitsAboveLimit => ERR_PERMITS_ABOVE_LIMIT,
        AcquireError::UpgradeDeadlock => ERR_UPGRADE,
    }
}

/// `text` as the error a command replies with, built out of line: the compiler takes a call
/// to a cold function for a rare branch and lays the common path out without it, in fewer
/// instruction-cache lines.
#[cold]
#[inline(never)]
pub fn refused(text: &'static str) -> RedisError {
    RedisError::Str(text)
}

/// The text of an error from opening a lock's key.
pub fn key_error(error: &RedisError) -> &'static str {
    match error {
        RedisError::Str(text) => text,
        _ => ERR_WRONGTYPE,
    }
}
