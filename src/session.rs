//! Session-bound holds (`DLOCK.ACQUIRE ... SESSION`): released the moment the connection that
//! took them goes away, instead of lingering until their lease ends.
//!
//! The binding lives only in this server's memory, keyed by client id: a restarted server or a
//! promoted replica has no sessions, and the lease governs there. A hold is identified by its
//! key, owner and token, so a disconnect never touches a later hold of the same owner, nor its
//! other hold of the same key (exclusive and shared at once, during a downgrade).

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::raw::{c_int, c_void};

use redis_module::{Context, raw};

use crate::blocking;
use crate::commands::Arg;
use crate::commands::apply::{self, OwnerRef};
use crate::key::LockKey;
use crate::local;
use crate::metrics::{self, events};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct HoldId {
    db: c_int,
    key: Box<[u8]>,
    owner: Box<[u8]>,
    token: i64,
}

impl HoldId {
    fn new(db: c_int, key: &[u8], owner: &[u8], token: i64) -> Self {
        HoldId {
            db,
            key: key.into(),
            owner: owner.into(),
            token,
        }
    }
}

#[derive(Clone, Copy)]
struct Binding {
    client: u64,
    /// The lease end last seen: a binding whose lease ended without a release is dropped
    /// when its client's list is swept.
    lease_end: i64,
}

#[derive(Default)]
struct Sessions {
    holds: HashMap<HoldId, Binding>,
    /// Each client's session-bound holds, and the length at which to sweep them next.
    by_client: HashMap<u64, (Vec<HoldId>, usize)>,
}

impl Sessions {
    fn drop_from_client(&mut self, client: u64, id: &HoldId) {
        if let Some((list, _)) = self.by_client.get_mut(&client) {
            list.retain(|h| h != id);
        }
    }
}

/// A client's list of bindings is swept of ended leases when it reaches this length, then
/// at twice what is left: bounded memory for clients whose holds expire unreleased.
const SWEEP_FROM: usize = 64;

thread_local! {
    static SESSIONS: RefCell<Sessions> = RefCell::default();
}

/// Run `f` on the session bindings (see `local::with`).
fn with_sessions<T: Default>(f: impl FnOnce(&mut Sessions) -> T) -> T {
    local::with(&SESSIONS, f)
}

pub fn client_id(ctx: *mut raw::RedisModuleCtx) -> u64 {
    match unsafe { raw::RedisModule_GetClientId } {
        Some(id) => unsafe { id(ctx) },
        None => 0,
    }
}

/// Bind `owner`'s hold (with `token`, lease ending at `lease_end`) on `key` to `client`'s
/// connection.
pub fn bind(
    client: u64,
    db: c_int,
    key: &[u8],
    owner: &[u8],
    token: i64,
    lease_end: i64,
    now: i64,
) {
    let id = HoldId::new(db, key, owner, token);
    with_sessions(|s| {
        let binding = Binding { client, lease_end };
        if let Some(old) = s.holds.insert(id.clone(), binding) {
            s.drop_from_client(old.client, &id);
        }
        let (list, sweep_at) = s
            .by_client
            .entry(client)
            .or_insert((Vec::new(), SWEEP_FROM));
        list.push(id);
        if list.len() >= *sweep_at {
            let holds = &mut s.holds;
            list.retain(|h| {
                let live = holds.get(h).is_some_and(|b| b.lease_end > now);
                if !live {
                    holds.remove(h);
                }
                live
            });
            *sweep_at = list.len().saturating_mul(2).max(SWEEP_FROM);
        }
    });
}

/// The lease of a possibly bound hold moved (EXTEND, re-entry).
pub fn lease_changed(db: c_int, key: &[u8], owner: &[u8], token: i64, lease_end: i64) {
    with_sessions(|s| {
        if s.holds.is_empty() {
            return;
        }
        let id = HoldId::new(db, key, owner, token);
        if let Some(binding) = s.holds.get_mut(&id) {
            binding.lease_end = lease_end;
        }
    });
}

/// The hold with `token` ended by RELEASE: forget its binding.
pub fn unbind(db: c_int, key: &[u8], owner: &[u8], token: i64) {
    with_sessions(|s| {
        if s.holds.is_empty() {
            return;
        }
        let id = HoldId::new(db, key, owner, token);
        if let Some(binding) = s.holds.remove(&id) {
            s.drop_from_client(binding.client, &id);
        }
    });
}

/// Whether `owner`'s hold with `token` on `key` is bound to a connection.
pub fn is_bound(db: c_int, key: &[u8], owner: &[u8], token: i64) -> bool {
    with_sessions(|s| {
        if s.holds.is_empty() {
            return false;
        }
        s.holds.contains_key(&HoldId::new(db, key, owner, token))
    })
}

/// A client disconnected: release its session-bound holds from the next timer (a server
/// event handler is no place to write).
unsafe extern "C" fn on_client_change(
    ctx: *mut raw::RedisModuleCtx,
    _event: raw::RedisModuleEvent,
    subevent: u64,
    data: *mut c_void,
) {
    if subevent != raw::REDISMODULE_SUBEVENT_CLIENT_CHANGE_DISCONNECTED {
        return;
    }
    let Some(info) = (unsafe { data.cast::<raw::RedisModuleClientInfo>().as_ref() }) else {
        return;
    };
    let holds: Vec<HoldId> = with_sessions(|s| {
        let (ids, _) = s.by_client.remove(&info.id).unwrap_or_default();
        ids.into_iter()
            .filter(|id| s.holds.remove(id).is_some())
            .collect()
    });
    if holds.is_empty() {
        return;
    }
    let data = Box::into_raw(Box::new(holds));
    let created = match unsafe { raw::RedisModule_CreateTimer } {
        Some(create) => {
            unsafe { create(ctx, 0, Some(on_release_timer), data.cast()) };
            true
        }
        None => false,
    };
    if !created {
        drop(unsafe { Box::from_raw(data) });
    }
}

unsafe extern "C" fn on_release_timer(ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if data.is_null() {
        return;
    }
    let holds = unsafe { Box::from_raw(data.cast::<Vec<HoldId>>()) };
    let context = Context::new(ctx);
    for id in holds.iter() {
        release(&context, id);
    }
}

/// End the hold `id` (whatever its count) if it is still there, and hand the lock over. Only
/// a master writes: a server turned replica since the disconnect follows its master.
fn release(ctx: &Context, id: &HoldId) {
    let raw_ctx = ctx.get_raw();
    if !blocking::is_master(raw_ctx) {
        return;
    }
    let name = blocking::key_name(raw_ctx, id.db, &id.key);
    let key_arg = Arg::from_raw(name.inner);
    let mut key = LockKey::open_write(ctx, &key_arg);
    let Ok(Some(lock)) = key.lock() else { return };
    let Some(removed) = lock.remove(&id.owner, id.token) else {
        return;
    };
    apply::replicate(ctx, &key_arg, OwnerRef::Bytes(&id.owner), removed);
    metrics::RELEASES.incr();
    metrics::notify(raw_ctx, events::RELEASED, key_arg.raw());
    blocking::released(ctx, key, id.db, &id.key);
}

/// Subscribe to client disconnections; called once at load.
pub fn subscribe(ctx: *mut raw::RedisModuleCtx) -> Result<(), &'static str> {
    crate::subscribe_server_event(
        ctx,
        raw::REDISMODULE_EVENT_CLIENT_CHANGE,
        Some(on_client_change),
        "cannot subscribe to client events",
    )
}
