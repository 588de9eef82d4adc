//! Command bodies: each parses its arguments once into a struct, then acts on the lock.
//! After parsing, nothing a client sent can make a command fail.

pub mod acquire;
pub mod apply;
pub mod extend;
pub mod fence;
pub mod guard;
pub mod info;
pub mod release;

use redis_module::{Context, RedisError};

pub use crate::arg::Arg;
use crate::config;
use crate::errors::{
    ERR_OWNER_EMPTY, ERR_REPLICA, ERR_TOKEN, ERR_TTL, ERR_TTL_RANGE, err_owner_too_long,
    err_ttl_above_max, refused,
};
use crate::server;
use crate::store::Ttl;

/// The longest lease and the longest `WAIT`, in milliseconds: 2^40 ms, about 34.8 years.
/// Far below any overflow of `now + ttl` in milliseconds or microseconds (Redis computes
/// expiries and module timers in both), whatever a client sends.
pub const MAX_MS: i64 = 1 << 40;

/// A lease length: a positive integer up to `MAX_MS` and `dlock.max-ttl`.
pub fn parse_ttl(arg: &Arg) -> Result<Ttl, RedisError> {
    let ttl = arg.parse_i64().ok_or_else(|| refused(ERR_TTL))?;
    if ttl <= 0 {
        return Err(refused(ERR_TTL));
    }
    if ttl > MAX_MS {
        return Err(refused(ERR_TTL_RANGE));
    }
    match config::max_ttl() {
        Some(max) if ttl > max => Err(RedisError::String(err_ttl_above_max(max))),
        _ => Ok(Ttl::new(ttl)),
    }
}

/// A fencing token: a positive integer.
pub fn parse_token(arg: &Arg) -> Result<i64, RedisError> {
    arg.parse_i64()
        .filter(|t| *t > 0)
        .ok_or(RedisError::Str(ERR_TOKEN))
}

/// Refuse a write on a replica (one with `replica-read-only no`): a replica's locks are its
/// master's, and what it changed itself would be overwritten or diverge. Writes from the
/// master's stream and the AOF are the replica's own business.
pub fn check_master(ctx: &Context) -> Result<(), RedisError> {
    let raw_ctx = ctx.get_raw();
    if server::is_master_now() || server::is_replicated_or_loading(raw_ctx) {
        Ok(())
    } else {
        Err(refused(ERR_REPLICA))
    }
}

/// An owner id for a new hold, checked: non-empty, at most `dlock.max-owner-length` bytes.
pub fn parse_owner(owner: &[u8]) -> Result<&[u8], RedisError> {
    check_owner(owner, config::max_owner_length())?;
    Ok(owner)
}

/// An owner id naming an existing hold (`RELEASE`, `EXTEND`): checked against the largest
/// `dlock.max-owner-length` can be, so lowering the config never strands a current holder.
pub fn parse_holder(arg: &Arg) -> Result<&Arg, RedisError> {
    check_owner(arg.as_bytes(), config::MAX_OWNER_LENGTH_LIMIT)?;
    Ok(arg)
}

fn check_owner(owner: &[u8], limit: usize) -> Result<(), RedisError> {
    match owner.len() {
        0 => Err(refused(ERR_OWNER_EMPTY)),
        len if len > limit => Err(RedisError::String(err_owner_too_long(limit))),
        _ => Ok(()),
    }
}
