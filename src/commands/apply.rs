//! `DLOCK.APPLY key owner token count lease_end_ms [SHARED | SEMAPHORE limit]` — the effect of
//! a lock command, as the replication stream and the AOF carry it (see `replicate.rs`) — and
//! `DLOCK.APPLY key HOLDS n owner token count lease_end_ms mode [...]`, n holds at once, each
//! set as the first form sets one, with the mode as RDB files store it (`Mode::code`). A
//! rewritten AOF recreates a key with the second form, `replicate::HOLDS_PER_COMMAND` holds a
//! command.
//!
//! Whatever sends it, an APPLY takes effect only if every hold it sets is valid and keeps the
//! lock's rules (`store::check_hold`). Every token applied raises this server's token clock,
//! so a promoted replica never issues a token its master already issued.

use std::ffi::CString;
use std::os::raw::{c_char, c_int};

use redis_module::{Context, RedisError, RedisResult, RedisValue, raw};

use super::Arg;
use crate::errors::{ERR_APPLY_ARGS, ERR_APPLY_INTERNAL, ERR_HOLD_TOKEN_LEAD, ERR_WRONGTYPE};
use crate::lock::{HoldState, MAX_LIMIT, Mode};
use crate::replicate::{SEMAPHORE_WORD, SHARED_WORD};
use crate::server;
use crate::store::{self, Site};

/// The single form has at most this many arguments (with the command's name); the `HOLDS`
/// form at least one more, so the count alone tells them apart whatever the owner is called.
const SINGLE_FORM_MAX_ARGS: usize = 8;

/// Arguments per hold in the `HOLDS` form.
const HOLD_ARGS: usize = 5;

type Holds<'a> = Vec<(&'a [u8], HoldState)>;

struct ApplyArgs<'a> {
    key: &'a Arg,
    /// One for the single form: a `Vec` of one costs one small allocation per replicated
    /// change, which the command's other costs dwarf.
    holds: Holds<'a>,
}

impl<'a> ApplyArgs<'a> {
    fn parse(args: &'a [Arg]) -> Result<Self, RedisError> {
        if args.len() > SINGLE_FORM_MAX_ARGS {
            return Self::parse_holds(args);
        }
        let [_, key, owner, token, count, lease_end, mode @ ..] = args else {
            return Err(RedisError::WrongArity);
        };
        let mode = match mode {
            [] => Some(Mode::Exclusive),
            [word] if word.as_bytes().eq_ignore_ascii_case(SHARED_WORD) => Some(Mode::Shared),
            [word, limit] if word.as_bytes().eq_ignore_ascii_case(SEMAPHORE_WORD) => limit
                .parse_i64()
                .and_then(|l| u32::try_from(l).ok())
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .map(|limit| Mode::Semaphore { limit }),
            _ => None,
        };
        let hold = parse_hold(owner, token, count, lease_end, mode)
            .ok_or(RedisError::Str(ERR_APPLY_ARGS))?;
        Ok(ApplyArgs {
            key,
            holds: vec![hold],
        })
    }

    fn parse_holds(args: &'a [Arg]) -> Result<Self, RedisError> {
        let [_, key, word, n, fields @ ..] = args else {
            return Err(RedisError::WrongArity);
        };
        if !word.as_bytes().eq_ignore_ascii_case(b"HOLDS") {
            return Err(RedisError::WrongArity);
        }
        let n = n
            .parse_i64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| n.checked_mul(HOLD_ARGS) == Some(fields.len()))
            .ok_or(RedisError::WrongArity)?;
        let mut holds = Vec::with_capacity(n);
        for hold in fields.chunks_exact(HOLD_ARGS) {
            let [owner, token, count, lease_end, code] = hold else {
                return Err(RedisError::WrongArity);
            };
            let mode = code
                .parse_i64()
                .and_then(|c| u32::try_from(c).ok())
                .map(Mode::from_code);
            holds.push(
                parse_hold(owner, token, count, lease_end, mode)
                    .ok_or(RedisError::Str(ERR_APPLY_ARGS))?,
            );
        }
        Ok(ApplyArgs { key, holds })
    }
}

/// A hold's fields as numbers; their values are `store::check_hold`'s to judge.
fn parse_hold<'a>(
    owner: &'a Arg,
    token: &Arg,
    count: &Arg,
    lease_end: &Arg,
    mode: Option<Mode>,
) -> Option<(&'a [u8], HoldState)> {
    let state = HoldState {
        token: token.parse_i64()?,
        count: count.parse_i64().and_then(|c| u32::try_from(c).ok())?,
        lease_end: lease_end.parse_i64()?,
        mode: mode?,
    };
    Some((owner.as_bytes(), state))
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let raw_ctx = ctx.get_raw();
    if !server::is_replicated_or_loading(raw_ctx) {
        return Err(RedisError::Str(ERR_APPLY_INTERNAL));
    }
    let applied = ApplyArgs::parse(args).and_then(|parsed| {
        let site = Site::selected(ctx, parsed.key);
        store::apply(site, &parsed.holds, server::now_ms())
    });
    if let Err(error) = applied {
        return Err(refuse(ctx, args, error));
    }
    // A replica's own AOF and its sub-replicas need the same effect.
    ctx.replicate_verbatim();
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// An APPLY this server will not take. From the AOF, loading stops, as Redis stops on a
/// corrupt AOF: a file that is not what a master wrote would otherwise load as a different
/// dataset, or be saved into an RDB file no server can load. Modules have no way to fail a
/// load, so the server exits (only while loading, never while serving). From a master, the
/// command is refused and logged: the replica keeps serving, without that change.
fn refuse(ctx: &Context, args: &[Arg], error: RedisError) -> RedisError {
    let key = args.get(1).map_or(&[][..], Arg::as_bytes).escape_ascii();
    let text = match &error {
        RedisError::Str(text) => text,
        RedisError::String(text) => text.as_str(),
        RedisError::WrongArity => "ERR wrong number of arguments for 'dlock.apply' command",
        RedisError::WrongType => ERR_WRONGTYPE,
    };
    let reason = text.strip_prefix("ERR ").unwrap_or(text);
    if is_loading(ctx) {
        // A token too far ahead may also be this server's own, taken while the check was off.
        let remedy = if text == ERR_HOLD_TOKEN_LEAD {
            "The file is corrupt or forged, or this server's clock is far behind the one that \
             wrote it (or the token was taken with the check off): fix the clock, or start once \
             with `dlock.max-token-lead 0`"
        } else {
            "The file is not what a master wrote (corrupt or edited): restore a good copy, or \
             remove that command"
        };
        log_warning(
            ctx,
            &format!(
                "dlock: cannot load the AOF: DLOCK.APPLY on key '{key}' refused: {reason}. \
                 {remedy}. Exiting."
            ),
        );
        std::process::exit(1);
    }
    log_warning(
        ctx,
        &format!(
            "dlock: refused DLOCK.APPLY from the master on key '{key}': {reason}. This replica \
             differs from its master until its next full sync."
        ),
    );
    error
}

fn is_loading(ctx: &Context) -> bool {
    let flags = match unsafe { raw::RedisModule_GetContextFlags } {
        Some(flags) => unsafe { flags(ctx.get_raw()) },
        None => 0,
    };
    flags & raw::REDISMODULE_CTX_FLAGS_LOADING as c_int != 0
}

/// `RedisModule_Log` with the message as an argument, never as the format: key names may
/// hold `%`.
fn log_warning(ctx: &Context, message: &str) {
    let Some(log) = (unsafe { raw::RedisModule_Log }) else {
        return;
    };
    let message = CString::new(message.replace('\0', "\\x00")).unwrap_or_default();
    unsafe {
        log(
            ctx.get_raw(),
            c"warning".as_ptr(),
            c"%s".as_ptr(),
            message.as_ptr().cast::<c_char>(),
        )
    };
}
