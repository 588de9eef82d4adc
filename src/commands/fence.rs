//! `DLOCK.FENCE key owner token`

use redis_module::{Context, RedisError, RedisResult, RedisValue};

use super::{Arg, check_master, parse_holder, parse_token};
use crate::errors::ERR_TOKEN_LEAD;
use crate::server;
use crate::store::{self, Site};
use crate::token::CLOCK;

struct FenceArgs<'a> {
    key: &'a Arg,
    owner: &'a Arg,
    token: i64,
}

impl<'a> FenceArgs<'a> {
    fn parse(args: &'a [Arg]) -> Result<Self, RedisError> {
        let [_, key, owner, token] = args else {
            return Err(RedisError::WrongArity);
        };
        Ok(FenceArgs {
            key,
            owner: parse_holder(owner)?,
            token: parse_token(token)?,
        })
    }
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let args = FenceArgs::parse(args)?;
    check_master(ctx)?;
    let now = server::now_ms();
    // A token no server could have issued yet (a forged or corrupted one) would drag the
    // clock with it, up to exhausting the token space for every key of this server.
    if !CLOCK.plausible(args.token, now) {
        return Err(RedisError::Str(ERR_TOKEN_LEAD));
    }
    let site = Site::selected(ctx, args.key);
    Ok(match store::fence(site, args.owner, args.token, now)? {
        Some(token) => RedisValue::Integer(token),
        None => RedisValue::Null,
    })
}
