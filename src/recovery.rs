//! Timers after loading and promotion: a master that loaded its data (a restart, `DEBUG
//! RELOAD`) or was just promoted from replica has no timers for the locks it holds, since a
//! replica arms none. Holds that end before their key (shared holders, semaphore permits, a
//! downgrade) or have ended already would stay stored until some command touched the key.
//! So the keyspace is scanned once for locks, in steps from a timer (`STEPS` scan calls per
//! event-loop turn, each about ten keys) so that a large dataset never stalls the server, and
//! each lock that needs it gets its timer. Role changes also refresh the role the commands
//! check (`server::note_role`).

use std::cell::RefCell;
use std::os::raw::{c_int, c_void};
use std::ptr;

use redis_module::raw;

use crate::arg::Arg;
use crate::datatype;
use crate::local;
use crate::lock::Lock;
use crate::server;
use crate::timers;

/// `RedisModule_Scan` calls per event-loop turn.
const STEPS: usize = 100;

struct Rescan {
    cursor: *mut raw::RedisModuleScanCursor,
    db: c_int,
}

thread_local! {
    static RESCAN: RefCell<Option<Rescan>> = const { RefCell::new(None) };
}

fn destroy(cursor: *mut raw::RedisModuleScanCursor) {
    if let (false, Some(destroy)) = (cursor.is_null(), unsafe {
        raw::RedisModule_ScanCursorDestroy
    }) {
        unsafe { destroy(cursor) };
    }
}

fn new_cursor() -> *mut raw::RedisModuleScanCursor {
    match unsafe { raw::RedisModule_ScanCursorCreate } {
        Some(create) => unsafe { create() },
        None => ptr::null_mut(),
    }
}

/// Scan from the first database, starting over if a scan was under way.
fn start(ctx: *mut raw::RedisModuleCtx) {
    if !server::is_master(ctx) {
        return;
    }
    let cursor = new_cursor();
    if cursor.is_null() {
        return;
    }
    let previous = local::with(&RESCAN, |r| r.replace(Rescan { cursor, db: 0 }));
    match previous {
        Some(old) => destroy(old.cursor),
        None => arm(ctx),
    }
}

fn arm(ctx: *mut raw::RedisModuleCtx) {
    if let Some(create) = unsafe { raw::RedisModule_CreateTimer } {
        unsafe { create(ctx, 0, Some(on_timer), ptr::null_mut()) };
    }
}

fn stop() {
    if let Some(rescan) = local::with(&RESCAN, Option::take) {
        destroy(rescan.cursor);
    }
}

unsafe extern "C" fn on_timer(ctx: *mut raw::RedisModuleCtx, _data: *mut c_void) {
    if !server::is_master(ctx) {
        stop();
        return;
    }
    let Some((cursor, mut db)) = local::with(&RESCAN, |r| r.as_ref().map(|s| (s.cursor, s.db)))
    else {
        return;
    };
    let (Some(select), Some(scan)) =
        (unsafe { (raw::RedisModule_SelectDb, raw::RedisModule_Scan) })
    else {
        stop();
        return;
    };
    if unsafe { select(ctx, db) } != raw::REDISMODULE_OK as c_int {
        // Past the last database: done.
        stop();
        return;
    }
    let mut current = cursor;
    for _ in 0..STEPS {
        let more = unsafe { scan(ctx, current, Some(on_key), ptr::from_mut(&mut db).cast()) };
        if more == 0 {
            destroy(current);
            current = new_cursor();
            db = db.saturating_add(1);
            break;
        }
    }
    let running = local::with(&RESCAN, |r| match r {
        Some(rescan) if rescan.cursor == cursor => {
            rescan.cursor = current;
            rescan.db = db;
            true
        }
        _ => false,
    });
    if running {
        arm(ctx);
    }
}

unsafe extern "C" fn on_key(
    ctx: *mut raw::RedisModuleCtx,
    name: *mut raw::RedisModuleString,
    key: *mut raw::RedisModuleKey,
    privdata: *mut c_void,
) {
    let api = unsafe {
        (
            raw::RedisModule_ModuleTypeGetType,
            raw::RedisModule_ModuleTypeGetValue,
        )
    };
    let (Some(get_type), Some(get_value)) = api else {
        return;
    };
    let Some(db) = (unsafe { privdata.cast::<c_int>().as_ref() }) else {
        return;
    };
    if key.is_null() || unsafe { get_type(key) } != datatype::lock_type() {
        return;
    }
    let Some(lock) = (unsafe { get_value(key).cast::<Lock>().as_ref() }) else {
        return;
    };
    let now = server::now_ms();
    let at = if lock.live_holds(now) < lock.len() {
        Some(now)
    } else {
        match (lock.next_lease_end(now), lock.expires_at()) {
            (Some(next), Some(last)) if next < last => Some(next),
            _ => None,
        }
    };
    if let Some(at) = at {
        timers::serve_at(ctx, *db, Arg::from_raw(name).as_bytes(), at);
    }
}

unsafe extern "C" fn on_event(
    ctx: *mut raw::RedisModuleCtx,
    event: raw::RedisModuleEvent,
    subevent: u64,
    _data: *mut c_void,
) {
    if event.id == raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED {
        server::note_role(ctx);
    }
    let loaded = event.id == raw::REDISMODULE_EVENT_LOADING
        && subevent == raw::REDISMODULE_SUBEVENT_LOADING_ENDED;
    let promoted = event.id == raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED
        && subevent == raw::REDISMODULE_EVENT_REPLROLECHANGED_NOW_MASTER;
    if loaded || promoted {
        start(ctx);
    }
}

/// Subscribe to the end of loading and to promotion; called once at load.
pub fn subscribe(ctx: *mut raw::RedisModuleCtx) -> Result<(), &'static str> {
    for id in [
        raw::REDISMODULE_EVENT_LOADING,
        raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
    ] {
        server::subscribe_event(ctx, id, Some(on_event), "cannot subscribe to server events")?;
    }
    Ok(())
}
