//! One error type for every failure a caller may want to tell apart.

use std::fmt;

/// The hint given when a server does not know the `DLOCK.*` commands.
pub const MODULE_LOAD_HINT: &str = "load it with `MODULE LOAD /path/to/libdlock.so` \
     (or `loadmodule /path/to/libdlock.so` in redis.conf)";

/// A lease was lost: an extend was refused, its validity deadline passed without a successful
/// extend, the server refused a fenced write with its token, or its session connection was
/// lost. Returned by `Lease::check`, and inside [`Error::LockLost`] elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLost {
    /// The lock's key.
    pub key: String,
}

impl fmt::Display for LockLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the lock {:?} was lost", self.key)
    }
}

impl std::error::Error for LockLost {}

/// Everything the client can fail with.
#[derive(Debug)]
pub enum Error {
    /// The wait ended (or, for `try_acquire`'s strict callers, there was none) without a grant.
    NotAcquired {
        /// The lock's key.
        key: String,
    },
    /// The lease was lost (see [`LockLost`]).
    LockLost(LockLost),
    /// A strict release found that the server no longer had the lease.
    NotHeld {
        /// The lock's key.
        key: String,
    },
    /// The server does not know the `DLOCK.*` commands: the module is not loaded there. The
    /// message carries the server's error and the `MODULE LOAD` hint.
    ModuleNotLoaded {
        /// The server's own error text.
        server_error: String,
    },
    /// Two servers of a quorum lock report the same `dlock.node-id` (`INFO dlock`), so they
    /// could issue equal fencing tokens: give every server its own id.
    DuplicateNodeId {
        /// The node id both servers report.
        node_id: i64,
        /// The positions of the two servers in the list the quorum lock was made from.
        servers: (usize, usize),
    },
    /// Any other error, as the `redis` crate reports it (connection errors, `WRONGTYPE`, ...).
    Redis(redis::RedisError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotAcquired { key } => write!(f, "the lock {key:?} was not acquired in time"),
            Error::LockLost(lost) => lost.fmt(f),
            Error::NotHeld { key } => {
                write!(f, "the lock {key:?} is no longer held by this lease")
            }
            Error::ModuleNotLoaded { server_error } => write!(
                f,
                "the dlock module is not loaded on this server ({server_error}): {MODULE_LOAD_HINT}"
            ),
            Error::DuplicateNodeId { node_id, servers } => write!(
                f,
                "servers {} and {} of the quorum lock both have dlock.node-id {node_id}, so they \
                 could issue equal fencing tokens: set a distinct dlock.node-id (0 to 15) on \
                 every server (`CONFIG SET dlock.node-id N`, `dlock.node-id N` in redis.conf, \
                 or `loadmodule /path/to/libdlock.so node-id N`)",
                servers.0, servers.1
            ),
            Error::Redis(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::LockLost(lost) => Some(lost),
            Error::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<LockLost> for Error {
    fn from(lost: LockLost) -> Self {
        Error::LockLost(lost)
    }
}

impl From<redis::RedisError> for Error {
    /// An unknown-command error about a `DLOCK.*` command becomes [`Error::ModuleNotLoaded`];
    /// everything else stays a Redis error.
    fn from(e: redis::RedisError) -> Self {
        if is_unknown_dlock_command(&e) {
            Error::ModuleNotLoaded {
                server_error: format!("{} {}", e.code().unwrap_or("ERR"), e.detail().unwrap_or(""))
                    .trim()
                    .to_string(),
            }
        } else {
            Error::Redis(e)
        }
    }
}

fn is_unknown_dlock_command(e: &redis::RedisError) -> bool {
    let detail = e.detail().unwrap_or("").to_ascii_lowercase();
    detail.starts_with("unknown command") && detail.contains("'dlock.")
}

/// Whether a server error is `DLOCK.GUARD` refusing the token.
pub(crate) fn is_fence_refusal(e: &redis::RedisError) -> bool {
    e.detail()
        .is_some_and(|d| d.starts_with("fenced write refused"))
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
