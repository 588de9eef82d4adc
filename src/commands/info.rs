//! `DLOCK.INFO key`

use std::os::raw::{c_char, c_long};

use redis_module::{Context, RedisError, RedisResult, RedisValue, raw};

use super::{Arg, now_ms};
use crate::blocking;
use crate::key::LockKey;
use crate::session;

pub fn run(ctx: &Context, args: &[Arg]) -> RedisResult {
    let [_, name] = args else {
        return Err(RedisError::WrongArity);
    };
    let now = now_ms();
    let mut key = LockKey::open_read(ctx, name);
    let Some(hold) = key.lock()?.and_then(|lock| lock.holder(now)) else {
        return Ok(RedisValue::Null);
    };
    // A map in RESP3, a flat field-value array in RESP2, in a fixed field order.
    let ctx = ctx.get_raw();
    let db = blocking::selected_db(ctx);
    let waiters = blocking::waiting(db, name.as_bytes());
    let session = session::is_bound(db, name.as_bytes(), &hold.owner, hold.token);
    let fields: [(&str, Field); 6] = [
        ("owner", Field::Bytes(&hold.owner)),
        ("token", Field::Int(hold.token)),
        ("ttl", Field::Int(hold.lease_end.saturating_sub(now))),
        ("holds", Field::Int(i64::from(hold.count))),
        (
            "waiters",
            Field::Int(i64::try_from(waiters).unwrap_or(i64::MAX)),
        ),
        ("session", Field::Int(i64::from(session))),
    ];
    unsafe {
        let (Some(map), Some(bulk), Some(int)) = (
            raw::RedisModule_ReplyWithMap,
            raw::RedisModule_ReplyWithStringBuffer,
            raw::RedisModule_ReplyWithLongLong,
        ) else {
            return Ok(RedisValue::Null);
        };
        map(ctx, fields.len() as c_long);
        for (name, value) in fields {
            bulk(ctx, name.as_ptr().cast::<c_char>(), name.len());
            match value {
                Field::Bytes(b) => bulk(ctx, b.as_ptr().cast::<c_char>(), b.len()),
                Field::Int(i) => int(ctx, i),
            };
        }
    }
    Ok(RedisValue::NoReply)
}

enum Field<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}
