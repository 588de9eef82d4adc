//! `DLOCK.EXTEND key owner ttl_ms`

use redis_module::{Context, RedisError, RedisResult, RedisValue};

use super::apply::{self, OwnerRef};
use super::{Arg, Ttl, now_ms, parse_owner};
use crate::blocking;
use crate::key::LockKey;
use crate::metrics::{self, events};
use crate::session;

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
    let lease_end = args.ttl.lease_end(now);
    let (owner, key_name) = (args.owner.as_bytes(), args.key.as_bytes());
    let db = blocking::selected_db(ctx.get_raw());
    let extended = match key.lock()? {
        Some(lock) => {
            let extended = lock.extend(owner, now, lease_end, |state| {
                apply::replicate(ctx, args.key, OwnerRef::Arg(args.owner), state);
                session::lease_changed(db, key_name, owner, state.token, lease_end);
            });
            blocking::watch_leases(ctx.get_raw(), db, key_name, lock, now);
            extended
        }
        None => false,
    };
    if !extended {
        metrics::EXTENDS_REJECTED.incr();
        return Ok(RedisValue::Integer(0));
    }
    metrics::EXTENDS.incr();
    metrics::notify(ctx.get_raw(), events::EXTENDED, args.key.raw());
    key.commit();
    drop(key);
    blocking::lease_changed(ctx.get_raw(), db, key_name, lease_end);
    Ok(RedisValue::Integer(1))
}
