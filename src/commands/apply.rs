//! `DLOCK.APPLY key owner token count lease_end_ms` — the effect of a lock command.
//!
//! Masters replicate every change to a hold as this command, and rewritten AOFs recreate holds
//! with it, so replicas and AOF replay set exactly the owner, token, count and absolute lease
//! end the master decided: nothing is decided again from the replica's clock or randomness.
//! `count == 0` removes the hold. Every token applied raises this server's token clock, so a
//! promoted replica never issues a token its master already issued.

use std::ffi::CStr;
use std::os::raw::c_char;

use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisValue, raw};

use super::Arg;
use crate::errors::{ERR_APPLY_ARGS, ERR_APPLY_INTERNAL};
use crate::key::LockKey;
use crate::lock::HoldState;
use crate::token::CLOCK;

pub const COMMAND: &CStr = c"DLOCK.APPLY";
/// key (RedisModuleString), owner (buffer and length), token, count, lease end (long longs).
pub const FORMAT: &CStr = c"sblll";
/// The same with the owner as the client's own argument string, which Redis shares instead
/// of copying.
const FORMAT_OWNER_ARG: &CStr = c"sslll";

/// An owner as the client sent it, or as bytes the server holds.
#[derive(Clone, Copy)]
pub enum OwnerRef<'a> {
    Arg(&'a Arg),
    Bytes(&'a [u8]),
}

/// Send `owner`'s new hold state on `key` to replicas and the AOF.
pub fn replicate(ctx: &Context, key: &Arg, owner: OwnerRef, state: HoldState) {
    let Some(replicate) = (unsafe { raw::RedisModule_Replicate }) else {
        return;
    };
    let (ctx, command, key) = (ctx.get_raw(), COMMAND.as_ptr(), key.raw());
    let count = i64::from(state.count);
    unsafe {
        match owner {
            OwnerRef::Arg(owner) => replicate(
                ctx,
                command,
                FORMAT_OWNER_ARG.as_ptr(),
                key,
                owner.raw(),
                state.token,
                count,
                state.lease_end,
            ),
            OwnerRef::Bytes(owner) => replicate(
                ctx,
                command,
                FORMAT.as_ptr(),
                key,
                owner.as_ptr().cast::<c_char>(),
                owner.len(),
                state.token,
                count,
                state.lease_end,
            ),
        }
    };
}

struct ApplyArgs<'a> {
    key: &'a Arg,
    owner: &'a [u8],
    state: HoldState,
}

impl<'a> ApplyArgs<'a> {
    fn parse(args: &'a [Arg]) -> Result<Self, RedisError> {
        let [_, key, owner, token, count, lease_end] = args else {
            return Err(RedisError::WrongArity);
        };
        let owner = owner.as_bytes();
        let token = token.parse_i64().filter(|t| *t > 0);
        let count = count.parse_i64().and_then(|c| u32::try_from(c).ok());
        let lease_end = lease_end.parse_i64();
        match (owner.is_empty(), token, count, lease_end) {
            (false, Some(token), Some(count), Some(lease_end)) => Ok(ApplyArgs {
                key,
                owner,
                state: HoldState {
                    token,
                    count,
                    lease_end,
                },
            }),
            _ => Err(RedisError::Str(ERR_APPLY_ARGS)),
        }
    }
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    if !ctx
        .get_flags()
        .intersects(ContextFlags::REPLICATED | ContextFlags::LOADING)
    {
        return Err(RedisError::Str(ERR_APPLY_INTERNAL));
    }
    let args = ApplyArgs::parse(args)?;
    CLOCK.observe(args.state.token);
    let mut key = LockKey::open_write(ctx, args.key);
    if args.state.count == 0 && key.lock()?.is_none() {
        return Ok(RedisValue::SimpleStringStatic("OK"));
    }
    key.lock_or_insert()?.apply(args.owner, args.state);
    key.commit();
    // A replica's own AOF and its sub-replicas need the same effect.
    ctx.replicate_verbatim();
    Ok(RedisValue::SimpleStringStatic("OK"))
}
