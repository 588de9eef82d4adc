//! `DLOCK.RELEASE key owner`

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use super::{apply, now_ms, parse_owner};
use crate::key::LockKey;

struct ReleaseArgs<'a> {
    key: &'a RedisString,
    owner: &'a [u8],
}

impl<'a> ReleaseArgs<'a> {
    fn parse(args: &'a [RedisString]) -> Result<Self, RedisError> {
        let [_, key, owner] = args else {
            return Err(RedisError::WrongArity);
        };
        Ok(ReleaseArgs {
            key,
            owner: parse_owner(owner)?,
        })
    }
}

pub fn run(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let args = ReleaseArgs::parse(&args)?;
    let now = now_ms();
    let mut key = LockKey::open_write(ctx, args.key);
    let Some(lock) = key.lock()? else {
        return Ok(RedisValue::Integer(0));
    };
    let Some(state) = lock.release(args.owner, now) else {
        return Ok(RedisValue::Integer(0));
    };
    apply::replicate(ctx, args.key, args.owner, state);
    key.commit();
    Ok(RedisValue::Integer(1))
}
