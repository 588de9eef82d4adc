//! The floor for `DLOCK.ACQUIRE` in `make bench`, never shipped: `FLOOR.ACQUIRE key owner
//! ttl_ms` does only what the module API forces on a new key — open it, set a module value
//! (the owner), set its expiry, reply, replicate one command (itself, verbatim) — and replies
//! nil when the key exists. Whatever `DLOCK.ACQUIRE` costs above this is dlock's own.
//! Registered like dlock's commands (raw arguments, no argument vector built).

use std::os::raw::{c_int, c_void};
use std::ptr;

use redis_module::{Context, RedisString, Status, raw, redis_module};

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

unsafe extern "C" fn acquire(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    let ok = raw::REDISMODULE_OK as c_int;
    if argc != 4 {
        return unsafe { raw::RedisModule_WrongArity.map_or(ok, |f| f(ctx)) };
    }
    let args = unsafe { std::slice::from_raw_parts(argv, 4) };
    let (
        Some(open),
        Some(key_type),
        Some(set_value),
        Some(set_expire),
        Some(close),
        Some(to_ll),
        Some(reply_ll),
        Some(reply_null),
        Some(reply_error),
        Some(verbatim),
    ) = (unsafe {
        (
            raw::RedisModule_OpenKey,
            raw::RedisModule_KeyType,
            raw::RedisModule_ModuleTypeSetValue,
            raw::RedisModule_SetExpire,
            raw::RedisModule_CloseKey,
            raw::RedisModule_StringToLongLong,
            raw::RedisModule_ReplyWithLongLong,
            raw::RedisModule_ReplyWithNull,
            raw::RedisModule_ReplyWithError,
            raw::RedisModule_ReplicateVerbatim,
        )
    })
    else {
        return ok;
    };
    let mut ttl: i64 = 0;
    if unsafe { to_ll(args[3], &mut ttl) } != ok || ttl <= 0 {
        return unsafe { reply_error(ctx, c"ERR invalid ttl".as_ptr()) };
    }
    let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int;
    let key = unsafe { open(ctx, args[1], mode) }.cast::<raw::RedisModuleKey>();
    if unsafe { key_type(key) } != raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
        unsafe { close(key) };
        return unsafe { reply_null(ctx) };
    }
    let owner: Owner = bytes(args[2]).to_vec();
    let value = Box::into_raw(Box::new(owner)).cast::<c_void>();
    unsafe {
        set_value(key, FLOOR_TYPE, value);
        set_expire(key, ttl);
        close(key);
        verbatim(ctx);
        reply_ll(ctx, 1)
    }
}

fn init(ctx: &Context, _args: &[RedisString]) -> Status {
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
    let name = c"FLOOR.ACQUIRE";
    if unsafe {
        create_command(
            ctx.get_raw(),
            name.as_ptr(),
            Some(acquire),
            flags.as_ptr(),
            1,
            1,
            1,
        )
    } != raw::REDISMODULE_OK as c_int
    {
        return Status::Err;
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
