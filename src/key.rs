//! A key opened through the module key API, holding (or about to hold) a lock.
//!
//! A thin RAII layer over `RedisModule_OpenKey`: the type check that replies `WRONGTYPE`, the
//! value, the absolute expiry that is the lock's lease, and deletion. Every raw call checks
//! that the server exported the function instead of unwrapping it.

use std::os::raw::c_int;
use std::ptr;

use redis_module::raw;
use redis_module::{Context, RedisError};

use crate::arg::Arg;
use crate::datatype;
use crate::errors::{ERR_KEY_UNWRITABLE, refused};
use crate::lock::Lock;
use crate::metrics;

/// How long a lock with no hold stays for the clients waiting for it: they are served in the
/// same event-loop turn, so this only bounds a key nobody came for.
const HANDOVER_GRACE_MS: i64 = 10_000;

pub struct LockKey {
    ctx: *mut raw::RedisModuleCtx,
    name: *mut raw::RedisModuleString,
    key: *mut raw::RedisModuleKey,
}

impl LockKey {
    pub fn open_read(ctx: &Context, name: &Arg) -> Self {
        Self::open(ctx, name, raw::REDISMODULE_READ)
    }

    pub fn open_write(ctx: &Context, name: &Arg) -> Self {
        Self::open(ctx, name, raw::REDISMODULE_READ | raw::REDISMODULE_WRITE)
    }

    fn open(ctx: &Context, name: &Arg, mode: u32) -> Self {
        let ctx = ctx.get_raw();
        let key = match unsafe { raw::RedisModule_OpenKey } {
            Some(open) => unsafe { open(ctx, name.raw(), mode as c_int) }.cast(),
            None => ptr::null_mut(),
        };
        LockKey {
            ctx,
            name: name.raw(),
            key,
        }
    }

    /// The lock stored at this key: `None` for an empty key, `WRONGTYPE` for any other type.
    pub fn lock(&mut self) -> Result<Option<&mut Lock>, RedisError> {
        let key_type = self.key_type().ok_or(RedisError::WrongType)?;
        if key_type == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
            return Ok(None);
        }
        let api = unsafe {
            (
                raw::RedisModule_ModuleTypeGetType,
                raw::RedisModule_ModuleTypeGetValue,
            )
        };
        let (Some(get_type), Some(get_value)) = api else {
            return Err(RedisError::WrongType);
        };
        if key_type != raw::REDISMODULE_KEYTYPE_MODULE as c_int
            || unsafe { get_type(self.key) } != datatype::lock_type()
        {
            return Err(RedisError::WrongType);
        }
        let value = unsafe { get_value(self.key) }.cast::<Lock>();
        Ok(unsafe { value.as_mut() })
    }

    /// Whether the key holds nothing (nor anything of another type).
    pub fn is_empty(&self) -> bool {
        self.key_type() == Some(raw::REDISMODULE_KEYTYPE_EMPTY as c_int)
    }

    /// The key's `REDISMODULE_KEYTYPE_*` (empty for a key that could not be opened); `None`
    /// when the server lacks the function.
    fn key_type(&self) -> Option<c_int> {
        if self.key.is_null() {
            return Some(raw::REDISMODULE_KEYTYPE_EMPTY as c_int);
        }
        let key_type = unsafe { raw::RedisModule_KeyType }?;
        Some(unsafe { key_type(self.key) })
    }

    /// The lock stored at this key, or a new empty lock stored in the empty key.
    pub fn lock_or_insert(&mut self) -> Result<&mut Lock, RedisError> {
        if self.lock()?.is_none() {
            return self.insert(Lock::new());
        }
        self.lock()?.ok_or(RedisError::Str(ERR_KEY_UNWRITABLE))
    }

    /// Store `lock` in this key, which must be empty.
    pub fn insert(&mut self, lock: Lock) -> Result<&mut Lock, RedisError> {
        let value = Box::into_raw(Box::new(lock));
        let stored = match unsafe { raw::RedisModule_ModuleTypeSetValue } {
            Some(set) if !self.key.is_null() => unsafe {
                set(self.key, datatype::lock_type(), value.cast())
            },
            _ => raw::REDISMODULE_ERR as c_int,
        };
        if stored != raw::REDISMODULE_OK as c_int {
            drop(unsafe { Box::from_raw(value) });
            return Err(refused(ERR_KEY_UNWRITABLE));
        }
        metrics::LOCKS.incr();
        // The key owns the value now, and this handle is the only way to it until closed.
        unsafe { value.as_mut() }.ok_or(RedisError::Str(ERR_KEY_UNWRITABLE))
    }

    /// Write back a changed lock and tell WATCH and client-side caching (the module runs with
    /// `NO_IMPLICIT_SIGNAL_MODIFIED`, so a refused acquire does not abort a watcher). The key
    /// expires with its latest lease. A lock left with no hold is deleted, unless clients
    /// wait for it: then it stays, briefly, so Redis offers it to them (Redis 7.0 serves
    /// clients blocked on a key only while the key exists).
    pub fn commit(&mut self, waiters: bool, now: i64) {
        let expires_at = match self.lock() {
            Ok(Some(lock)) if !lock.is_empty() => lock.expires_at(),
            Ok(Some(_)) if waiters => Some(now.saturating_add(HANDOVER_GRACE_MS)),
            _ => None,
        };
        self.commit_expiry(expires_at);
    }

    /// `commit` for a lock whose latest lease is known to end at `lease_end`.
    pub fn commit_lease(&mut self, lease_end: i64) {
        self.commit_expiry(Some(lease_end));
    }

    /// Expire the key at `expires_at`, or delete it (`None`), and tell watchers.
    fn commit_expiry(&mut self, expires_at: Option<i64>) {
        if self.key.is_null() {
            return;
        }
        unsafe {
            match (
                expires_at,
                raw::RedisModule_SetAbsExpire,
                raw::RedisModule_DeleteKey,
            ) {
                (Some(at), Some(set_expire), _) => {
                    set_expire(self.key, at);
                }
                (None, _, Some(delete)) => {
                    delete(self.key);
                    // No keyspace event follows a module's delete to consume the name.
                    datatype::was_unlinked(self.name);
                }
                _ => {}
            }
            if let Some(signal) = raw::RedisModule_SignalModifiedKey {
                signal(self.ctx, self.name);
            }
        }
    }

    /// The key's absolute expiry in Unix ms, if it has one.
    pub fn expiry(&self) -> Option<i64> {
        let get = unsafe { raw::RedisModule_GetAbsExpire }?;
        if self.key.is_null() {
            return None;
        }
        Some(unsafe { get(self.key) }).filter(|at| *at >= 0)
    }
}

impl Drop for LockKey {
    fn drop(&mut self) {
        if let (Some(close), false) = (unsafe { raw::RedisModule_CloseKey }, self.key.is_null()) {
            unsafe { close(self.key) };
        }
    }
}
