//! A command argument (or any string Redis lends the module), read without copying.

use std::os::raw::{c_char, c_int};
use std::slice;

use redis_module::raw;

/// A string Redis passed in: borrowed for the duration of the call, never retained or freed
/// (cheaper than the crate's owned `RedisString` on the hot path).
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
