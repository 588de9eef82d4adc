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
#![deny(missing_docs)]

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
