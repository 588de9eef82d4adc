//! `DLOCK.RELEASE key owner`

use redis_module::{Context, RedisError, RedisResult, RedisValue};

use super::apply::{self, OwnerRef};
use super::{Arg, now_ms, parse_owner};
use crate::blocking;
use crate::key::LockKey;
use crate::metrics::{self, events};
use crate::session;

struct ReleaseArgs<'a> {
    key: &'a Arg,
    owner: &'a Arg,
}

impl<'a> ReleaseArgs<'a> {
    fn parse(args: &'a [Arg]) -> Result<Self, RedisError> {
        let [_, key, owner] = args else {
            return Err(RedisError::WrongArity);
        };
        Ok(ReleaseArgs {
            key,
            owner: parse_owner(owner)?,
        })
    }
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let args = ReleaseArgs::parse(args)?;
    let now = now_ms();
    let mut key = LockKey::open_write(ctx, args.key);
    let Some(state) = key
        .lock()?
        .and_then(|lock| lock.release(args.owner.as_bytes(), now))
    else {
        metrics::RELEASES_REJECTED.incr();
        return Ok(RedisValue::Integer(0));
    };
    apply::replicate(ctx, args.key, OwnerRef::Arg(args.owner), state);
    metrics::RELEASES.incr();
    let db = blocking::selected_db(ctx.get_raw());
    if state.count == 0 {
        metrics::notify(ctx.get_raw(), events::RELEASED, args.key.raw());
        session::unbind(db, args.key.as_bytes(), args.owner.as_bytes(), state.token);
        blocking::released(ctx, key, db, args.key.as_bytes());
    } else {
        key.commit();
    }
    Ok(RedisValue::Integer(1))
}
