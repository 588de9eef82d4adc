//! `DLOCK.INFO key`

use std::os::raw::{c_char, c_long};

use redis_module::{Context, RedisError, RedisResult, RedisValue, raw};

use super::Arg;
use crate::blocking;
use crate::key::LockKey;
use crate::lock::{Hold, Mode};
use crate::server;
use crate::session;

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let [_, name] = args else {
        return Err(RedisError::WrongArity);
    };
    let now = server::now_ms();
    let mut key = LockKey::open_read(ctx, name);
    let Some(lock) = key.lock()? else {
        return Ok(RedisValue::Null);
    };
    let Some(hold) = lock.holder(now) else {
        return Ok(RedisValue::Null);
    };
    let reply = Reply::new(ctx.get_raw());
    let db = server::selected_db(reply.ctx);
    let key_name = name.as_bytes();
    let waiters = blocking::waiting(db, key_name);
    let mut holders: Vec<&Hold> = lock.live(now).collect();
    holders.sort_unstable_by_key(|h| h.token);
    let mode = if holders.iter().any(|h| h.mode() == Mode::Exclusive) {
        Mode::Exclusive
    } else {
        hold.mode()
    };
    // A map in RESP3, a flat field-value array in RESP2, in a fixed field order: the hold
    // that stands for the lock first (as before shared modes existed), then every holder.
    reply.map(9);
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
    reply.array(holders.len());
    for holder in holders {
        reply.map(6);
        reply.hold_fields(holder, now);
        reply.session(holder, db, key_name);
        reply.field("mode");
        reply.field(mode_name(holder.mode()));
    }
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
