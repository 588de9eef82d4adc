//! One module timer for the whole server, driven by an ordered index of deadlines.
//!
//! Work due at a moment is entered here with its time: a key to serve (a lease end that lets
//! a waiter in or ends a hold before its key, a key freed by an event, a write deferred by
//! the gate) or a waiter's deadline. Each key has at most one entry of each kind, at its
//! earliest time, so arming is O(log n) however many keys fall due in the same millisecond,
//! and an entry goes when its lock does.
//!
//! A single `RedisModule_CreateTimer` stays armed at the earliest entry, but never more than
//! `MAX_DELAY_MS` ahead: `RedisModule_CreateTimer` computes `ustime() + period * 1000`
//! unchecked (a huge period lands in the past and stalls every module timer), and Redis 7.0's
//! event loop overflows an `int` for a time event more than ~35.8 minutes away (the idle
//! server then spins at 100% CPU). Past that the timer just fires early and re-arms.
//!
//! When the timer fires, due keys are handed to the callback given to `init` (the layer above
//! serves them), at most `BUDGET` per event-loop turn; the rest continue in the next turn.
//! While the gate is closed (`server::may_write`: paused, loading) keys wait and are retried
//! every `DEFER_MS`; a replica serves nothing, so it drops its keys (a promoted replica finds
//! its locks again with `rearm_all`). Deadlines never write, so they are served regardless.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::os::raw::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis_module::{Context, raw};

use crate::local::{self, Fit};
use crate::server;

/// A key: its database and name.
pub type KeyId = (c_int, Box<[u8]>);

/// No module timer is armed further ahead than this (well under Redis 7.0's ~35.8 minutes).
pub const MAX_DELAY_MS: i64 = 30 * 60 * 1000;

/// How soon work the gate held back is tried again.
pub const DEFER_MS: i64 = 50;

/// Entries handled per event-loop turn before the rest wait for the next turn.
pub const BUDGET: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Serve the key: remove ended holds and hand it to its waiters. A write.
    Serve,
    /// A waiter's deadline passed: it is told nil. No write.
    Deadline,
}

type Slot = (i64, u64);

/// An entry: what to do, for which key, and (for deadlines) which waiter.
type Entry = (Kind, KeyId, u64);

/// What to do with a due key: (context, database, name, kind, the waiter of a deadline).
pub type OnDue = fn(&Context, c_int, &[u8], Kind, u64);

#[derive(Default)]
struct Timers {
    by_time: BTreeMap<Slot, Entry>,
    /// Each key's serve entry, found without building a key (commands look on every write).
    serving: HashMap<c_int, HashMap<Box<[u8]>, Slot>>,
    /// Each waiter's deadline entry.
    deadlines: HashMap<u64, Slot>,
    next_seq: u64,
    /// The module timer and when it fires.
    armed: Option<(raw::RedisModuleTimerID, i64)>,
    on_due: Option<OnDue>,
}

impl Timers {
    fn slot_of(&self, (kind, (db, key), waiter): &Entry) -> Option<Slot> {
        match kind {
            Kind::Serve => self.serving.get(db)?.get(key).copied(),
            Kind::Deadline => self.deadlines.get(waiter).copied(),
        }
    }

    fn set_slot(&mut self, (kind, (db, key), waiter): &Entry, slot: Option<Slot>) {
        match (kind, slot) {
            (Kind::Serve, Some(slot)) => {
                let keys = self.serving.entry(*db).or_default();
                if keys.insert(key.clone(), slot).is_none() {
                    SERVING.fetch_add(1, Ordering::Relaxed);
                }
            }
            (Kind::Serve, None) => {
                if let Some(keys) = self.serving.get_mut(db) {
                    if keys.remove(key).is_some() {
                        SERVING.fetch_sub(1, Ordering::Relaxed);
                    }
                    if keys.is_empty() {
                        self.serving.remove(db);
                    } else {
                        keys.fit();
                    }
                }
            }
            (Kind::Deadline, Some(slot)) => {
                self.deadlines.insert(*waiter, slot);
            }
            (Kind::Deadline, None) => {
                self.deadlines.remove(waiter);
                self.deadlines.fit();
            }
        }
    }

    /// Enter `id` at `at`, unless it is entered earlier already. True when the earliest entry
    /// changed.
    fn insert(&mut self, id: Entry, at: i64) -> bool {
        if let Some(slot) = self.slot_of(&id) {
            if slot.0 <= at {
                return false;
            }
            self.by_time.remove(&slot);
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        let slot = (at, self.next_seq);
        let earliest = self.by_time.keys().next().is_none_or(|first| slot < *first);
        self.set_slot(&id, Some(slot));
        self.by_time.insert(slot, id);
        earliest
    }

    fn remove(&mut self, slot: Slot) {
        if let Some(id) = self.by_time.remove(&slot) {
            self.set_slot(&id, None);
        }
    }

    fn pop_due(&mut self, now: i64) -> Option<Entry> {
        let (slot, _) = self.by_time.first_key_value()?;
        if slot.0 > now {
            return None;
        }
        let (_, id) = self.by_time.pop_first()?;
        self.set_slot(&id, None);
        Some(id)
    }

    fn earliest(&self) -> Option<i64> {
        self.by_time.keys().next().map(|slot| slot.0)
    }
}

thread_local! {
    static TIMERS: RefCell<Timers> = RefCell::default();
}

fn with_timers<T: Default>(f: impl FnOnce(&mut Timers) -> T) -> T {
    local::with(&TIMERS, f)
}

/// Set what due keys are handed to; called once at load.
pub fn init(on_due: OnDue) {
    with_timers(|t| t.on_due = Some(on_due));
}

/// Serve `key` no later than `at`.
pub fn serve_at(ctx: *mut raw::RedisModuleCtx, db: c_int, key: &[u8], at: i64) {
    if with_timers(|t| t.insert((Kind::Serve, (db, key.into()), 0), at)) {
        arm(ctx);
    }
}

/// Serve `key` in the next event-loop turn (for events that may not write themselves).
pub fn serve_soon(ctx: *mut raw::RedisModuleCtx, db: c_int, key: &[u8]) {
    serve_at(ctx, db, key, server::now_ms());
}

/// Waiter `waiter` of `key` times out at `at`.
pub fn deadline_at(ctx: *mut raw::RedisModuleCtx, db: c_int, key: &[u8], waiter: u64, at: i64) {
    if with_timers(|t| t.insert((Kind::Deadline, (db, key.into()), waiter), at)) {
        arm(ctx);
    }
}

/// Waiter `waiter` left before its deadline.
pub fn forget_deadline(waiter: u64) {
    with_timers(|t| {
        if let Some(slot) = t.deadlines.get(&waiter).copied() {
            t.remove(slot);
        }
    });
}

/// How many serve entries there are, readable without touching the index: most commands
/// ask `forget` about a key that has none.
static SERVING: AtomicUsize = AtomicUsize::new(0);

/// Whether any key has a serve entry (else `forget` has nothing to do).
pub fn any_serving() -> bool {
    SERVING.load(Ordering::Relaxed) > 0
}

/// The lock at `key` is gone, or needs no timer: drop its serve entry.
pub fn forget(db: c_int, key: &[u8]) {
    if !any_serving() {
        return;
    }
    with_timers(|t| {
        if let Some(slot) = t.serving.get(&db).and_then(|keys| keys.get(key)).copied() {
            t.remove(slot);
        }
    });
}

/// Drop every serve entry of the databases `dbs` (all when empty), e.g. after a flush; the
/// caller re-enters what still needs serving.
pub fn forget_dbs(dbs: &[c_int]) {
    with_timers(|t| {
        let gone: Vec<Slot> = t
            .serving
            .iter()
            .filter(|(db, _)| dbs.is_empty() || dbs.contains(db))
            .flat_map(|(_, keys)| keys.values().copied())
            .collect();
        for slot in gone {
            t.remove(slot);
        }
    });
}

/// How many entries wait (`INFO dlock`: a figure that must not grow with locks that are gone).
pub fn pending() -> usize {
    with_timers(|t| t.by_time.len())
}

/// Make sure the module timer fires by the earliest entry.
fn arm(ctx: *mut raw::RedisModuleCtx) {
    let now = server::now_ms();
    let plan = with_timers(|t| {
        let earliest = t.earliest()?;
        let at = earliest.clamp(now, now.saturating_add(MAX_DELAY_MS));
        match t.armed {
            Some((_, fires)) if fires <= at => None,
            _ => Some((t.armed.take(), at)),
        }
    });
    let Some((stale, at)) = plan else { return };
    if let (Some((id, _)), Some(stop)) = (stale, unsafe { raw::RedisModule_StopTimer }) {
        unsafe { stop(ctx, id, ptr::null_mut()) };
    }
    let Some(create) = (unsafe { raw::RedisModule_CreateTimer }) else {
        return;
    };
    let delay = at.saturating_sub(now).clamp(0, MAX_DELAY_MS);
    let id = unsafe { create(ctx, delay, Some(on_timer), ptr::null_mut()) };
    with_timers(|t| t.armed = Some((id, at)));
}

unsafe extern "C" fn on_timer(ctx: *mut raw::RedisModuleCtx, _data: *mut c_void) {
    let now = server::now_ms();
    let writable = server::may_write(ctx);
    let master = server::is_master(ctx);
    let on_due = with_timers(|t| {
        t.armed = None;
        if !master {
            t.serving.clear();
            SERVING.store(0, Ordering::Relaxed);
            t.by_time.retain(|_, (kind, _, _)| *kind != Kind::Serve);
        }
        t.on_due
    });
    let context = Context::new(ctx);
    let mut held_back = Vec::new();
    for _ in 0..BUDGET {
        let Some((kind, (db, key), waiter)) = with_timers(|t| t.pop_due(now)) else {
            break;
        };
        if kind == Kind::Serve && !writable {
            held_back.push((db, key));
            continue;
        }
        if let Some(on_due) = on_due {
            on_due(&context, db, &key, kind, waiter);
        }
    }
    let retry = now.saturating_add(DEFER_MS);
    with_timers(|t| {
        for key in held_back {
            t.insert((Kind::Serve, key, 0), retry);
        }
    });
    arm(ctx);
}
