//! Client for dlock, the Redis module that adds distributed locks as native commands
//! (`DLOCK.ACQUIRE`, `RELEASE`, `EXTEND`, `GUARD`); see this crate's README.md.
//!
//! A lock object ([`Lock`], [`ReadWriteLock`], [`Semaphore`]) acquires a [`Lease`]: the fencing
//! token, the owner, a local validity deadline, and a lost signal. Without an explicit ttl the
//! lease is kept alive in the background (by two threads per [`Client`] for all its leases, or
//! one task per [`aio::Client`]); it is marked lost no later than its deadline when it cannot be
//! renewed. Dropping a lease releases it.
//!
//! ```no_run
//! use std::time::Duration;
//! use dlock_client::{Client, Lock};
//!
//! # fn main() -> dlock_client::Result<()> {
//! let client = Client::open("redis://127.0.0.1/")?;
//! let lease = Lock::new(&client, "report:lock").acquire(Some(Duration::from_secs(5)))?;
//! let _: () = lease.guard(("SET", "report:body", "v1"))?;
//! lease.release()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Quorum locks
//!
//! [`QuorumLock`] (and [`aio::QuorumLock`]) holds an exclusive lock on a majority of N
//! *independent* servers (masters that do not replicate each other; N odd, 3 or 5), so that
//! losing or failing over a minority of them cannot hand the lock to two clients, and still
//! gives a fencing token a resource can trust:
//!
//! 1. `DLOCK.ACQUIRE key owner ttl` goes to all N at once, with the same owner id everywhere
//!    (a new random 128-bit hex id for each attempt unless [`QuorumLock::owner`] sets one);
//! 2. when a majority granted within the validity window, `T` = the highest of their tokens,
//!    and `DLOCK.FENCE key owner T` goes to the servers that granted;
//! 3. the lock is held, with token `T`, only if a majority of FENCE replies were ≥ `T` before
//!    the validity deadline; otherwise RELEASE goes to every server, and
//!    [`acquire`](QuorumLock::acquire) retries after a random 10–60 ms pause until its wait
//!    ends ([`Error::NotAcquired`]); [`try_acquire`](QuorumLock::try_acquire) makes one
//!    attempt.
//!
//! A later holder's majority shares a server with this one's fenced majority; that server
//! grants it only after this hold ended, from a clock FENCE raised to `T`, so its token is
//! above `T`. Tokens from two servers must never be equal, so **every server needs its own
//! `dlock.node-id`**: the first attempt reads each server's `dlock_node_id` (`INFO dlock`)
//! and fails with [`Error::DuplicateNodeId`] when two share one, and every attempt checks
//! that its grants' tokens carry distinct node ids in their low 4 bits (which catches an id
//! changed later), failing the same way after releasing the attempt.
//!
//! The [`QuorumLease`] has the single-server lease's interface and lost signal, with these
//! differences. Its deadline counts from when the ACQUIREs were sent (minus the same drift
//! allowance). `extend` and the keepalive (run by the first client's background threads)
//! send EXTEND to every server: a majority of 1s moves the deadline; so many 0s that no
//! majority is left mark the lease lost; errors alone do neither (the keepalive retries, and
//! the deadline still ends the lease). `release` (and dropping the lease) sends RELEASE to
//! every server and says whether a majority still had the lease, as soon as the answers
//! settle it (and 50 ms more for the others): a frozen server does not hold it up, and its
//! RELEASE still goes out when it wakes. A server error or timeout
//! during an acquire counts as a refusal, except a server without the module
//! ([`Error::ModuleNotLoaded`]) and a FENCE a server refuses with an error (its clock more than
//! `dlock.max-token-lead` behind `T`), which is returned after the attempt was released.
//! **There is no `guard`**: the quorum's servers are not the resource, and `DLOCK.GUARD` on
//! one of them could not know of the others' holders; the resource itself must accept a write
//! only with a token at least the highest it has seen.
//!
//! ```no_run
//! use std::time::Duration;
//! use dlock_client::{Client, QuorumLock};
//!
//! # fn main() -> dlock_client::Result<()> {
//! let servers = ["redis://10.0.0.1/", "redis://10.0.0.2/", "redis://10.0.0.3/"];
//! let clients = servers.iter().map(|url| Client::open(url)).collect::<Result<Vec<_>, _>>()?;
//! let lease = QuorumLock::new(&clients, "report:lock").acquire(Some(Duration::from_secs(5)))?;
//! // write_to_the_resource(lease.token(), ...): the resource refuses lower tokens.
//! lease.release()?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

/// The read side of a lease, the same for every kind (`Lease`, `QuorumLease`, blocking and
/// tokio): accessors over its shared state and the lost signal.
macro_rules! lease_view {
    () => {
        /// The fencing token of this grant (for a quorum lease, the highest token of the
        /// grants, recorded on a majority by FENCE).
        pub fn token(&self) -> i64 {
            self.state.token
        }

        /// The owner id: server-generated unless the lock set one; for a quorum lease, the
        /// same on every server.
        pub fn owner(&self) -> &str {
            &self.state.owner
        }

        /// The lock's key.
        pub fn key(&self) -> &str {
            &self.state.key
        }

        /// The local validity deadline: when the request that granted the lease, or last
        /// renewed it (a majority's, for a quorum lease), was sent, plus the ttl, minus a
        /// drift allowance of ttl/100 + 2 ms. A grant that came after waiting in the queue is
        /// renewed at once, so its deadline counts from that EXTEND.
        pub fn deadline(&self) -> std::time::Instant {
            self.state.deadline()
        }

        /// The time left before the deadline (zero after it).
        pub fn remaining(&self) -> std::time::Duration {
            self.state.remaining()
        }

        /// Not lost, not released, and before the deadline.
        pub fn valid(&self) -> bool {
            self.state.valid()
        }

        /// Whether the lease is lost. Exact at any moment: true from the deadline on even if
        /// the keepalive has not woken yet.
        pub fn is_lost(&self) -> bool {
            self.state.is_lost()
        }

        /// Run `callback` once when the lease is lost (at once if it already is). It runs on
        /// the thread or task that notices the loss, usually the client's background one:
        /// keep it short (it may release or drop this lease).
        pub fn on_lost(&self, callback: impl FnOnce() + Send + 'static) {
            self.state.on_lost(Box::new(callback));
        }

        /// A watch channel that turns `true` when the lease is lost (at the latest at its
        /// deadline); it closes without turning true once the lease is released and dropped.
        #[cfg(feature = "tokio")]
        pub fn lost(&self) -> tokio::sync::watch::Receiver<bool> {
            self.state.subscribe()
        }

        /// `Err(LockLost)` when the lease is lost.
        pub fn check(&self) -> std::result::Result<(), $crate::LockLost> {
            if self.state.is_lost() {
                Err(self.lost_error())
            } else {
                Ok(())
            }
        }

        fn lost_error(&self) -> $crate::LockLost {
            $crate::LockLost {
                key: self.state.key.clone(),
            }
        }
    };
}

mod error;
mod quorum;
mod spec;
mod state;
mod sync;

#[cfg(feature = "tokio")]
pub mod aio;

pub use error::{Error, LockLost, MODULE_LOAD_HINT, Result};
pub use spec::DEFAULT_TTL;
pub use sync::{
    Client, DEFAULT_COMMAND_TIMEOUT, KEEPALIVE_CONNECTION_NAME, Lease, Lock, QuorumLease,
    QuorumLock, ReadWriteLock, Semaphore,
};
