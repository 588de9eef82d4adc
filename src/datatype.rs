//! The module data type `dlocklock`: how a lock is saved, loaded, rewritten into the AOF,
//! copied, digested and measured, plus the aux field that carries the token clock in RDB files.
//!
//! Every callback is entered from C: none may panic, and `rdb_load` must turn any malformed
//! input (a corrupt file, a forged `RESTORE` payload) into a clean load failure.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use redis_module::raw;

use crate::arg::Arg;
use crate::blocking;
use crate::errors::{ERR_HOLD_DUPLICATE, ERR_HOLD_INVALID, ERR_HOLD_RULES, ERR_HOLD_UNREADABLE};
use crate::holds::Owner;
use crate::lock::{Hold, HoldState, Lock, Mode};
use crate::metrics;
use crate::replicate;
use crate::server::now_ms;
use crate::token::CLOCK;
use crate::validate;

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
        // Redis 7.2+ only: 7.0 ignores it and calls `aux_save`.
        aux_save2: Some(aux_save2),
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
        let key = key_name(rdb);
        log_io(
            rdb,
            &format!(
                "dlock: cannot load key '{key}': {}",
                version_refusal(encver)
            ),
        );
        return ptr::null_mut();
    }
    match load_lock(rdb, encver, now_ms()) {
        Ok((lock, highest)) => {
            CLOCK.observe(highest);
            metrics::LOCKS.incr();
            Box::into_raw(Box::new(lock)).cast()
        }
        Err(error) => {
            let reason = error.strip_prefix("ERR ").unwrap_or(error);
            let key = key_name(rdb);
            log_io(rdb, &format!("dlock: cannot load key '{key}': {reason}"));
            ptr::null_mut()
        }
    }
}

/// Read and check a whole value before anything else sees it: a refused value (a corrupt
/// file, a forged `RESTORE` payload) must leave no trace, and above all must not move the
/// token clock, so the highest token is returned for the caller to observe once the value is
/// accepted.
fn load_lock(
    rdb: *mut raw::RedisModuleIO,
    encver: c_int,
    now: i64,
) -> Result<(Lock, i64), &'static str> {
    let unreadable = |_| ERR_HOLD_UNREADABLE;
    let count = raw::load_unsigned(rdb).map_err(unreadable)?;
    let reserve = usize::try_from(count).map_or(LOAD_RESERVE_LIMIT, |n| n.min(LOAD_RESERVE_LIMIT));
    let mut holds = Vec::with_capacity(reserve);
    let mut highest = 0;
    for _ in 0..count {
        let owner = raw::load_string_buffer(rdb).map_err(unreadable)?;
        let token = raw::load_signed(rdb).map_err(unreadable)?;
        let count = raw::load_unsigned(rdb).map_err(unreadable)?;
        let lease_end = raw::load_signed(rdb).map_err(unreadable)?;
        let mode = match encver {
            1 => Mode::Exclusive,
            _ => {
                let code = raw::load_unsigned(rdb).map_err(unreadable)?;
                Mode::from_code(u32::try_from(code).map_err(|_| ERR_HOLD_UNREADABLE)?)
            }
        };
        let state = HoldState {
            token,
            count: u32::try_from(count).map_err(|_| ERR_HOLD_UNREADABLE)?,
            lease_end,
            mode,
        };
        if state.count == 0 {
            return Err(ERR_HOLD_INVALID);
        }
        validate::check_fields(owner.as_ref(), state, now)?;
        holds.push(Hold::new(Owner::from(owner.as_ref()), state));
        highest = highest.max(token);
    }
    let lock = Lock::from_holds(holds);
    if !lock.is_consistent() {
        return Err(broken_rule(lock.holds(), now));
    }
    Ok((lock, highest))
}

/// Which rule the holds of a refused value break: the first hold that, added to the ones
/// before it, breaks one. Only refused values pay for this second pass.
fn broken_rule(holds: &[Hold], now: i64) -> &'static str {
    let mut lock = Lock::new();
    for hold in holds {
        match validate::check_hold(&lock, &hold.owner, hold.state(), now) {
            Ok(None) => lock.apply(&hold.owner, hold.state()),
            Ok(Some(_)) => return ERR_HOLD_DUPLICATE,
            Err(error) => return error,
        }
    }
    ERR_HOLD_RULES
}

/// Why a value or aux field of encoding `encver` is not read at all.
fn version_refusal(encver: c_int) -> String {
    if encver > ENCODING_VERSION {
        format!(
            "encoding version {encver} is newer than this module understands (max \
             {ENCODING_VERSION}): load it with the dlock version that wrote it, or a newer one"
        )
    } else {
        format!("encoding version {encver} was never written by dlock")
    }
}

/// The name of the key being loaded, printable; empty for aux fields.
fn key_name(rdb: *mut raw::RedisModuleIO) -> String {
    let api = unsafe {
        (
            raw::RedisModule_GetKeyNameFromIO,
            raw::RedisModule_StringPtrLen,
        )
    };
    let (Some(name_of), Some(ptr_len)) = api else {
        return String::new();
    };
    let name = unsafe { name_of(rdb) };
    if name.is_null() {
        return String::new();
    }
    let mut len = 0;
    let bytes = unsafe { ptr_len(name, &mut len) };
    if bytes.is_null() {
        return String::new();
    }
    let bytes = unsafe { std::slice::from_raw_parts(bytes.cast::<u8>(), len) };
    bytes.escape_ascii().to_string()
}

/// Log from an RDB callback, where Redis reports the load's failure just after. The message
/// is an argument, never the format: key names may hold `%`.
fn log_io(rdb: *mut raw::RedisModuleIO, message: &str) {
    let Some(log) = (unsafe { raw::RedisModule_LogIOError }) else {
        return;
    };
    let message = CString::new(message.replace('\0', "\\x00")).unwrap_or_default();
    unsafe {
        log(
            rdb,
            c"warning".as_ptr(),
            c"%s".as_ptr(),
            message.as_ptr().cast::<c_char>(),
        )
    };
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

/// With `aof-use-rdb-preamble no`, a rewritten AOF recreates each key with the multi-hold
/// `DLOCK.APPLY key HOLDS n ...`, `replicate::HOLDS_PER_COMMAND` holds a command (the `v`
/// format passes a variable number of arguments): replay costs O(log n) per hold, where a
/// command per hold would pay the command's fixed costs n times. Redis appends the key's
/// `PEXPIREAT` itself.
unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    let api = unsafe {
        (
            raw::RedisModule_EmitAOF,
            raw::RedisModule_CreateString,
            raw::RedisModule_CreateStringFromLongLong,
            raw::RedisModule_FreeString,
        )
    };
    let (Some(lock), (Some(emit), Some(string), Some(number), Some(free_string))) =
        (lock_ref(value), api)
    else {
        return;
    };
    // No context in a rewrite: strings made with none are freed by hand below.
    let ctx = ptr::null_mut();
    let mut argv: Vec<*mut raw::RedisModuleString> = Vec::new();
    for chunk in lock.holds().chunks(replicate::HOLDS_PER_COMMAND) {
        let word = replicate::HOLDS_WORD;
        argv.push(unsafe { string(ctx, word.as_ptr().cast::<c_char>(), word.len()) });
        argv.push(unsafe { number(ctx, chunk.len() as i64) });
        for hold in chunk {
            let owner = hold.owner.as_ptr().cast::<c_char>();
            argv.push(unsafe { string(ctx, owner, hold.owner.len()) });
            argv.push(unsafe { number(ctx, hold.token) });
            argv.push(unsafe { number(ctx, i64::from(hold.count)) });
            argv.push(unsafe { number(ctx, hold.lease_end) });
            argv.push(unsafe { number(ctx, i64::from(hold.mode().code())) });
        }
        unsafe {
            emit(
                aof,
                replicate::COMMAND.as_ptr(),
                c"sv".as_ptr(),
                key,
                argv.as_mut_ptr(),
                argv.len(),
            )
        };
        for arg in argv.drain(..) {
            unsafe { free_string(ctx, arg) };
        }
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
/// A hash of that name: a lock overwritten by another type gets no event that would consume
/// the address, and a later name object may be allocated at the same address.
static UNLINKED_NAME: AtomicU64 = AtomicU64::new(0);

/// FNV-1a: enough to tell two key names apart here.
fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

unsafe extern "C" fn unlink(key: *mut raw::RedisModuleString, _value: *const c_void) {
    let name = Arg::from_raw(key);
    UNLINKED.store(key as usize, Ordering::Relaxed);
    UNLINKED_NAME.store(name_hash(name.as_bytes()), Ordering::Relaxed);
    blocking::lock_unlinked(name.as_bytes());
}

/// Whether `key` (the name object of a keyspace event) is the lock just removed; forgets it
/// either way, so a later event never matches a stale name.
pub fn was_unlinked(key: *mut raw::RedisModuleString) -> bool {
    let same_object = UNLINKED.swap(0, Ordering::Relaxed) == key as usize;
    let name = UNLINKED_NAME.swap(0, Ordering::Relaxed);
    same_object && !key.is_null() && name == name_hash(Arg::from_raw(key).as_bytes())
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
/// Redis 7.0 writes the field's header before calling this: an RDB file of a server that
/// loaded dlock needs dlock to load, locks or not (README, Operations).
unsafe extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, _when: c_int) {
    raw::save_signed(rdb, CLOCK.last());
}

/// Redis 7.2+ calls this instead of `aux_save`, and leaves the field out of the file when it
/// writes nothing: a server that never issued nor saw a token (so holds no lock either) then
/// writes RDB files that load without the module.
unsafe extern "C" fn aux_save2(rdb: *mut raw::RedisModuleIO, _when: c_int) {
    let last = CLOCK.last();
    if last != 0 {
        raw::save_signed(rdb, last);
    }
}

/// A clock too far ahead refuses the whole file: raising `last` to it could use up the token
/// space for good (see `validate::check_hold`).
unsafe extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, encver: c_int, _when: c_int) -> c_int {
    if !(1..=ENCODING_VERSION).contains(&encver) {
        let reason = version_refusal(encver);
        log_io(
            rdb,
            &format!("dlock: cannot load the token clock (RDB aux field): {reason}"),
        );
        return raw::REDISMODULE_ERR as c_int;
    }
    match raw::load_signed(rdb) {
        Ok(last) if CLOCK.plausible(last, now_ms()) => {
            CLOCK.observe(last);
            raw::REDISMODULE_OK as c_int
        }
        Ok(last) => {
            log_io(
                rdb,
                &format!(
                    "dlock: cannot load the RDB: its token clock (aux field, last token {last}) \
                     leads this server's clock by more than dlock.max-token-lead. The file is \
                     corrupt or forged, or this server's clock is far behind the one that wrote \
                     it; `dlock.max-token-lead 0` disables the check."
                ),
            );
            raw::REDISMODULE_ERR as c_int
        }
        Err(_) => {
            log_io(
                rdb,
                "dlock: cannot load the token clock (RDB aux field): it is unreadable",
            );
            raw::REDISMODULE_ERR as c_int
        }
    }
}
