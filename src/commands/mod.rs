//! Command bodies: each parses its arguments once into a struct, then acts on the lock.
//! After parsing, nothing a client sent can make a command fail.

pub mod acquire;
pub mod apply;
pub mod extend;
pub mod info;
pub mod release;

use redis_module::{RedisError, RedisString, raw};

use crate::errors::{ERR_OWNER_EMPTY, ERR_OWNER_TOO_LONG, ERR_TTL, ERR_TTL_RANGE};
use crate::lock::MAX_OWNER_LEN;

/// The server's clock in Unix milliseconds, the one its key expiry uses.
pub fn now_ms() -> i64 {
    match unsafe { raw::RedisModule_Milliseconds } {
        Some(ms) => unsafe { ms() },
        None => 0,
    }
}

/// A lease length, checked so that `now + ttl` cannot overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl(i64);

impl Ttl {
    pub fn parse(arg: &RedisString, now: i64) -> Result<Ttl, RedisError> {
        let ttl = parse_i64(arg).ok_or(RedisError::Str(ERR_TTL))?;
        if ttl <= 0 {
            return Err(RedisError::Str(ERR_TTL));
        }
        now.checked_add(ttl).ok_or(RedisError::Str(ERR_TTL_RANGE))?;
        Ok(Ttl(ttl))
    }

    /// The lease end for a lease starting at `now`.
    pub fn lease_end(self, now: i64) -> i64 {
        now.saturating_add(self.0)
    }
}

/// An owner id as the client sent it: non-empty, at most `MAX_OWNER_LEN` bytes.
pub fn parse_owner(arg: &RedisString) -> Result<&[u8], RedisError> {
    let owner = arg.as_slice();
    if owner.is_empty() {
        return Err(RedisError::Str(ERR_OWNER_EMPTY));
    }
    if owner.len() > MAX_OWNER_LEN {
        return Err(RedisError::Str(ERR_OWNER_TOO_LONG));
    }
    Ok(owner)
}

/// A decimal integer as Redis itself reads one (`RedisModule_StringToLongLong`).
pub fn parse_i64(arg: &RedisString) -> Option<i64> {
    arg.parse_integer().ok()
}
