//! `DLOCK.ACQUIRE key owner ttl_ms`

use rand::Rng;
use redis_module::{Context, RedisError, RedisResult, RedisValue};

use super::apply::{self, OwnerRef};
use super::{Arg, Ttl, now_ms, parse_owner};
use crate::errors::{ERR_HOLDS_OVERFLOW, ERR_SYNTAX, ERR_TOKENS_EXHAUSTED};
use crate::key::LockKey;
use crate::lock::{AcquireError, Acquired, HoldState, owner_from_bits};
use crate::token::CLOCK;

/// The owner argument that asks the server to generate an owner id.
const GENERATE_OWNER: &[u8] = b"*";

enum Owner<'a> {
    Named(&'a Arg),
    Generated,
}

struct AcquireArgs<'a> {
    key: &'a Arg,
    owner: Owner<'a>,
    ttl: Ttl,
}

impl<'a> AcquireArgs<'a> {
    fn parse(args: &'a [Arg], now: i64) -> Result<Self, RedisError> {
        let [_, key, owner, ttl, options @ ..] = args else {
            return Err(RedisError::WrongArity);
        };
        let owner = if owner.as_bytes() == GENERATE_OWNER {
            Owner::Generated
        } else {
            Owner::Named(parse_owner(owner)?)
        };
        let ttl = Ttl::parse(ttl, now)?;
        if !options.is_empty() {
            return Err(RedisError::Str(ERR_SYNTAX));
        }
        Ok(AcquireArgs { key, owner, ttl })
    }
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let now = now_ms();
    let args = AcquireArgs::parse(args, now)?;
    let generated;
    let (owner, owner_ref) = match args.owner {
        Owner::Named(owner) => (owner.as_bytes(), OwnerRef::Arg(owner)),
        Owner::Generated => {
            generated = owner_from_bits(rand::thread_rng().r#gen());
            (&generated[..], OwnerRef::Bytes(&generated))
        }
    };
    let lease_end = args.ttl.lease_end(now);

    let mut key = LockKey::open_write(ctx, args.key);
    let lock = key.lock_or_insert()?;
    let pruned = lock.prune(now);
    let acquired = lock.acquire(owner, now, lease_end, &CLOCK);

    for ended in &pruned {
        apply::replicate(
            ctx,
            args.key,
            OwnerRef::Bytes(&ended.owner),
            HoldState {
                count: 0,
                ..ended.state()
            },
        );
    }
    if let Ok(Acquired::Granted(state) | Acquired::Reentered(state)) = acquired {
        apply::replicate(ctx, args.key, owner_ref, state);
    }
    if acquired != Ok(Acquired::Busy) || !pruned.is_empty() {
        key.commit();
    }

    match acquired {
        Ok(Acquired::Granted(state) | Acquired::Reentered(state)) => Ok(match args.owner {
            Owner::Named(_) => RedisValue::Integer(state.token),
            Owner::Generated => RedisValue::Array(vec![
                RedisValue::Integer(state.token),
                RedisValue::StringBuffer(owner.to_vec()),
            ]),
        }),
        Ok(Acquired::Busy) => Ok(RedisValue::Null),
        Err(AcquireError::TokensExhausted) => Err(RedisError::Str(ERR_TOKENS_EXHAUSTED)),
        Err(AcquireError::TooManyHolds) => Err(RedisError::Str(ERR_HOLDS_OVERFLOW)),
    }
}
