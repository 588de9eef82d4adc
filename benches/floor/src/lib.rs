//! The floor for `DLOCK.ACQUIRE` in `make bench`, never shipped: `FLOOR.ACQUIRE key owner
//! ttl_ms` does only what the module API forces on a new key — open it, set a module value
//! (the owner), set its expiry, reply, replicate one command — and replies nil when the key
//! exists. Whatever `DLOCK.ACQUIRE` costs above this is dlock's own.
//!
//! The one command replicated is the effect, `FLOOR.APPLY key owner token lease_end_ms`, built
//! with `RedisModule_Replicate`: the lease end comes from the master's clock, so replicating the
//! command verbatim (cheaper) would let each replica decide its own. Registered like dlock's
//! commands (raw arguments, no argument vector built).

use std::os::raw::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicI64, Ordering};

use redis_module::{Context, RedisString, Status, raw, redis_module};

/// The last token granted. ACQUIRE replies with a fencing token and replicates it, so the
/// floor does too, with a number like dlock's: growing, and as long (wall-clock milliseconds
/// times 256 at load, 15 digits), where a constant reply would be a shared object that costs
/// Redis no formatting.
static TOKEN: AtomicI64 = AtomicI64::new(0);

static mut FLOOR_TYPE: *mut raw::RedisModuleType = ptr::null_mut();

/// The value: the owner's bytes.
type Owner = Vec<u8>;

unsafe extern "C" fn free(value: *mut c_void) {
    if !value.is_null() {
        drop(unsafe { Box::from_raw(value.cast::<Owner>()) });
    }
}

unsafe extern "C" fn rdb_save(io: *mut raw::RedisModuleIO, value: *mut c_void) {
    let Some(owner) = (unsafe { value.cast::<Owner>().as_ref() }) else {
        return;
    };
    if let Some(save) = unsafe { raw::RedisModule_SaveStringBuffer } {
        unsafe { save(io, owner.as_ptr().cast(), owner.len()) };
    }
}

unsafe extern "C" fn rdb_load(io: *mut raw::RedisModuleIO, _encver: c_int) -> *mut c_void {
    let (Some(load), Some(free_string)) =
        (unsafe { (raw::RedisModule_LoadStringBuffer, raw::RedisModule_Free) })
    else {
        return ptr::null_mut();
    };
    let mut len = 0;
    let buffer = unsafe { load(io, &mut len) };
    if buffer.is_null() {
        return ptr::null_mut();
    }
    let owner: Owner = unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), len) }.to_vec();
    unsafe { free_string(buffer.cast()) };
    Box::into_raw(Box::new(owner)).cast()
}

fn bytes<'a>(s: *mut raw::RedisModuleString) -> &'a [u8] {
    let Some(get) = (unsafe { raw::RedisModule_StringPtrLen }) else {
        return &[];
    };
    let mut len = 0;
    let p = unsafe { get(s, &mut len) };
    if p.is_null() {
        return &[];
    }
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
}

/// The module API entry points the floor uses, or `None` on a server without one of them.
struct Api {
    open: unsafe extern "C" fn(
        *mut raw::RedisModuleCtx,
        *mut raw::RedisModuleString,
        c_int,
    ) -> *mut raw::RedisModuleKey,
    key_type: unsafe extern "C" fn(*mut raw::RedisModuleKey) -> c_int,
    set_value: unsafe extern "C" fn(
        *mut raw::RedisModuleKey,
        *mut raw::RedisModuleType,
        *mut c_void,
    ) -> c_int,
    set_abs_expire: unsafe extern "C" fn(*mut raw::RedisModuleKey, i64) -> c_int,
    close: unsafe extern "C" fn(*mut raw::RedisModuleKey),
    to_ll: unsafe extern "C" fn(*const raw::RedisModuleString, *mut i64) -> c_int,
    reply_ll: unsafe extern "C" fn(*mut raw::RedisModuleCtx, i64) -> c_int,
}

fn api() -> Option<Api> {
    unsafe {
        Some(Api {
            open: raw::RedisModule_OpenKey?,
            key_type: raw::RedisModule_KeyType?,
            set_value: raw::RedisModule_ModuleTypeSetValue?,
            set_abs_expire: raw::RedisModule_SetAbsExpire?,
            close: raw::RedisModule_CloseKey?,
            to_ll: raw::RedisModule_StringToLongLong?,
            reply_ll: raw::RedisModule_ReplyWithLongLong?,
        })
    }
}

/// Set `key` to `owner` until `lease_end` (absolute ms); false when the key holds a value.
fn set(
    api: &Api,
    ctx: *mut raw::RedisModuleCtx,
    key: *mut raw::RedisModuleString,
    owner: &[u8],
    lease_end: i64,
) -> bool {
    let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int;
    let key = unsafe { (api.open)(ctx, key, mode) };
    let empty = unsafe { (api.key_type)(key) } == raw::REDISMODULE_KEYTYPE_EMPTY as c_int;
    if empty {
        let value = Box::into_raw(Box::new(owner.to_vec())).cast::<c_void>();
        unsafe {
            (api.set_value)(key, FLOOR_TYPE, value);
            (api.set_abs_expire)(key, lease_end);
        }
    }
    unsafe { (api.close)(key) };
    empty
}

/// The command's four arguments, or `None` once it was told it has the wrong number.
fn arguments<'a>(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
    expected: usize,
) -> Option<&'a [*mut raw::RedisModuleString]> {
    if usize::try_from(argc) != Ok(expected) {
        if let Some(wrong_arity) = unsafe { raw::RedisModule_WrongArity } {
            unsafe { wrong_arity(ctx) };
        }
        return None;
    }
    Some(unsafe { std::slice::from_raw_parts(argv, expected) })
}

unsafe extern "C" fn acquire(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    let ok = raw::REDISMODULE_OK as c_int;
    let Some(args) = arguments(ctx, argv, argc, 4) else {
        return ok;
    };
    let (Some(api), Some(replicate), Some(milliseconds), Some(reply_null), Some(reply_error)) = (
        api(),
        unsafe { raw::RedisModule_Replicate },
        unsafe { raw::RedisModule_Milliseconds },
        unsafe { raw::RedisModule_ReplyWithNull },
        unsafe { raw::RedisModule_ReplyWithError },
    ) else {
        return ok;
    };
    let mut ttl: i64 = 0;
    if unsafe { (api.to_ll)(args[3], &mut ttl) } != ok || ttl <= 0 {
        return unsafe { reply_error(ctx, c"ERR invalid ttl".as_ptr()) };
    }
    let lease_end = unsafe { milliseconds() }.saturating_add(ttl);
    if !set(&api, ctx, args[1], bytes(args[2]), lease_end) {
        return unsafe { reply_null(ctx) };
    }
    let token = TOKEN.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    let (token_digits, digits) = (token.to_string(), lease_end.to_string());
    unsafe {
        replicate(
            ctx,
            c"FLOOR.APPLY".as_ptr(),
            c"ssbb".as_ptr(),
            args[1],
            args[2],
            token_digits.as_ptr(),
            token_digits.len(),
            digits.as_ptr(),
            digits.len(),
        );
        (api.reply_ll)(ctx, token)
    }
}

/// `FLOOR.APPLY key owner token lease_end_ms`: the effect replicas and the AOF receive.
unsafe extern "C" fn apply(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    let ok = raw::REDISMODULE_OK as c_int;
    let Some(args) = arguments(ctx, argv, argc, 5) else {
        return ok;
    };
    let (Some(api), Some(verbatim)) = (api(), unsafe { raw::RedisModule_ReplicateVerbatim }) else {
        return ok;
    };
    let (mut token, mut lease_end): (i64, i64) = (0, 0);
    if unsafe { (api.to_ll)(args[3], &mut token) } != ok
        || unsafe { (api.to_ll)(args[4], &mut lease_end) } != ok
    {
        return unsafe { (api.reply_ll)(ctx, 0) };
    }
    TOKEN.fetch_max(token, Ordering::Relaxed);
    let applied = set(&api, ctx, args[1], bytes(args[2]), lease_end);
    unsafe {
        verbatim(ctx);
        (api.reply_ll)(ctx, i64::from(applied))
    }
}

fn init(ctx: &Context, _args: &[RedisString]) -> Status {
    let Some(milliseconds) = (unsafe { raw::RedisModule_Milliseconds }) else {
        return Status::Err;
    };
    TOKEN.store(
        unsafe { milliseconds() }.saturating_mul(256),
        Ordering::Relaxed,
    );
    let mut methods = raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: None,
        mem_usage: None,
        digest: None,
        free: Some(free),
        aux_load: None,
        aux_save: None,
        aux_save_triggers: 0,
        free_effort: None,
        unlink: None,
        copy: None,
        defrag: None,
        mem_usage2: None,
        free_effort2: None,
        unlink2: None,
        copy2: None,
        aux_save2: None,
    };
    let (Some(create_type), Some(create_command)) = (unsafe {
        (
            raw::RedisModule_CreateDataType,
            raw::RedisModule_CreateCommand,
        )
    }) else {
        return Status::Err;
    };
    let created = unsafe { create_type(ctx.get_raw(), c"floorlock".as_ptr(), 0, &mut methods) };
    if created.is_null() {
        return Status::Err;
    }
    unsafe { FLOOR_TYPE = created };
    let flags = c"write deny-oom fast";
    for (name, command) in [
        (
            c"FLOOR.ACQUIRE",
            acquire as unsafe extern "C" fn(_, _, _) -> c_int,
        ),
        (c"FLOOR.APPLY", apply),
    ] {
        let created = unsafe {
            create_command(
                ctx.get_raw(),
                name.as_ptr(),
                Some(command),
                flags.as_ptr(),
                1,
                1,
                1,
            )
        };
        if created != raw::REDISMODULE_OK as c_int {
            return Status::Err;
        }
    }
    Status::Ok
}

redis_module! {
    name: "dlockfloor",
    version: 1,
    allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
    data_types: [],
    init: init,
}
