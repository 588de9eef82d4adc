//! `DLOCK.EXTEND key owner ttl_ms`

use redis_module::{Context, RedisError, RedisResult, RedisValue};

use super::{Arg, check_master, parse_holder, parse_ttl};
use crate::blocking;
use crate::server;
use crate::store::{self, Site, Ttl};

struct ExtendArgs<'a> {
    key: &'a Arg,
    owner: &'a Arg,
    ttl: Ttl,
}

impl<'a> ExtendArgs<'a> {
    fn parse(args: &'a [Arg]) -> Result<Self, RedisError> {
        let [_, key, owner, ttl] = args else {
            return Err(RedisError::WrongArity);
        };
        Ok(ExtendArgs {
            key,
            owner: parse_holder(owner)?,
            ttl: parse_ttl(ttl)?,
        })
    }
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let args = ExtendArgs::parse(args)?;
    check_master(ctx)?;
    let now = server::now_ms();
    let site = Site::selected(ctx, args.key);
    let waiters = blocking::is_queued(&site);
    let extended = store::extend(site, args.owner, args.ttl.lease_end(now), now, waiters)?;
    Ok(RedisValue::Integer(i64::from(extended)))
}
