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
    let raw_ctx = ctx.get_raw();
    let db = server::selected_db(raw_ctx);
    let waiters = blocking::waiting(db, args.key.as_bytes()) > 0;
    let site = Site {
        ctx,
        key: args.key,
        db,
    };
    let Some(state) = store::release(site, args.owner, server::now_ms(), waiters)? else {
        return Ok(RedisValue::Integer(0));
    };
    // The waiters get the key now, before any other command.
    if state.count == 0 && waiters {
        blocking::offer(ctx, db, args.key);
    }
    Ok(RedisValue::Integer(1))
}
