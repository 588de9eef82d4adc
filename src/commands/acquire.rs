//! `DLOCK.ACQUIRE key owner ttl_ms [SHARED | SEMAPHORE limit [PERMITS n]] [WAIT timeout_ms]
//! [SESSION]`

use rand::Rng;
use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisValue};

use super::apply::{self, OwnerRef};
use super::{Arg, Ttl, now_ms, parse_owner};
use crate::blocking::{self, Request};
use crate::errors::{
    ERR_HOLDS_OVERFLOW, ERR_LIMIT, ERR_LIMIT_MISMATCH, ERR_NOT_A_LOCK, ERR_NOT_A_SEMAPHORE,
    ERR_PERMITS, ERR_PERMITS_ABOVE_LIMIT, ERR_SYNTAX, ERR_TIMEOUT, ERR_TIMEOUT_RANGE,
    ERR_TOKENS_EXHAUSTED, ERR_UPGRADE,
};
use crate::key::LockKey;
use crate::lock::{AcquireError, Acquired, Hold, HoldState, MAX_LIMIT, Mode, owner_from_bits};
use crate::metrics::{self, events};
use crate::session;
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
    /// `SHARED`, `SEMAPHORE limit`, or exclusive.
    mode: Mode,
    /// `PERMITS n` of a semaphore; 1 otherwise.
    amount: u32,
    /// `WAIT timeout_ms`: block until granted; 0 waits forever.
    wait: Option<i64>,
    /// `SESSION`: the hold ends when this connection does.
    session: bool,
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
        let mut wait = None;
        let mut session = false;
        let mut mode = None;
        let mut permits = None;
        let mut rest = options;
        while let [option, tail @ ..] = rest {
            match (option.as_bytes().to_ascii_uppercase().as_slice(), tail) {
                (b"WAIT", [timeout, tail @ ..]) if wait.is_none() => {
                    wait = Some(parse_timeout(timeout, now)?);
                    rest = tail;
                }
                (b"SESSION", tail) if !session => {
                    session = true;
                    rest = tail;
                }
                (b"SHARED", tail) if mode.is_none() => {
                    mode = Some(Mode::Shared);
                    rest = tail;
                }
                (b"SEMAPHORE", [limit, tail @ ..]) if mode.is_none() => {
                    let limit = limit
                        .parse_i64()
                        .and_then(|l| u32::try_from(l).ok())
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or(RedisError::Str(ERR_LIMIT))?;
                    mode = Some(Mode::Semaphore { limit });
                    rest = tail;
                }
                (b"PERMITS", [n, tail @ ..]) if permits.is_none() => {
                    let n = n
                        .parse_i64()
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|n| *n > 0)
                        .ok_or(RedisError::Str(ERR_PERMITS))?;
                    permits = Some(n);
                    rest = tail;
                }
                _ => return Err(RedisError::Str(ERR_SYNTAX)),
            }
        }
        let mode = mode.unwrap_or(Mode::Exclusive);
        let amount = match (mode, permits) {
            (Mode::Semaphore { limit }, Some(n)) if n > limit => {
                return Err(RedisError::Str(ERR_PERMITS_ABOVE_LIMIT));
            }
            (Mode::Semaphore { .. }, n) => n.unwrap_or(1),
            (_, Some(_)) => return Err(RedisError::Str(ERR_SYNTAX)),
            (_, None) => 1,
        };
        Ok(AcquireArgs {
            key,
            owner,
            ttl,
            mode,
            amount,
            wait,
            session,
        })
    }
}

/// What a client is told when its request can never be granted as it stands.
pub fn error_text(error: AcquireError) -> &'static str {
    match error {
        AcquireError::TokensExhausted => ERR_TOKENS_EXHAUSTED,
        AcquireError::TooManyHolds => ERR_HOLDS_OVERFLOW,
        AcquireError::NotALock => ERR_NOT_A_LOCK,
        AcquireError::NotASemaphore => ERR_NOT_A_SEMAPHORE,
        AcquireError::LimitMismatch => ERR_LIMIT_MISMATCH,
        AcquireError::PermitsAboveLimit => ERR_PERMITS_ABOVE_LIMIT,
        AcquireError::UpgradeDeadlock => ERR_UPGRADE,
    }
}

/// Replicate, count and announce the removal of holds whose lease ended.
pub fn expired(ctx: &Context, key: &Arg, pruned: &[Hold]) {
    if pruned.is_empty() {
        return;
    }
    for ended in pruned {
        let removed = HoldState {
            count: 0,
            ..ended.state()
        };
        apply::replicate(ctx, key, OwnerRef::Bytes(&ended.owner), removed);
    }
    metrics::LEASES_EXPIRED.add(pruned.len() as u64);
    metrics::notify(ctx.get_raw(), events::EXPIRED, key.raw());
}

fn parse_timeout(arg: &Arg, now: i64) -> Result<i64, RedisError> {
    let timeout = arg
        .parse_i64()
        .filter(|t| *t >= 0)
        .ok_or(RedisError::Str(ERR_TIMEOUT))?;
    now.checked_add(timeout)
        .ok_or(RedisError::Str(ERR_TIMEOUT_RANGE))?;
    Ok(timeout)
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
    let db = blocking::selected_db(ctx.get_raw());
    let queued = blocking::waiting(db, args.key.as_bytes()) > 0;

    let mut key = LockKey::open_write(ctx, args.key);
    let lock = key.lock_or_insert()?;
    let pruned = lock.prune(now);
    // Clients already waiting come first: only a holder of the lock may go past them
    // (re-entry, downgrade, upgrade); nobody past a semaphore's queue.
    let acquired = if queued && !lock.may_pass_queue(owner, args.mode, now) {
        lock.admits(args.mode, args.amount).map(|()| Acquired::Busy)
    } else {
        lock.acquire(owner, args.mode, args.amount, now, lease_end, &CLOCK)
    };
    let holder_lease_end = lock.next_lease_end(now);
    blocking::watch_leases(ctx.get_raw(), db, args.key.as_bytes(), lock, now);
    let changed = acquired != Ok(Acquired::Busy) || !pruned.is_empty() || lock.is_empty();

    expired(ctx, args.key, &pruned);
    match acquired {
        Ok(Acquired::Granted(state)) => {
            apply::replicate(ctx, args.key, owner_ref, state);
            metrics::GRANTS_IMMEDIATE.incr();
            metrics::notify(ctx.get_raw(), events::ACQUIRED, args.key.raw());
        }
        Ok(Acquired::Reentered(state)) => {
            apply::replicate(ctx, args.key, owner_ref, state);
            metrics::REENTRIES.incr();
            metrics::notify(ctx.get_raw(), events::REENTERED, args.key.raw());
        }
        _ => {}
    }
    if changed {
        key.commit();
    }
    drop(key);

    match acquired {
        Ok(Acquired::Granted(state) | Acquired::Reentered(state)) => {
            if queued {
                blocking::lease_changed(ctx.get_raw(), db, args.key.as_bytes(), state.lease_end);
            }
            let key_name = args.key.as_bytes();
            if args.session {
                let client = session::client_id(ctx.get_raw());
                session::bind(
                    client,
                    db,
                    key_name,
                    owner,
                    state.token,
                    state.lease_end,
                    now,
                );
            } else {
                session::lease_changed(db, key_name, owner, state.token, state.lease_end);
            }
            Ok(match args.owner {
                Owner::Named(_) => RedisValue::Integer(state.token),
                Owner::Generated => RedisValue::Array(vec![
                    RedisValue::Integer(state.token),
                    RedisValue::StringBuffer(owner.to_vec()),
                ]),
            })
        }
        Ok(Acquired::Busy) => {
            // Waiters but no holder: the lock was freed by an event whose hand-over is still
            // scheduled; make sure it runs.
            if queued && holder_lease_end.is_none() {
                blocking::schedule(ctx.get_raw(), db, args.key.as_bytes());
            }
            let can_block = !ctx.get_flags().contains(ContextFlags::DENY_BLOCKING);
            match args.wait {
                Some(timeout_ms) if can_block => {
                    let request = Request {
                        owner,
                        generated: matches!(args.owner, Owner::Generated),
                        ttl: args.ttl,
                        mode: args.mode,
                        amount: args.amount,
                        timeout_ms,
                        session: args.session.then(|| session::client_id(ctx.get_raw())),
                    };
                    blocking::block(ctx, args.key, request, holder_lease_end.unwrap_or(now))
                }
                _ => Ok(RedisValue::Null),
            }
        }
        Err(error) => Err(RedisError::Str(error_text(error))),
    }
}
