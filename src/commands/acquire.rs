//! `DLOCK.ACQUIRE key owner ttl_ms [SHARED | SEMAPHORE limit [PERMITS n]] [WAIT timeout_ms]
//! [SESSION]`

use rand::Rng;
use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisValue, raw};

use super::{Arg, MAX_MS, check_master, parse_owner, parse_ttl};
use crate::blocking::{self, Wait};
use crate::errors::{
    ERR_LIMIT, ERR_PERMITS, ERR_PERMITS_ABOVE_LIMIT, ERR_SESSION_CONNECTION, ERR_SYNTAX,
    ERR_TIMEOUT, ERR_TIMEOUT_RANGE, acquire_error, refused,
};
use crate::lock::{MAX_LIMIT, Mode, owner_from_bits};
use crate::replicate::OwnerRef;
use crate::server;
use crate::store::{self, Outcome, Request, Site, Ttl, Turn};

/// The owner argument that asks the server to generate an owner id.
const GENERATE_OWNER: &[u8] = b"*";

enum Owner<'a> {
    /// The argument, and its bytes.
    Named(&'a Arg, &'a [u8]),
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

/// The options after the ttl.
#[derive(Default)]
struct Options {
    mode: Option<Mode>,
    permits: Option<u32>,
    wait: Option<i64>,
    session: bool,
}

impl<'a> AcquireArgs<'a> {
    fn parse(args: &'a [Arg]) -> Result<Self, RedisError> {
        let [_, key, owner, ttl, options @ ..] = args else {
            return Err(RedisError::WrongArity);
        };
        let owner = match owner.as_bytes() {
            GENERATE_OWNER => Owner::Generated,
            bytes => Owner::Named(owner, parse_owner(bytes)?),
        };
        let ttl = parse_ttl(ttl)?;
        let (mode, amount, wait, session) = if options.is_empty() {
            (Mode::Exclusive, 1, None, false)
        } else {
            let options = parse_options(options)?;
            let mode = options.mode.unwrap_or(Mode::Exclusive);
            let amount = match (mode, options.permits) {
                (Mode::Semaphore { limit }, Some(n)) if n > limit => {
                    return Err(RedisError::Str(ERR_PERMITS_ABOVE_LIMIT));
                }
                (Mode::Semaphore { .. }, n) => n.unwrap_or(1),
                (_, Some(_)) => return Err(RedisError::Str(ERR_SYNTAX)),
                (_, None) => 1,
            };
            (mode, amount, options.wait, options.session)
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

/// Out of line: the plain request (no options) runs none of this.
#[inline(never)]
fn parse_options(options: &[Arg]) -> Result<Options, RedisError> {
    let mut parsed = Options::default();
    let mut rest = options;
    while let [option, tail @ ..] = rest {
        match (option.as_bytes().to_ascii_uppercase().as_slice(), tail) {
            (b"WAIT", [timeout, tail @ ..]) if parsed.wait.is_none() => {
                parsed.wait = Some(parse_timeout(timeout)?);
                rest = tail;
            }
            (b"SESSION", tail) if !parsed.session => {
                parsed.session = true;
                rest = tail;
            }
            (b"SHARED", tail) if parsed.mode.is_none() => {
                parsed.mode = Some(Mode::Shared);
                rest = tail;
            }
            (b"SEMAPHORE", [limit, tail @ ..]) if parsed.mode.is_none() => {
                let limit = limit
                    .parse_i64()
                    .and_then(|l| u32::try_from(l).ok())
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or(RedisError::Str(ERR_LIMIT))?;
                parsed.mode = Some(Mode::Semaphore { limit });
                rest = tail;
            }
            (b"PERMITS", [n, tail @ ..]) if parsed.permits.is_none() => {
                let n = n
                    .parse_i64()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or(RedisError::Str(ERR_PERMITS))?;
                parsed.permits = Some(n);
                rest = tail;
            }
            _ => return Err(RedisError::Str(ERR_SYNTAX)),
        }
    }
    Ok(parsed)
}

/// A `WAIT` timeout: 0 (forever) up to `MAX_MS`.
fn parse_timeout(arg: &Arg) -> Result<i64, RedisError> {
    let timeout = arg
        .parse_i64()
        .filter(|t| *t >= 0)
        .ok_or(RedisError::Str(ERR_TIMEOUT))?;
    if timeout > MAX_MS {
        return Err(RedisError::Str(ERR_TIMEOUT_RANGE));
    }
    Ok(timeout)
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let args = AcquireArgs::parse(args)?;
    check_master(ctx)?;
    let raw_ctx = ctx.get_raw();
    let session = if args.session {
        Some(session_client(raw_ctx)?)
    } else {
        None
    };
    let now = server::now_ms();
    let generated;
    let (owner, owner_ref) = match args.owner {
        Owner::Named(owner, bytes) => (bytes, OwnerRef::Arg(owner)),
        Owner::Generated => {
            generated = generate_owner();
            (&generated[..], OwnerRef::Bytes(&generated))
        }
    };
    let site = Site::selected(ctx, args.key);
    let queued = blocking::is_queued(&site);
    let request = Request {
        owner,
        owner_string: owner_ref,
        mode: args.mode,
        amount: args.amount,
        ttl: args.ttl,
        session,
    };
    let outcome = store::acquire(site, &request, Turn::Command { queued }, now)?
        .map_err(|error| refused(acquire_error(error)))?;
    match (outcome, &args.owner) {
        (Outcome::Granted(state) | Outcome::Reentered(state), Owner::Named(..)) => {
            Ok(RedisValue::Integer(state.token))
        }
        (Outcome::Granted(state) | Outcome::Reentered(state), Owner::Generated) => {
            Ok(RedisValue::Array(vec![
                RedisValue::Integer(state.token),
                RedisValue::StringBuffer(owner.to_vec()),
            ]))
        }
        // Refused: nil, right here for the common request without `WAIT`.
        (Outcome::Busy(_), _) if args.wait.is_none() => Ok(RedisValue::Null),
        (Outcome::Busy(busy_until), _) => busy(ctx, &args, owner, session, now, busy_until),
    }
}

/// The client `SESSION` binds a hold to: a connection that can disconnect.
#[cold]
#[inline(never)]
fn session_client(ctx: *mut raw::RedisModuleCtx) -> Result<u64, RedisError> {
    let client = server::client_id(ctx);
    if !server::is_connection(client) {
        return Err(RedisError::Str(ERR_SESSION_CONNECTION));
    }
    Ok(client)
}

/// An owner id for `*`: 128 random bits in hex.
#[cold]
#[inline(never)]
fn generate_owner() -> [u8; 32] {
    owner_from_bits(rand::thread_rng().r#gen())
}

/// The lock is taken and the request has `WAIT`: block for it where the client may block,
/// or reply nil.
#[cold]
#[inline(never)]
fn busy(
    ctx: &Context,
    args: &AcquireArgs,
    owner: &[u8],
    session: Option<u64>,
    now: i64,
    busy_until: Option<i64>,
) -> RedisResult {
    match args.wait {
        // Asked only of a request that would wait: the flags cost a call into the server.
        Some(timeout_ms) if !ctx.get_flags().contains(ContextFlags::DENY_BLOCKING) => {
            let wait = Wait {
                owner,
                generated: matches!(args.owner, Owner::Generated),
                ttl: args.ttl,
                mode: args.mode,
                amount: args.amount,
                deadline: (timeout_ms > 0).then(|| now.saturating_add(timeout_ms)),
                session,
            };
            blocking::block(ctx, args.key, wait, busy_until)
        }
        _ => Ok(RedisValue::Null),
    }
}
