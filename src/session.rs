//! Session bindings (`DLOCK.ACQUIRE ... SESSION`): which holds end the moment the connection
//! that took them goes away, instead of lingering until their lease ends.
//!
//! A binding names a hold by its database, key, owner and token, so a disconnect never
//! touches a later hold of the same owner, nor its other hold of the same key (exclusive and
//! shared at once, during a downgrade). Bindings are indexed by hold, by client and by key,
//! so binding, unbinding and a disconnect cost O(1) per hold. They follow their key through
//! `RENAME`, `MOVE` and `SWAPDB`, and are dropped with their hold however it ends (release,
//! lease end, `DEL`, eviction) or with their connection; a lock overwritten by a value of
//! another type (`SET` on its key) leaves its bindings until their connection goes, since
//! the module does not subscribe to those types' events (see `blocking::subscribe`). A flush keeps them
//! (`DEBUG RELOAD` flushes, then loads the same holds back); a binding whose hold is gone
//! only costs memory until its client disconnects, since tokens are never reused. They live only in this server's memory: a
//! restarted server or a promoted replica has no sessions, and there the lease governs.
//!
//! A disconnect only records which holds to end and asks for their keys to be served: the
//! layer above ends them through the write path, from a timer, when the server may write.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::os::raw::{c_int, c_void};

use redis_module::raw;

use crate::local::{self, Fit};
use crate::server;
use crate::timers::{self, KeyId};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BoundHold {
    pub owner: Box<[u8]>,
    pub token: i64,
}

#[derive(Default)]
struct Sessions {
    /// Each bound hold, per key, and its client.
    by_key: HashMap<KeyId, HashMap<BoundHold, u64>>,
    /// Each client's bound holds.
    by_client: HashMap<u64, HashSet<(KeyId, BoundHold)>>,
    /// Holds whose client disconnected, per key, still to be ended.
    ending: HashMap<KeyId, Vec<BoundHold>>,
    /// The source of a `RENAME` or `MOVE` whose destination event comes next.
    moving: Option<KeyId>,
}

impl Sessions {
    fn unbind(&mut self, key: &KeyId, hold: &BoundHold) {
        if let Some(client) = self.forget_for_key(key, hold) {
            self.forget_for_client(client, key, hold);
        }
    }

    /// Drop `hold` from `key`'s bindings; the client it was bound to, if it was.
    fn forget_for_key(&mut self, key: &KeyId, hold: &BoundHold) -> Option<u64> {
        let holds = self.by_key.get_mut(key)?;
        let client = holds.remove(hold)?;
        if holds.is_empty() {
            self.by_key.remove(key);
            self.by_key.fit();
        } else {
            holds.fit();
        }
        Some(client)
    }

    fn forget_for_client(&mut self, client: u64, key: &KeyId, hold: &BoundHold) {
        if let Some(set) = self.by_client.get_mut(&client) {
            set.remove(&(key.clone(), hold.clone()));
            if set.is_empty() {
                self.by_client.remove(&client);
                self.by_client.fit();
            } else {
                set.fit();
            }
        }
    }

    /// Remove every binding of `key` and return them with their clients.
    fn take_key(&mut self, key: &KeyId) -> Vec<(BoundHold, u64)> {
        let Some(holds) = self.by_key.remove(key) else {
            return Vec::new();
        };
        self.by_key.fit();
        for (hold, client) in &holds {
            self.forget_for_client(*client, key, hold);
        }
        holds.into_iter().collect()
    }

    fn bind(&mut self, key: KeyId, hold: BoundHold, client: u64) {
        self.unbind(&key, &hold);
        self.by_client
            .entry(client)
            .or_default()
            .insert((key.clone(), hold.clone()));
        self.by_key.entry(key).or_default().insert(hold, client);
    }
}

thread_local! {
    static SESSIONS: RefCell<Sessions> = RefCell::default();
}

fn with_sessions<T: Default>(f: impl FnOnce(&mut Sessions) -> T) -> T {
    local::with(&SESSIONS, f)
}

fn key_id(db: c_int, key: &[u8]) -> KeyId {
    (db, key.into())
}

/// Bind `owner`'s hold with `token` on `key` to `client`'s connection.
pub fn bind(client: u64, db: c_int, key: &[u8], owner: &[u8], token: i64) {
    let hold = BoundHold {
        owner: owner.into(),
        token,
    };
    with_sessions(|s| s.bind(key_id(db, key), hold, client));
}

/// The hold with `token` ended (released, lease ended, removed): forget its binding.
pub fn unbind(db: c_int, key: &[u8], owner: &[u8], token: i64) {
    with_sessions(|s| {
        if s.by_key.is_empty() {
            return;
        }
        let hold = BoundHold {
            owner: owner.into(),
            token,
        };
        s.unbind(&key_id(db, key), &hold);
    });
}

/// Whether `owner`'s hold with `token` on `key` is bound to a connection.
pub fn is_bound(db: c_int, key: &[u8], owner: &[u8], token: i64) -> bool {
    with_sessions(|s| {
        if s.by_key.is_empty() {
            return false;
        }
        let hold = BoundHold {
            owner: owner.into(),
            token,
        };
        s.by_key
            .get(&key_id(db, key))
            .is_some_and(|holds| holds.contains_key(&hold))
    })
}

/// How many holds are bound to connections (`INFO dlock`).
pub fn bound() -> usize {
    with_sessions(|s| s.by_key.values().map(HashMap::len).sum())
}

/// Up to `limit` holds of `key` whose connection went away, to be ended now.
pub fn take_ending(db: c_int, key: &[u8], limit: usize) -> Vec<BoundHold> {
    with_sessions(|s| {
        if s.ending.is_empty() {
            return Vec::new();
        }
        let id = key_id(db, key);
        let Some(list) = s.ending.get_mut(&id) else {
            return Vec::new();
        };
        let split = list.len().saturating_sub(limit);
        let taken = list.split_off(split);
        if list.is_empty() {
            s.ending.remove(&id);
            s.ending.fit();
        }
        taken
    })
}

/// Whether holds of `key` still wait to be ended.
pub fn has_ending(db: c_int, key: &[u8]) -> bool {
    with_sessions(|s| !s.ending.is_empty() && s.ending.contains_key(&key_id(db, key)))
}

/// The holds of `key` bound to a connection.
pub fn bound_on(db: c_int, key: &[u8]) -> Vec<BoundHold> {
    with_sessions(|s| {
        if s.by_key.is_empty() {
            return Vec::new();
        }
        s.by_key
            .get(&key_id(db, key))
            .map(|holds| holds.keys().cloned().collect())
            .unwrap_or_default()
    })
}

/// `RENAME`/`MOVE` source: its bindings move with the next destination event.
pub fn moving_from(db: c_int, key: &[u8]) {
    with_sessions(|s| {
        if !s.by_key.is_empty() {
            s.moving = Some(key_id(db, key));
        }
    });
}

/// `RENAME`/`MOVE` destination: what was bound there is gone (overwritten), and the source's
/// bindings come here.
pub fn moved_to(db: c_int, key: &[u8]) {
    with_sessions(|s| {
        let Some(from) = s.moving.take() else {
            return;
        };
        let to = key_id(db, key);
        s.take_key(&to);
        for (hold, client) in s.take_key(&from) {
            s.bind(to.clone(), hold, client);
        }
        if let Some(ending) = s.ending.remove(&from) {
            s.ending.fit();
            s.ending.entry(to).or_default().extend(ending);
        }
    });
}

/// `SWAPDB a b`: the bindings of the two databases trade places.
pub fn swapped(a: c_int, b: c_int) {
    with_sessions(|s| {
        let keys: Vec<KeyId> = s
            .by_key
            .keys()
            .filter(|(d, _)| *d == a || *d == b)
            .cloned()
            .collect();
        let mut moved = Vec::new();
        for key in keys {
            let other = if key.0 == a { b } else { a };
            for (hold, client) in s.take_key(&key) {
                moved.push(((other, key.1.clone()), hold, client));
            }
        }
        for (key, hold, client) in moved {
            s.bind(key, hold, client);
        }
        let ending: Vec<(KeyId, Vec<BoundHold>)> = s.ending.drain().collect();
        for ((d, name), holds) in ending {
            let d = if d == a {
                b
            } else if d == b {
                a
            } else {
                d
            };
            s.ending.insert((d, name), holds);
        }
    });
}

/// A client disconnected: its bound holds are to be ended, from a timer (a server event
/// handler is no place to write).
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
    let keys: HashSet<KeyId> = with_sessions(|s| {
        let Some(holds) = s.by_client.remove(&info.id) else {
            return HashSet::new();
        };
        s.by_client.fit();
        let mut keys = HashSet::new();
        for (key, hold) in holds {
            s.forget_for_key(&key, &hold);
            s.ending.entry(key.clone()).or_default().push(hold);
            keys.insert(key);
        }
        keys
    });
    for (db, key) in keys {
        timers::serve_soon(ctx, db, &key);
    }
}

/// Subscribe to client disconnections; called once at load.
pub fn subscribe(ctx: *mut raw::RedisModuleCtx) -> Result<(), &'static str> {
    server::subscribe_event(
        ctx,
        raw::REDISMODULE_EVENT_CLIENT_CHANGE,
        Some(on_client_change),
        "cannot subscribe to client events",
    )
}
