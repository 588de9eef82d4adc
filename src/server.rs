//! What the module asks the server about itself: the clock, the selected database, the
//! calling client, and whether it may write now.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

use redis_module::{RedisString, raw};

/// The server's clock in Unix milliseconds, the one its key expiry uses.
pub fn now_ms() -> i64 {
    match unsafe { raw::RedisModule_Milliseconds } {
        Some(ms) => unsafe { ms() },
        None => 0,
    }
}

pub fn selected_db(ctx: *mut raw::RedisModuleCtx) -> c_int {
    match unsafe { raw::RedisModule_GetSelectedDb } {
        Some(db) => unsafe { db(ctx) },
        None => 0,
    }
}

/// Select database `db` and make a key name for it: for contexts that did not come from a
/// client's command on that key (timers, events). Keep the string while the key is used.
pub fn key_name(ctx: *mut raw::RedisModuleCtx, db: c_int, name: &[u8]) -> RedisString {
    if let Some(select) = unsafe { raw::RedisModule_SelectDb } {
        unsafe { select(ctx, db) };
    }
    RedisString::create_from_slice(ctx, name)
}

fn context_flags(ctx: *mut raw::RedisModuleCtx) -> c_int {
    match unsafe { raw::RedisModule_GetContextFlags } {
        Some(flags) => unsafe { flags(ctx) },
        None => 0,
    }
}

fn has_flag(ctx: *mut raw::RedisModuleCtx, flag: u32) -> bool {
    context_flags(ctx) & flag as c_int != 0
}

pub fn is_master(ctx: *mut raw::RedisModuleCtx) -> bool {
    has_flag(ctx, raw::REDISMODULE_CTX_FLAGS_MASTER)
}

/// The role as of the last role change, for the commands' hot path
/// (`RedisModule_GetContextFlags` computes every flag, about a hundred instructions).
static MASTER: AtomicBool = AtomicBool::new(true);

/// Read the role again: at load and on every role change (`recovery.rs` hears of them).
pub fn note_role(ctx: *mut raw::RedisModuleCtx) {
    MASTER.store(is_master(ctx), Ordering::Relaxed);
}

/// Whether this server is a master, as of the last role change.
pub fn is_master_now() -> bool {
    MASTER.load(Ordering::Relaxed)
}

pub fn in_cluster(ctx: *mut raw::RedisModuleCtx) -> bool {
    has_flag(ctx, raw::REDISMODULE_CTX_FLAGS_CLUSTER)
}

/// The command came from this server's master (its replication stream) or from the AOF.
pub fn is_replicated_or_loading(ctx: *mut raw::RedisModuleCtx) -> bool {
    has_flag(ctx, raw::REDISMODULE_CTX_FLAGS_REPLICATED)
        || has_flag(ctx, raw::REDISMODULE_CTX_FLAGS_LOADING)
}

/// The gate for every write the module makes on its own (timers, events): only a master that
/// is not loading and whose clients are not paused for writes. While clients are paused
/// (`CLIENT PAUSE WRITE|ALL`, `FAILOVER`, a manual cluster failover) Redis neither expires
/// nor propagates: a key whose lease ended is hidden but still stored, so inserting a lock
/// there aborts the server (`db.c` 'de != NULL'), and so does propagating anything
/// (`server.c` '!areClientsPaused()'). `RedisModule_AvoidReplicaTraffic` is true in exactly
/// those pauses (on 7.0, in any pause). A replica writes only what its master sends.
pub fn may_write(ctx: *mut raw::RedisModuleCtx) -> bool {
    let flags = context_flags(ctx);
    let master = flags & raw::REDISMODULE_CTX_FLAGS_MASTER as c_int != 0;
    let loading = flags & raw::REDISMODULE_CTX_FLAGS_LOADING as c_int != 0;
    let paused = match unsafe { raw::RedisModule_AvoidReplicaTraffic } {
        Some(avoid) => (unsafe { avoid() }) != 0,
        None => false,
    };
    master && !loading && !paused
}

pub fn client_id(ctx: *mut raw::RedisModuleCtx) -> u64 {
    match unsafe { raw::RedisModule_GetClientId } {
        Some(id) => unsafe { id(ctx) },
        None => 0,
    }
}

/// Whether client `id` is a connection that can disconnect. Lua scripts and
/// `RedisModule_Call` run commands on fake clients that are never in the client list and
/// never disconnect: a hold bound to one would never be released.
pub fn is_connection(id: u64) -> bool {
    match unsafe { raw::RedisModule_GetClientInfoById } {
        Some(info) => (unsafe { info(std::ptr::null_mut(), id) }) == raw::REDISMODULE_OK as c_int,
        None => false,
    }
}

/// Tell Redis that clients blocked on `key` may now be served: it calls their reply callback
/// right after the current command (or before it next sleeps, from a timer).
pub fn signal_ready(ctx: *mut raw::RedisModuleCtx, key: *mut raw::RedisModuleString) {
    if let Some(signal) = unsafe { raw::RedisModule_SignalKeyAsReady } {
        unsafe { signal(ctx, key) };
    }
}

/// Subscribe `callback` to the server event `id` (`REDISMODULE_EVENT_*`); `error` says what
/// failed if the server refuses.
pub fn subscribe_event(
    ctx: *mut raw::RedisModuleCtx,
    id: u64,
    callback: raw::RedisModuleEventCallback,
    error: &'static str,
) -> Result<(), &'static str> {
    let subscribe =
        unsafe { raw::RedisModule_SubscribeToServerEvent }.ok_or("no server events API")?;
    let event = raw::RedisModuleEvent { id, dataver: 1 };
    if unsafe { subscribe(ctx, event, callback) } != raw::REDISMODULE_OK as c_int {
        return Err(error);
    }
    Ok(())
}
