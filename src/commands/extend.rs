//! `DLOCK.EXTEND key owner ttl_ms`

use redis_module::{Context, RedisError, RedisResult, RedisValue};

use super::apply::{self, OwnerRef};
use super::{Arg, Ttl, now_ms, parse_owner};
use crate::blocking;
use crate::key::LockKey;

struct ExtendArgs<'a> {
    key: &'a Arg,
    owner: &'a Arg,
    ttl: Ttl,
}

impl<'a> ExtendArgs<'a> {
    fn parse(args: &'a [Arg], now: i64) -> Result<Self, RedisError> {
        let [_, key, owner, ttl] = args else {
            return Err(RedisError::WrongArity);
        };
        Ok(ExtendArgs {
            key,
            owner: parse_owner(owner)?,
            ttl: Ttl::parse(ttl, now)?,
        })
    }
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let now = now_ms();
    let args = ExtendArgs::parse(args, now)?;
    let mut key = LockKey::open_write(ctx, args.key);
    let Some(lock) = key.lock()? else {
        return Ok(RedisValue::Integer(0));
    };
    let Some(state) = lock.extend(args.owner.as_bytes(), now, args.ttl.lease_end(now)) else {
        return Ok(RedisValue::Integer(0));
    };
    apply::replicate(ctx, args.key, OwnerRef::Arg(args.owner), state);
    key.commit();
    drop(key);
    let db = blocking::selected_db(ctx.get_raw());
    blocking::lease_changed(ctx.get_raw(), db, args.key.as_bytes(), state.lease_end);
    Ok(RedisValue::Integer(1))
}
