//! Command bodies: each parses its arguments once into a struct, then acts on the lock.
//! After parsing, nothing a client sent can make a command fail.

pub mod acquire;
pub mod apply;
pub mod extend;
pub mod guard;
pub mod info;
pub mod release;

use std::os::raw::{c_char, c_int};
use std::slice;

use redis_module::{RedisError, raw};

use crate::config;
use crate::errors::{
    ERR_OWNER_EMPTY, ERR_TTL, ERR_TTL_RANGE, err_owner_too_long, err_ttl_above_max,
};

/// A command argument as Redis passed it: borrowed for the duration of the call, never
/// retained or freed (cheaper than the crate's owned `RedisString` on the hot path).
#[repr(transparent)]
pub struct Arg(*mut raw::RedisModuleString);

impl Arg {
    /// View a command's `argv` as arguments.
    ///
    /// # Safety
    /// `argv` must point to `argc` valid strings that outlive the returned slice, as Redis
    /// guarantees for the duration of a command call.
    pub unsafe fn slice<'a>(argv: *mut *mut raw::RedisModuleString, argc: c_int) -> &'a [Arg] {
        match usize::try_from(argc) {
            Ok(len) if !argv.is_null() => unsafe { slice::from_raw_parts(argv.cast::<Arg>(), len) },
            _ => &[],
        }
    }

    /// An argument for a string Redis handed over some other way (a key in a callback, a
    /// string the module created); the caller keeps that string alive while this is used.
    pub fn from_raw(string: *mut raw::RedisModuleString) -> Arg {
        Arg(string)
    }

    pub fn raw(&self) -> *mut raw::RedisModuleString {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        let Some(ptr_len) = (unsafe { raw::RedisModule_StringPtrLen }) else {
            return &[];
        };
        let mut len = 0;
        let ptr: *const c_char = unsafe { ptr_len(self.0, &mut len) };
        if ptr.is_null() {
            return &[];
        }
        unsafe { slice::from_raw_parts(ptr.cast::<u8>(), len) }
    }

    /// A decimal integer as Redis itself reads one (`RedisModule_StringToLongLong`).
    pub fn parse_i64(&self) -> Option<i64> {
        let to_ll = unsafe { raw::RedisModule_StringToLongLong }?;
        let mut value = 0;
        (unsafe { to_ll(self.0, &mut value) } == raw::REDISMODULE_OK as c_int).then_some(value)
    }
}

/// The server's clock in Unix milliseconds, the one its key expiry uses.
pub fn now_ms() -> i64 {
    match unsafe { raw::RedisModule_Milliseconds } {
        Some(ms) => unsafe { ms() },
        None => 0,
    }
}

/// A lease length, checked so that `now + ttl` cannot overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl(i64);

impl Ttl {
    pub fn parse(arg: &Arg, now: i64) -> Result<Ttl, RedisError> {
        let ttl = arg.parse_i64().ok_or(RedisError::Str(ERR_TTL))?;
        if ttl <= 0 {
            return Err(RedisError::Str(ERR_TTL));
        }
        now.checked_add(ttl).ok_or(RedisError::Str(ERR_TTL_RANGE))?;
        match config::max_ttl() {
            Some(max) if ttl > max => Err(RedisError::String(err_ttl_above_max(max))),
            _ => Ok(Ttl(ttl)),
        }
    }

    /// The lease end for a lease starting at `now`.
    pub fn lease_end(self, now: i64) -> i64 {
        now.saturating_add(self.0)
    }
}

/// An owner id as the client sent it, checked: non-empty, at most `dlock.max-owner-length`
/// bytes.
pub fn parse_owner(arg: &Arg) -> Result<&Arg, RedisError> {
    let limit = config::max_owner_length();
    match arg.as_bytes().len() {
        0 => Err(RedisError::Str(ERR_OWNER_EMPTY)),
        len if len > limit => Err(RedisError::String(err_owner_too_long(limit))),
        _ => Ok(arg),
    }
}
