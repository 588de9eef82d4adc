//! `DLOCK.APPLY key owner token count lease_end_ms [SHARED | SEMAPHORE limit]` — the effect of
//! a lock command, as the replication stream and the AOF carry it (see `replicate.rs`).
//! Every token applied raises this server's token clock, so a promoted replica never issues a
//! token its master already issued.

use redis_module::{Context, RedisError, RedisResult, RedisValue};

use super::Arg;
use crate::errors::{ERR_APPLY_ARGS, ERR_APPLY_INTERNAL};
use crate::lock::{HoldState, MAX_LIMIT, Mode};
use crate::server;
use crate::store::{self, Site};
use crate::token::CLOCK;

struct ApplyArgs<'a> {
    key: &'a Arg,
    owner: &'a [u8],
    state: HoldState,
}

impl<'a> ApplyArgs<'a> {
    fn parse(args: &'a [Arg]) -> Result<Self, RedisError> {
        let [_, key, owner, token, count, lease_end, mode @ ..] = args else {
            return Err(RedisError::WrongArity);
        };
        let owner = owner.as_bytes();
        let token = token.parse_i64().filter(|t| *t > 0);
        let count = count.parse_i64().and_then(|c| u32::try_from(c).ok());
        let lease_end = lease_end.parse_i64();
        let mode = match mode {
            [] => Some(Mode::Exclusive),
            [word] if word.as_bytes().eq_ignore_ascii_case(b"SHARED") => Some(Mode::Shared),
            [word, limit] if word.as_bytes().eq_ignore_ascii_case(b"SEMAPHORE") => limit
                .parse_i64()
                .and_then(|l| u32::try_from(l).ok())
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .map(|limit| Mode::Semaphore { limit }),
            _ => None,
        };
        match (owner.is_empty(), token, count, lease_end, mode) {
            (false, Some(token), Some(count), Some(lease_end), Some(mode)) => Ok(ApplyArgs {
                key,
                owner,
                state: HoldState {
                    token,
                    count,
                    lease_end,
                    mode,
                },
            }),
            _ => Err(RedisError::Str(ERR_APPLY_ARGS)),
        }
    }
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    if !server::is_replicated_or_loading(ctx.get_raw()) {
        return Err(RedisError::Str(ERR_APPLY_INTERNAL));
    }
    let args = ApplyArgs::parse(args)?;
    CLOCK.observe(args.state.token);
    let site = Site {
        ctx,
        key: args.key,
        db: server::selected_db(ctx.get_raw()),
    };
    store::apply(site, args.owner, args.state, server::now_ms())?;
    // A replica's own AOF and its sub-replicas need the same effect.
    ctx.replicate_verbatim();
    Ok(RedisValue::SimpleStringStatic("OK"))
}
