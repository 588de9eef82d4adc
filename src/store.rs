//! The one write path: every change to a lock passes through here, whoever makes it — a
//! client's command, a waiter being granted, a timer ending leases, a disconnect ending
//! session holds, the replication stream or the AOF.
//!
//! Each operation opens the key, applies the lock's rule (`lock.rs`), then, in one place:
//! commits the value and its expiry, replicates the effect as `DLOCK.APPLY`, publishes the
//! keyspace event, counts it for `INFO`, keeps session bindings in step and points the
//! key's timer at the next lease end that matters. It returns what happened as a value; the
//! caller decides what follows (replying, waking waiters). Nothing here calls back up.
//!
//! Callers that are not a client's command (timers, events) must pass the gate
//! (`server::may_write`) before calling in: `timers.rs` does it for them.

use std::os::raw::c_int;

use redis_module::{Context, RedisError};

use crate::arg::Arg;
use crate::config;
use crate::key::LockKey;
use crate::lock::{AcquireError, Acquired, Hold, HoldState, Lock, Mode};
use crate::metrics::{self, events};
use crate::replicate::{self, OwnerRef};
use crate::server;
use crate::session;
use crate::timers;
use crate::token::CLOCK;
use crate::validate;

/// A lock's key as a write sees it: the context, the key's name and its database.
#[derive(Clone, Copy)]
pub struct Site<'a> {
    pub ctx: &'a Context,
    pub key: &'a Arg,
    db: Db,
}

/// The database of a site's key.
#[derive(Clone, Copy)]
enum Db {
    /// The one the command's client selected, asked of the server only where it is needed (a
    /// plain grant or refusal never needs it).
    Selected,
    /// Given by the timer or event that selected it.
    Known(c_int),
}

impl<'a> Site<'a> {
    /// A command's key, in the database its client selected.
    pub fn selected(ctx: &'a Context, key: &'a Arg) -> Site<'a> {
        Site {
            ctx,
            key,
            db: Db::Selected,
        }
    }

    /// A key in database `db`, already selected in `ctx`.
    pub fn in_db(ctx: &'a Context, key: &'a Arg, db: c_int) -> Site<'a> {
        Site {
            ctx,
            key,
            db: Db::Known(db),
        }
    }

    pub fn db(&self) -> c_int {
        match self.db {
            Db::Selected => server::selected_db(self.ctx.get_raw()),
            Db::Known(db) => db,
        }
    }
}

/// A lease length, checked at parsing so that `now + ttl` cannot overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl(i64);

impl Ttl {
    /// A lease of `ms` milliseconds, already checked to be in `1..=MAX_TTL_MS`.
    pub fn new(ms: i64) -> Ttl {
        Ttl(ms)
    }

    /// The lease end for a lease starting at `now`.
    pub fn lease_end(self, now: i64) -> i64 {
        now.saturating_add(self.0)
    }
}

/// What an acquire asks for.
pub struct Request<'a> {
    pub owner: &'a [u8],
    /// The same owner, as replication sends it.
    pub owner_string: OwnerRef<'a>,
    pub mode: Mode,
    /// Semaphore permits; 1 for a lock.
    pub amount: u32,
    pub ttl: Ttl,
    /// `SESSION`: bind a granted hold to this client.
    pub session: Option<u64>,
}

/// Who is acquiring, relative to the clients waiting for the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// A client's `ACQUIRE`; `queued` when clients already wait (they come first).
    Command { queued: bool },
    /// The first waiter, being served.
    Waiter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Granted(HoldState),
    Reentered(HoldState),
    /// Not now; the live holds' earliest lease end, if any.
    Busy(Option<i64>),
}

/// Take the lock at `site` for `request`, removing ended holds on the way.
pub fn acquire(
    site: Site,
    request: &Request,
    turn: Turn,
    now: i64,
) -> Result<Result<Outcome, AcquireError>, RedisError> {
    let mut key = LockKey::open_write(site.ctx, site.key);
    if turn == (Turn::Command { queued: false }) {
        if key.is_empty() {
            return grant_free(site, key, request, now);
        }
        if let Some(lock) = key.lock()?
            && let Some(lease_end) = lock.refusal(request.owner, request.mode, now)
        {
            watch(site, lock, now, false);
            return Ok(Ok(Outcome::Busy(Some(lease_end))));
        }
    }
    acquire_taken(site, key, request, turn, now)
}

/// The common case, kept short: a free key that nobody waits for gets a lock with one hold,
/// and none of the questions a lock already there needs (ended holds, the queue, the modes
/// held). The effects are those of any grant.
fn grant_free(
    site: Site,
    mut key: LockKey,
    request: &Request,
    now: i64,
) -> Result<Result<Outcome, AcquireError>, RedisError> {
    let lease_end = request.ttl.lease_end(now);
    let (lock, state) = match Lock::first(
        request.owner,
        request.mode,
        request.amount,
        now,
        lease_end,
        &CLOCK,
    ) {
        Ok(first) => first,
        Err(error) => return Ok(Err(error)),
    };
    key.insert(lock)?;
    // One hold, no waiters: the key's own expiry ends the lease; no timer entry is needed.
    forget_timer(site);
    granted(site, request, state, Turn::Command { queued: false });
    key.commit_lease(lease_end);
    Ok(Ok(Outcome::Granted(state)))
}

/// `acquire` on a key that holds a lock (or something else), or with clients waiting.
#[inline(never)]
fn acquire_taken(
    site: Site,
    mut key: LockKey,
    request: &Request,
    turn: Turn,
    now: i64,
) -> Result<Result<Outcome, AcquireError>, RedisError> {
    let owner = request.owner;
    let (ahead, waiters) = match turn {
        Turn::Command { queued } => (queued, queued),
        Turn::Waiter => (false, true),
    };
    // A keyed waiter is served inside Redis's pass over the key's blocked clients, which
    // propagates only what a served client changed: removing ended holds there and then
    // finding the lock still busy would leave their replication pending (Redis 7.0 then
    // aborts in `handleClientsBlockedOnKeys`). So a waiter (keyed or parked alike) waits while
    // ended holds remain: the lease timer, due already (or deferred while the server may not
    // write), removes them in its own context and offers the key again.
    if turn == Turn::Waiter && key.lock()?.is_some_and(|lock| lock.has_ended_holds(now)) {
        return Ok(Ok(Outcome::Busy(None)));
    }
    let lock = key.lock_or_insert()?;
    let pruned = lock.prune(now);
    let lease_end = request.ttl.lease_end(now);
    // Clients already waiting come first: only a holder of the lock may go past them
    // (re-entry, downgrade, upgrade); nobody past a semaphore's queue.
    let acquired = if ahead && !lock.may_pass_queue(owner, request.mode, now) {
        lock.admits(request.mode, request.amount)
            .map(|()| Acquired::Busy)
    } else {
        lock.acquire(owner, request.mode, request.amount, now, lease_end, &CLOCK)
    };
    let changed = acquired != Ok(Acquired::Busy) || !pruned.is_empty() || lock.is_empty();
    let busy_until = (acquired == Ok(Acquired::Busy))
        .then(|| lock.next_lease_end(now))
        .flatten();
    watch(site, lock, now, waiters);
    ended(site, &pruned);
    let outcome = match acquired {
        Ok(Acquired::Granted(state)) => {
            granted(site, request, state, turn);
            Ok(Outcome::Granted(state))
        }
        Ok(Acquired::Reentered(state)) => {
            replicate::replicate(site.ctx, site.key, request.owner_string, state);
            metrics::REENTRIES.incr();
            metrics::notify(site.ctx.get_raw(), events::REENTERED, site.key.raw());
            bind_session(site, request, state);
            Ok(Outcome::Reentered(state))
        }
        Ok(Acquired::Busy) => Ok(Outcome::Busy(busy_until)),
        Err(error) => Err(error),
    };
    if changed {
        key.commit(waiters, now);
    }
    Ok(outcome)
}

/// Replicate, count and announce a new hold, and bind it to its session.
fn granted(site: Site, request: &Request, state: HoldState, turn: Turn) {
    replicate::replicate(site.ctx, site.key, request.owner_string, state);
    let event = match turn {
        Turn::Command { .. } => {
            metrics::GRANTS_IMMEDIATE.incr();
            events::ACQUIRED
        }
        Turn::Waiter => {
            metrics::GRANTS_AFTER_WAIT.incr();
            events::HANDOVER
        }
    };
    metrics::notify(site.ctx.get_raw(), event, site.key.raw());
    bind_session(site, request, state);
}

/// `SESSION`: the hold ends when the requesting client disconnects.
fn bind_session(site: Site, request: &Request, state: HoldState) {
    if let Some(client) = request.session {
        session::bind(
            client,
            site.db(),
            site.key.as_bytes(),
            request.owner,
            state.token,
        );
    }
}

/// Give back one hold of `owner`. `None` when it holds nothing live; otherwise the hold's
/// new state (`count == 0`: the hold ended, and waiters may be served).
pub fn release(
    site: Site,
    owner: &Arg,
    now: i64,
    waiters: bool,
) -> Result<Option<HoldState>, RedisError> {
    let mut key = LockKey::open_write(site.ctx, site.key);
    let Some(lock) = key.lock()? else {
        metrics::RELEASES_REJECTED.incr();
        return Ok(None);
    };
    let Some(state) = lock.release(owner.as_bytes(), now) else {
        metrics::RELEASES_REJECTED.incr();
        return Ok(None);
    };
    watch(site, lock, now, waiters);
    replicate::replicate(site.ctx, site.key, OwnerRef::Arg(owner), state);
    metrics::RELEASES.incr();
    if state.count == 0 {
        metrics::notify(site.ctx.get_raw(), events::RELEASED, site.key.raw());
        session::unbind(
            site.db(),
            site.key.as_bytes(),
            owner.as_bytes(),
            state.token,
        );
    }
    key.commit(waiters, now);
    Ok(Some(state))
}

/// Move every lease of `owner` to `lease_end`. False when it holds nothing live.
pub fn extend(
    site: Site,
    owner: &Arg,
    lease_end: i64,
    now: i64,
    waiters: bool,
) -> Result<bool, RedisError> {
    let mut key = LockKey::open_write(site.ctx, site.key);
    let Some(lock) = key.lock()? else {
        metrics::EXTENDS_REJECTED.incr();
        return Ok(false);
    };
    let extended = lock.extend(owner.as_bytes(), now, lease_end, |state| {
        replicate::replicate(site.ctx, site.key, OwnerRef::Arg(owner), state);
    });
    if !extended {
        metrics::EXTENDS_REJECTED.incr();
        return Ok(false);
    }
    watch(site, lock, now, waiters);
    metrics::EXTENDS.incr();
    metrics::notify(site.ctx.get_raw(), events::EXTENDED, site.key.raw());
    key.commit(waiters, now);
    Ok(true)
}

/// `DLOCK.FENCE`: raise `owner`'s holds of the key to at least `token`, and this server's
/// token clock with them; the holds' highest token after, or `None` when `owner` holds
/// nothing there (and nothing changes). The raised holds replicate as any change does, so
/// replicas and the AOF raise their clocks too.
pub fn fence(site: Site, owner: &Arg, token: i64, now: i64) -> Result<Option<i64>, RedisError> {
    let mut key = LockKey::open_write(site.ctx, site.key);
    let mut changed = false;
    let raised = match key.lock()? {
        Some(lock) => lock.raise(owner.as_bytes(), token, now, |state| {
            changed = true;
            replicate::replicate(site.ctx, site.key, OwnerRef::Arg(owner), state);
        }),
        None => None,
    };
    let Some(raised) = raised else {
        metrics::FENCES_REJECTED.incr();
        return Ok(None);
    };
    CLOCK.observe(raised);
    metrics::FENCES.incr();
    if changed {
        metrics::notify(site.ctx.get_raw(), events::FENCED, site.key.raw());
        key.commit(false, now);
    }
    Ok(Some(raised))
}

/// From a timer: end the holds whose lease is over and, up to `budget`, those whose session
/// ended; keep an emptied lock (or create one) while clients wait for it; give back the
/// key's expiry if someone changed it (`PERSIST`, `EXPIRE`): a lock's key always expires with
/// its latest lease, so nothing can keep a key whose holds all ended. True when holds of
/// disconnected sessions are still to be ended (the budget ran out).
pub fn serve(site: Site, now: i64, waiters: bool, budget: usize) -> Result<bool, RedisError> {
    let name = site.key.as_bytes();
    let mut key = LockKey::open_write(site.ctx, site.key);
    let present = key.lock()?.is_some();
    if !present && !waiters {
        timers::forget(site.db(), name);
        // Holds of a lock that is gone cannot be ended any more.
        session::take_ending(site.db(), name, usize::MAX);
        return Ok(false);
    }
    let expiry = key.expiry();
    let lock = key.lock_or_insert()?;
    let pruned = lock.prune(now);
    let ending = session::take_ending(site.db(), name, budget);
    let mut removed = Vec::new();
    for hold in &ending {
        if let Some(state) = lock.remove(&hold.owner, hold.token) {
            removed.push((hold, state));
        }
    }
    watch(site, lock, now, waiters);
    let stale_expiry = !lock.is_empty() && lock.expires_at() != expiry;
    // Replicas got the PERSIST or EXPIRE too: give them the lease back as well, with the
    // hold that ends last (unchanged, so applying it only restores the key's expiry).
    let last_hold = stale_expiry
        .then(|| lock.holds().iter().max_by_key(|h| h.lease_end))
        .flatten()
        .map(|h| (h.owner.clone(), h.state()));
    let emptied = lock.is_empty() && !waiters;
    ended(site, &pruned);
    for (hold, state) in &removed {
        replicate::replicate(site.ctx, site.key, OwnerRef::Bytes(&hold.owner), *state);
        metrics::RELEASES.incr();
    }
    if !removed.is_empty() {
        metrics::notify(site.ctx.get_raw(), events::RELEASED, site.key.raw());
    }
    if let Some((owner, state)) = &last_hold {
        replicate::replicate(site.ctx, site.key, OwnerRef::Bytes(owner), *state);
    }
    let ended_any = !pruned.is_empty() || !removed.is_empty();
    if ended_any || !present || stale_expiry || emptied {
        key.commit(waiters, now);
    }
    Ok(session::has_ending(site.db(), name))
}

/// `DLOCK.APPLY`: set holds to states decided by the master (or recorded in the AOF), in
/// order and all or none: each is checked against the lock as the ones before it left it, and
/// a refusal undoes those already set, so a refused command changes nothing — not even the
/// token clock, which only the highest token of an accepted command raises.
pub fn apply(site: Site, holds: &[(&[u8], HoldState)], now: i64) -> Result<(), RedisError> {
    let mut key = LockKey::open_write(site.ctx, site.key);
    let removals = holds.iter().all(|(_, state)| state.count == 0);
    if removals && key.lock()?.is_none() {
        let absent = Lock::new();
        for &(owner, state) in holds {
            validate::check_hold(&absent, owner, state, now).map_err(RedisError::Str)?;
        }
        observe_highest(holds);
        return Ok(());
    }
    let lock = key.lock_or_insert()?;
    let mut undo = Vec::new();
    let mut refused = None;
    for &(owner, state) in holds {
        match validate::check_hold(lock, owner, state, now) {
            Ok(previous) => {
                if holds.len() > 1 {
                    undo.push((owner, previous.unwrap_or(HoldState { count: 0, ..state })));
                }
                lock.apply(owner, state);
            }
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    if let Some(error) = refused {
        for &(owner, previous) in undo.iter().rev() {
            lock.apply(owner, previous);
        }
        // A lock created for this command alone goes again.
        if lock.is_empty() {
            key.commit(false, now);
        }
        return Err(RedisError::Str(error));
    }
    observe_highest(holds);
    key.commit(false, now);
    Ok(())
}

fn observe_highest(holds: &[(&[u8], HoldState)]) {
    if let Some(highest) = holds.iter().map(|(_, state)| state.token).max() {
        CLOCK.observe(highest);
    }
}

/// Point the key's timer at the next lease end that matters: with waiters, the first one
/// that may let one in; without, one that ends a hold before the key itself expires (shared
/// holders, semaphore permits, a downgrade). The key's own expiry covers the rest.
fn watch(site: Site, lock: &Lock, now: i64, waiters: bool) {
    if !config::expiry_timers() {
        return;
    }
    // One hold: its lease is the key's, which Redis expires by itself.
    if lock.len() < 2 && !waiters {
        forget_timer(site);
        return;
    }
    let (Some(next), Some(last)) = (lock.next_lease_end(now), lock.expires_at()) else {
        if !waiters {
            forget_timer(site);
        }
        return;
    };
    if waiters || next < last {
        timers::serve_at(site.ctx.get_raw(), site.db(), site.key.as_bytes(), next);
    } else {
        forget_timer(site);
    }
}

/// Drop the key's timer entry, if it has one. The key's name is read (a call into the
/// server) only while some key has an entry: a refusal, the commonest request after a grant,
/// passes here every time.
fn forget_timer(site: Site) {
    if timers::any_serving() {
        timers::forget(site.db(), site.key.as_bytes());
    }
}

/// Replicate, count and announce the removal of holds whose lease ended.
fn ended(site: Site, pruned: &[Hold]) {
    if pruned.is_empty() {
        return;
    }
    for hold in pruned {
        let removed = HoldState {
            count: 0,
            ..hold.state()
        };
        replicate::replicate(site.ctx, site.key, OwnerRef::Bytes(&hold.owner), removed);
        session::unbind(site.db(), site.key.as_bytes(), &hold.owner, hold.token);
    }
    metrics::LEASES_EXPIRED.add(pruned.len() as u64);
    metrics::notify(site.ctx.get_raw(), events::EXPIRED, site.key.raw());
}
