//! The module data type `dlocklock`: how a lock is saved, loaded, rewritten into the AOF,
//! copied, digested and measured, plus the aux field that carries the token clock in RDB files.
//!
//! Every callback is entered from C: none may panic, and `rdb_load` must turn any malformed
//! input (a corrupt file, a forged `RESTORE` payload) into a clean load failure.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use redis_module::raw;

use crate::holds::Owner;
use crate::lock::{Hold, HoldState, Lock, Mode};
use crate::metrics;
use crate::replicate;
use crate::server::now_ms;
use crate::token::CLOCK;

/// Module type names are exactly nine characters; this one is what `TYPE key` shows.
const TYPE_NAME: &CStr = c"dlocklock";

/// Encoding version 2: `holds` (unsigned), then per hold: owner (string), token (signed),
/// count (unsigned), lease end in Unix ms (signed), mode (unsigned: 0 exclusive, 2^32 − 1
/// shared, otherwise a semaphore's limit). Version 1 (dlock before shared locks and
/// semaphores) is the same without the mode: every hold exclusive. The aux field: last token
/// (signed).
const ENCODING_VERSION: c_int = 2;

/// No more holds than this are reserved up front when loading, whatever a payload claims.
const LOAD_RESERVE_LIMIT: usize = 16;

static LOCK_TYPE: AtomicPtr<raw::RedisModuleType> = AtomicPtr::new(ptr::null_mut());

pub fn lock_type() -> *mut raw::RedisModuleType {
    LOCK_TYPE.load(Ordering::Relaxed)
}

/// Create the data type; called once from `RedisModule_OnLoad`.
pub fn register(ctx: *mut raw::RedisModuleCtx) -> Result<(), &'static str> {
    let mut methods = raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: Some(aof_rewrite),
        mem_usage: Some(mem_usage),
        digest: Some(digest),
        free: Some(free),
        aux_load: Some(aux_load),
        aux_save: Some(aux_save),
        aux_save_triggers: raw::REDISMODULE_AUX_BEFORE_RDB as c_int,
        free_effort: None,
        unlink: Some(unlink),
        copy: Some(copy),
        defrag: None,
        mem_usage2: None,
        free_effort2: None,
        unlink2: None,
        copy2: None,
        // Redis 7.2+ only; 7.0 would not call it, so the aux field goes through `aux_save`.
        aux_save2: None,
    };
    let create = unsafe { raw::RedisModule_CreateDataType }.ok_or("no CreateDataType API")?;
    let created = unsafe { create(ctx, TYPE_NAME.as_ptr(), ENCODING_VERSION, &mut methods) };
    if created.is_null() {
        return Err("the server refused to create the dlocklock data type");
    }
    LOCK_TYPE.store(created, Ordering::Relaxed);
    Ok(())
}

fn lock_ref<'a>(value: *const c_void) -> Option<&'a Lock> {
    unsafe { value.cast::<Lock>().as_ref() }
}

unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    if !(1..=ENCODING_VERSION).contains(&encver) {
        return ptr::null_mut();
    }
    match load_lock(rdb, encver) {
        Some(lock) => {
            metrics::LOCKS.incr();
            Box::into_raw(Box::new(lock)).cast()
        }
        None => ptr::null_mut(),
    }
}

fn load_lock(rdb: *mut raw::RedisModuleIO, encver: c_int) -> Option<Lock> {
    let count = usize::try_from(raw::load_unsigned(rdb).ok()?).ok()?;
    let mut holds = Vec::with_capacity(count.min(LOAD_RESERVE_LIMIT));
    for _ in 0..count {
        let owner = Owner::from(raw::load_string_buffer(rdb).ok()?.as_ref());
        let token = raw::load_signed(rdb).ok()?;
        let count = u32::try_from(raw::load_unsigned(rdb).ok()?).ok()?;
        let lease_end = raw::load_signed(rdb).ok()?;
        let mode = match encver {
            1 => Mode::Exclusive,
            _ => Mode::from_code(u32::try_from(raw::load_unsigned(rdb).ok()?).ok()?),
        };
        if owner.is_empty() || token <= 0 || count == 0 {
            return None;
        }
        CLOCK.observe(token);
        let state = HoldState {
            token,
            count,
            lease_end,
            mode,
        };
        holds.push(Hold::new(owner, state));
    }
    let lock = Lock::from_holds(holds);
    lock.is_consistent().then_some(lock)
}

unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    let Some(lock) = lock_ref(value) else { return };
    raw::save_unsigned(rdb, lock.holds().len() as u64);
    for hold in lock.holds() {
        raw::save_slice(rdb, &hold.owner);
        raw::save_signed(rdb, hold.token);
        raw::save_unsigned(rdb, u64::from(hold.count));
        raw::save_signed(rdb, hold.lease_end);
        raw::save_unsigned(rdb, u64::from(hold.mode().code()));
    }
}

/// With `aof-use-rdb-preamble no`, a rewritten AOF recreates each hold with the same command
/// a master replicates. Redis appends the key's `PEXPIREAT` itself.
unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    let (Some(lock), Some(emit)) = (lock_ref(value), unsafe { raw::RedisModule_EmitAOF }) else {
        return;
    };
    for hold in lock.holds() {
        let mode = hold.mode();
        unsafe {
            emit(
                aof,
                replicate::COMMAND.as_ptr(),
                replicate::format(mode).as_ptr(),
                key,
                hold.owner.as_ptr().cast::<c_char>(),
                hold.owner.len(),
                hold.token,
                i64::from(hold.count),
                hold.lease_end,
                replicate::mode_word(mode).as_ptr(),
                i64::from(replicate::limit(mode)),
            )
        };
    }
}

unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    lock_ref(value).map_or(0, |lock| size_of::<Lock>().saturating_add(lock.heap_size()))
}

/// For `DEBUG DIGEST`: equal digests on a master and its replica mean equal locks.
unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    let api = unsafe {
        (
            raw::RedisModule_DigestAddStringBuffer,
            raw::RedisModule_DigestAddLongLong,
            raw::RedisModule_DigestEndSequence,
        )
    };
    let (Some(lock), (Some(add_buffer), Some(add_int), Some(end))) = (lock_ref(value), api) else {
        return;
    };
    for hold in lock.holds() {
        unsafe {
            add_buffer(md, hold.owner.as_ptr().cast(), hold.owner.len());
            add_int(md, hold.token);
            add_int(md, i64::from(hold.count));
            add_int(md, hold.lease_end);
            add_int(md, i64::from(hold.mode().code()));
            end(md);
        }
    }
}

/// Also counts holds whose lease ended without a release (a key expiring with its holder).
/// May run on a lazyfree thread: touches nothing but the value and atomic counters.
unsafe extern "C" fn free(value: *mut c_void) {
    if value.is_null() {
        return;
    }
    let lock = unsafe { Box::from_raw(value.cast::<Lock>()) };
    let now = now_ms();
    let ended = lock.holds().iter().filter(|h| !h.is_live(now)).count();
    metrics::LEASES_EXPIRED.add(ended as u64);
    metrics::LOCKS.decr();
}

/// The key name object of the lock last removed from the keyspace, as an address: Redis
/// removes an evicted key, then announces it (`evicted`) with the same name object, and the
/// announcement does not say what type the key held.
static UNLINKED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn unlink(key: *mut raw::RedisModuleString, _value: *const c_void) {
    UNLINKED.store(key as usize, Ordering::Relaxed);
}

/// Whether `key` (the name object of a keyspace event) is the lock just removed; forgets it
/// either way, so a later event never matches a stale name.
pub fn was_unlinked(key: *mut raw::RedisModuleString) -> bool {
    UNLINKED.swap(0, Ordering::Relaxed) == key as usize
}

/// `COPY` duplicates the lock: same owners, tokens and leases under the new name.
unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    match lock_ref(value) {
        Some(lock) => {
            metrics::LOCKS.incr();
            Box::into_raw(Box::new(lock.clone())).cast()
        }
        None => ptr::null_mut(),
    }
}

/// The token clock travels in every RDB file (and so in full syncs and `DEBUG RELOAD`), so
/// tokens of locks released before the snapshot are never issued again after loading it.
unsafe extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, _when: c_int) {
    raw::save_signed(rdb, CLOCK.last());
}

unsafe extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, encver: c_int, _when: c_int) -> c_int {
    if !(1..=ENCODING_VERSION).contains(&encver) {
        return raw::REDISMODULE_ERR as c_int;
    }
    match raw::load_signed(rdb) {
        Ok(last) => {
            CLOCK.observe(last);
            raw::REDISMODULE_OK as c_int
        }
        Err(_) => raw::REDISMODULE_ERR as c_int,
    }
}
