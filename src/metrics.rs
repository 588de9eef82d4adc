//! Counters for `INFO dlock`. Relaxed atomics: one uncontended add per event, and safe from
//! the background thread that frees values under lazyfree.

use std::ffi::CStr;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use redis_module::raw;

use crate::session;
use crate::timers;
use crate::token::{self, CLOCK};

pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn incr(&self) {
        self.add(1);
    }

    fn get(&self) -> i64 {
        i64::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
    }
}

pub struct Gauge(AtomicI64);

impl Gauge {
    const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }

    pub fn incr(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn decr(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed).max(0)
    }
}

/// Lock values in the keyspace (held, or with a lease that ended but not yet expired).
pub static LOCKS: Gauge = Gauge::new();
/// Clients blocked in `ACQUIRE ... WAIT`.
pub static WAITERS: Gauge = Gauge::new();
pub static GRANTS_IMMEDIATE: Counter = Counter::new();
pub static GRANTS_AFTER_WAIT: Counter = Counter::new();
pub static REENTRIES: Counter = Counter::new();
pub static RELEASES: Counter = Counter::new();
pub static RELEASES_REJECTED: Counter = Counter::new();
pub static EXTENDS: Counter = Counter::new();
pub static EXTENDS_REJECTED: Counter = Counter::new();
/// Holds whose lease ended before their owner released them: crashed or stalled clients.
pub static LEASES_EXPIRED: Counter = Counter::new();
pub static WAIT_TIMEOUTS: Counter = Counter::new();
/// `DLOCK.GUARD` calls whose token passed the fence (the inner command ran) or did not.
pub static GUARDS: Counter = Counter::new();
pub static GUARDS_REFUSED: Counter = Counter::new();
/// `DLOCK.FENCE` calls on a live hold of the owner, and on none.
pub static FENCES: Counter = Counter::new();
pub static FENCES_REJECTED: Counter = Counter::new();
/// Locks removed by `maxmemory` eviction: freed early, whatever their leases.
pub static EVICTED: Counter = Counter::new();

/// Whether the server's `maxmemory` policy may evict locks (every lock has a TTL, so the
/// `volatile-*` policies can too).
pub fn evictable() -> bool {
    match unsafe { raw::RedisModule_GetContextFlags } {
        Some(flags) => {
            (unsafe { flags(std::ptr::null_mut()) }) & raw::REDISMODULE_CTX_FLAGS_EVICT as c_int
                != 0
        }
        None => false,
    }
}

/// The `INFO dlock` section (fields appear as `dlock_<name>`).
pub unsafe extern "C" fn info(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: c_int) {
    let api = unsafe {
        (
            raw::RedisModule_InfoAddSection,
            raw::RedisModule_InfoAddFieldLongLong,
        )
    };
    let (Some(section), Some(field)) = api else {
        return;
    };
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let fields: [(&CStr, i64); 21] = [
        (c"locks", LOCKS.get()),
        (c"waiters", WAITERS.get()),
        (c"grants_immediate", GRANTS_IMMEDIATE.get()),
        (c"grants_after_wait", GRANTS_AFTER_WAIT.get()),
        (c"reentries", REENTRIES.get()),
        (c"releases", RELEASES.get()),
        (c"releases_rejected", RELEASES_REJECTED.get()),
        (c"extends", EXTENDS.get()),
        (c"extends_rejected", EXTENDS_REJECTED.get()),
        (c"leases_expired", LEASES_EXPIRED.get()),
        (c"wait_timeouts", WAIT_TIMEOUTS.get()),
        (c"guards", GUARDS.get()),
        (c"guards_refused", GUARDS_REFUSED.get()),
        (c"fences", FENCES.get()),
        (c"fences_rejected", FENCES_REJECTED.get()),
        (c"evictable", i64::from(evictable())),
        (c"evicted", EVICTED.get()),
        (c"last_token", CLOCK.last()),
        (c"node_id", i64::from(token::node_id())),
        (c"session_holds", count(session::bound())),
        (c"timers", count(timers::pending())),
    ];
    unsafe {
        section(ctx, c"".as_ptr());
        for (name, value) in fields {
            field(ctx, name.as_ptr(), value);
        }
    }
}

/// Event names for keyspace notifications (class `d`, module events).
pub mod events {
    use std::ffi::CStr;

    pub const ACQUIRED: &CStr = c"dlock.acquired";
    pub const REENTERED: &CStr = c"dlock.reentered";
    pub const RELEASED: &CStr = c"dlock.released";
    pub const EXTENDED: &CStr = c"dlock.extended";
    pub const FENCED: &CStr = c"dlock.fenced";
    pub const EXPIRED: &CStr = c"dlock.expired";
    pub const HANDOVER: &CStr = c"dlock.handover";
    pub const EVICTED: &CStr = c"dlock.evicted";
}

/// Publish a lock event on `key` (seen by clients with `notify-keyspace-events` including
/// `d`, and by modules).
pub fn notify(ctx: *mut raw::RedisModuleCtx, event: &CStr, key: *mut raw::RedisModuleString) {
    if let Some(notify) = unsafe { raw::RedisModule_NotifyKeyspaceEvent } {
        unsafe {
            notify(
                ctx,
                raw::REDISMODULE_NOTIFY_MODULE as c_int,
                event.as_ptr(),
                key,
            )
        };
    }
}
