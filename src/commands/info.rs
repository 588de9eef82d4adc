//! `DLOCK.INFO key [HOLDERS count] [AFTER token]`

use std::os::raw::{c_char, c_long};

use redis_module::{Context, RedisError, RedisResult, RedisValue, raw};

use super::Arg;
use crate::blocking;
use crate::errors::{ERR_SYNTAX, ERR_TOKEN};
use crate::key::LockKey;
use crate::lock::{Hold, Mode};
use crate::server;
use crate::session;

/// Holders listed when the client does not say how many: every holder of an exclusive lock
/// and of most shared ones, while a key with 100k holders still answers in a few kilobytes.
pub const DEFAULT_HOLDERS: usize = 16;

pub const ERR_COUNT: &str = "ERR count must be a non-negative integer";

struct InfoArgs<'a> {
    key: &'a Arg,
    /// `HOLDERS count`: how many holders to list; 0 lists them all (as `XINFO STREAM FULL
    /// COUNT 0` does).
    holders: usize,
    /// `AFTER token`: list only holders with a newer token, to page through them.
    after: i64,
}

impl<'a> InfoArgs<'a> {
    fn parse(args: &'a [Arg]) -> Result<Self, RedisError> {
        let [_, key, options @ ..] = args else {
            return Err(RedisError::WrongArity);
        };
        let mut holders = None;
        let mut after = None;
        let mut rest = options;
        while let [option, value, tail @ ..] = rest {
            match option.as_bytes().to_ascii_uppercase().as_slice() {
                b"HOLDERS" if holders.is_none() => {
                    let count = value
                        .parse_i64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or(RedisError::Str(ERR_COUNT))?;
                    holders = Some(if count == 0 { usize::MAX } else { count });
                }
                b"AFTER" if after.is_none() => {
                    let token = value
                        .parse_i64()
                        .filter(|&t| t > 0)
                        .ok_or(RedisError::Str(ERR_TOKEN))?;
                    after = Some(token);
                }
                _ => return Err(RedisError::Str(ERR_SYNTAX)),
            }
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(RedisError::Str(ERR_SYNTAX));
        }
        Ok(InfoArgs {
            key,
            holders: holders.unwrap_or(DEFAULT_HOLDERS),
            after: after.unwrap_or(0),
        })
    }
}

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let args = InfoArgs::parse(args)?;
    let now = server::now_ms();
    let mut key = LockKey::open_read(ctx, args.key);
    let Some(lock) = key.lock()? else {
        return Ok(RedisValue::Null);
    };
    let Some(hold) = lock.holder(now) else {
        return Ok(RedisValue::Null);
    };
    let reply = Reply::new(ctx.get_raw());
    let db = server::selected_db(reply.ctx);
    let key_name = args.key.as_bytes();
    let waiters = blocking::waiting(db, key_name);
    // `holder` is the exclusive hold whenever there is one, so its mode is the lock's.
    let mode = hold.mode();
    let listed = lock.live_by_token(args.after, args.holders, now);
    // A map in RESP3, a flat field-value array in RESP2, in a fixed field order: the hold
    // that stands for the lock first (as before shared modes existed), then the holders
    // listed, then how many there are in all, so that a client sees when the list is cut.
    reply.map(10);
    reply.hold_fields(hold, now);
    reply.field("waiters");
    reply.int(i64::try_from(waiters).unwrap_or(i64::MAX));
    reply.session(hold, db, key_name);
    reply.field("mode");
    reply.field(mode_name(mode));
    reply.field("limit");
    reply.int(match mode {
        Mode::Semaphore { limit } => i64::from(limit),
        _ => 0,
    });
    reply.field("holders");
    reply.array(listed.len());
    for holder in listed {
        reply.map(6);
        reply.hold_fields(holder, now);
        reply.session(holder, db, key_name);
        reply.field("mode");
        reply.field(mode_name(holder.mode()));
    }
    reply.field("holders_count");
    reply.int(i64::try_from(lock.live_holds(now)).unwrap_or(i64::MAX));
    Ok(RedisValue::NoReply)
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Exclusive => "exclusive",
        Mode::Shared => "shared",
        Mode::Semaphore { .. } => "semaphore",
    }
}

/// Writes the reply straight through the module API.
struct Reply {
    ctx: *mut raw::RedisModuleCtx,
}

impl Reply {
    fn new(ctx: *mut raw::RedisModuleCtx) -> Reply {
        Reply { ctx }
    }

    fn map(&self, len: usize) {
        if let Some(map) = unsafe { raw::RedisModule_ReplyWithMap } {
            unsafe { map(self.ctx, c_long::try_from(len).unwrap_or(c_long::MAX)) };
        }
    }

    fn array(&self, len: usize) {
        if let Some(array) = unsafe { raw::RedisModule_ReplyWithArray } {
            unsafe { array(self.ctx, c_long::try_from(len).unwrap_or(c_long::MAX)) };
        }
    }

    fn bytes(&self, bytes: &[u8]) {
        if let Some(bulk) = unsafe { raw::RedisModule_ReplyWithStringBuffer } {
            unsafe { bulk(self.ctx, bytes.as_ptr().cast::<c_char>(), bytes.len()) };
        }
    }

    fn field(&self, name: &str) {
        self.bytes(name.as_bytes());
    }

    fn int(&self, value: i64) {
        if let Some(int) = unsafe { raw::RedisModule_ReplyWithLongLong } {
            unsafe { int(self.ctx, value) };
        }
    }

    /// `owner`, `token`, `ttl` and `holds` (re-entries, or a semaphore holder's permits) of
    /// one hold, as four field-value pairs.
    fn hold_fields(&self, hold: &Hold, now: i64) {
        self.field("owner");
        self.bytes(&hold.owner);
        self.field("token");
        self.int(hold.token);
        self.field("ttl");
        self.int(hold.lease_end.saturating_sub(now));
        self.field("holds");
        self.int(i64::from(hold.count));
    }

    /// `session`: 1 when the hold ends with its connection.
    fn session(&self, hold: &Hold, db: i32, key: &[u8]) {
        self.field("session");
        self.int(i64::from(session::is_bound(
            db,
            key,
            &hold.owner,
            hold.token,
        )));
    }
}
