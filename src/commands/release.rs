//! `DLOCK.RELEASE key owner`

use redis_module::{Context, RedisError, RedisResult, RedisValue};

use super::{Arg, check_master, parse_holder};
use crate::blocking;
use crate::server;
use crate::store::{self, Site};

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
            owner: parse_holder(owner)?,
        })
    }
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let args = ReleaseArgs::parse(args)?;
    check_master(ctx)?;
    let site = Site::selected(ctx, args.key);
    let waiters = blocking::is_queued(&site);
    let Some(state) = store::release(site, args.owner, server::now_ms(), waiters)? else {
        return Ok(RedisValue::Integer(0));
    };
    // The waiters get the key now, before any other command.
    if state.count == 0 && waiters {
        blocking::offer(ctx, site.db(), args.key);
    }
    Ok(RedisValue::Integer(1))
}
