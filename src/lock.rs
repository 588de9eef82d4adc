//! The lock's rules, in plain Rust with no Redis types.
//!
//! A lock is a list of holds, each with its own owner, fencing token, count and lease end
//! (absolute Unix milliseconds). A key is either a read-write lock — one exclusive hold, or any
//! number of shared holds — or a counting semaphore, whose holds count permits against a
//! limit. Every holder has its own lease.
//!
//! Every operation that changes a hold reports the hold's new state (`HoldState`), so the
//! Redis layer can replicate exactly that effect: nothing that depends on time or randomness is
//! decided again on a replica or during AOF replay.

pub use crate::hold::{Hold, HoldState, MAX_LIMIT, Mode};
use crate::holds::Holds;
use crate::token::TokenClock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// A new hold with a new fencing token.
    Granted(HoldState),
    /// The owner already held the lock in this mode: one more hold (or more permits), same
    /// token, lease reset.
    Reentered(HoldState),
    /// Not now: held by others in a conflicting mode, or not enough permits left.
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireError {
    /// The token clock has no token left (see `TokenClock::issue`).
    TokensExhausted,
    /// One more re-entry would overflow the hold count.
    TooManyHolds,
    /// A lock mode on a semaphore.
    NotALock,
    /// Semaphore permits on a lock.
    NotASemaphore,
    /// A semaphore limit other than the semaphore's.
    LimitMismatch,
    /// More permits than the semaphore's limit: never grantable.
    PermitsAboveLimit,
    /// Exclusive asked by a shared holder while others hold it shared: waiting would deadlock.
    UpgradeDeadlock,
}

/// Why a fenced write (`DLOCK.GUARD`) may not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceError {
    /// No hold is live: the lock is free or every lease has ended.
    NotHeld,
    /// A live hold carries a newer token: the caller's hold ended and the lock moved on.
    Stale,
    /// No live hold carries the token, and none is newer: it was never issued for this lock.
    Unknown,
}

/// A rule of `is_consistent` that a hold from outside would break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// An exclusive hold beside another owner's hold.
    Writers,
    /// Lock and semaphore holds, or semaphores of different limits, on one key.
    Modes,
    /// More permits than the semaphore's limit.
    Permits,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    holds: Holds,
}

impl Lock {
    pub fn new() -> Self {
        Lock::default()
    }

    pub fn from_holds(holds: Vec<Hold>) -> Self {
        let mut lock = Lock::new();
        for hold in holds {
            // Fails only past u32::MAX - 1 holds, more than any RDB file could fit in memory.
            lock.holds.push(hold);
        }
        lock
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of holds, live or not.
    pub fn len(&self) -> usize {
        self.holds.len()
    }

    pub fn holds(&self) -> &[Hold] {
        self.holds.as_slice()
    }

    /// The live holds, in no particular order: every one, so only tests may walk them (a
    /// command lists them with `live_by_token`, a bounded number at a time).
    #[cfg(test)]
    pub fn live(&self, now: i64) -> impl Iterator<Item = &Hold> {
        self.holds().iter().filter(move |h| h.is_live(now))
    }

    /// The number of live holds.
    pub fn live_holds(&self, now: i64) -> usize {
        self.holds.live(now).holds
    }

    /// The permits the live holds of a semaphore use.
    pub fn permits_used(&self, now: i64) -> u64 {
        self.holds.live(now).permits
    }

    fn hold(&self, slot: usize) -> Option<&Hold> {
        self.holds().get(slot)
    }

    /// The slots of `owner`'s live holds.
    fn live_owned<'a>(&'a self, owner: &'a [u8], now: i64) -> impl Iterator<Item = usize> + 'a {
        self.holds
            .owned(owner)
            .filter(move |&slot| self.hold(slot).is_some_and(|h| h.is_live(now)))
    }

    /// The hold that stands for the lock: the exclusive holder, or else the live hold with
    /// the oldest token.
    pub fn holder(&self, now: i64) -> Option<&Hold> {
        let slot = match self.holds.live_exclusive(now).next() {
            Some(slot) => slot,
            None => {
                let oldest = self.holds.live(now).oldest_token?;
                self.holds.carrying(oldest, now)?
            }
        };
        self.hold(slot)
    }

    /// Up to `limit` live holds with a token above `after`, by token, at the cost of the
    /// holds returned plus O(log n).
    pub fn live_by_token(&self, after: i64, limit: usize, now: i64) -> Vec<&Hold> {
        self.holds.live_by_token(after, limit, now)
    }

    /// The semaphore's limit when this key is a semaphore.
    pub fn semaphore_limit(&self) -> Option<u32> {
        self.holds.semaphore_limit()
    }

    /// When the key must expire: the latest lease end of any hold.
    pub fn expires_at(&self) -> Option<i64> {
        self.holds.last_lease_end()
    }

    /// When the next live hold ends: the earliest moment a waiter may get in.
    pub fn next_lease_end(&self, now: i64) -> Option<i64> {
        self.holds.next_lease_end(now)
    }

    /// Whether `owner` may act ahead of clients already waiting: a lock's holder (re-entry,
    /// downgrade, upgrade), never a semaphore's, whose queue is strictly first come, first
    /// served.
    pub fn may_pass_queue(&self, owner: &[u8], mode: Mode, now: i64) -> bool {
        !matches!(mode, Mode::Semaphore { .. }) && self.live_owned(owner, now).next().is_some()
    }

    /// Whether some hold's lease has ended at `now` (and `prune` would remove it).
    pub fn has_ended_holds(&self, now: i64) -> bool {
        self.holds.first_lease_end().is_some_and(|end| end <= now)
    }

    /// Remove the holds whose lease has ended and return them, so the caller can replicate
    /// their removal. Call before `acquire`.
    pub fn prune(&mut self, now: i64) -> Vec<Hold> {
        self.holds.prune(now)
    }

    fn position(&self, owner: &[u8], mode: Mode, now: i64) -> Option<usize> {
        self.live_owned(owner, now)
            .find(|&slot| self.hold(slot).is_some_and(|h| h.mode().same_class(mode)))
    }

    /// Whether a request in `mode` for `amount` can ever be granted on this key: a semaphore
    /// takes semaphore requests of its own limit, a lock takes lock modes.
    pub fn admits(&self, mode: Mode, amount: u32) -> Result<(), AcquireError> {
        match (mode, self.semaphore_limit()) {
            (Mode::Semaphore { .. }, None) if !self.is_empty() => Err(AcquireError::NotASemaphore),
            (Mode::Semaphore { limit }, Some(current)) if limit != current => {
                Err(AcquireError::LimitMismatch)
            }
            (Mode::Exclusive | Mode::Shared, Some(_)) => Err(AcquireError::NotALock),
            _ => permits_fit(mode, amount),
        }
    }

    /// Take the lock in `mode` for `owner` until `lease_end` — `amount` permits of a
    /// semaphore, one hold of a lock — drawing a new token from `clock` for a new hold. Ended
    /// holds must have been pruned first.
    pub fn acquire(
        &mut self,
        owner: &[u8],
        mode: Mode,
        amount: u32,
        now: i64,
        lease_end: i64,
        clock: &TokenClock,
    ) -> Result<Acquired, AcquireError> {
        self.admits(mode, amount)?;
        // The common case, a free lock, needs none of the questions below.
        if self.is_empty() {
            return self.grant(owner, mode, amount, now, lease_end, clock);
        }
        let own_hold = self.position(owner, mode, now);
        let busy = match mode {
            Mode::Semaphore { limit } => {
                let used = self.permits_used(now);
                used.saturating_add(u64::from(amount)) > u64::from(limit)
            }
            Mode::Shared => self
                .holds
                .live_exclusive(now)
                .any(|slot| self.hold(slot).is_some_and(|h| *h.owner != *owner)),
            Mode::Exclusive => {
                let owned = self.live_owned(owner, now).count();
                let others = self.live_holds(now) > owned;
                if others && own_hold.is_none() && owned > 0 {
                    return Err(AcquireError::UpgradeDeadlock);
                }
                others && own_hold.is_none()
            }
        };
        if let Some(slot) = own_hold {
            if matches!(mode, Mode::Semaphore { .. }) && busy {
                return Ok(Acquired::Busy);
            }
            let hold = self.hold(slot).ok_or(AcquireError::TooManyHolds)?;
            let count = hold
                .count
                .checked_add(amount)
                .ok_or(AcquireError::TooManyHolds)?;
            let state = HoldState {
                count,
                lease_end,
                ..hold.state()
            };
            let state = self
                .holds
                .set_state(slot, state)
                .ok_or(AcquireError::TooManyHolds)?;
            return Ok(Acquired::Reentered(state));
        }
        if busy {
            return Ok(Acquired::Busy);
        }
        self.grant(owner, mode, amount, now, lease_end, clock)
    }

    /// The common refusal, answered without the questions `acquire` asks: an exclusive
    /// request while the lock's one hold is another owner's, exclusive and live. The lease
    /// end the requester may wait for; `None` when `acquire` has to decide (which, for the
    /// locks answered here, refuses without changing anything).
    pub fn refusal(&self, owner: &[u8], mode: Mode, now: i64) -> Option<i64> {
        match (&self.holds, mode) {
            (Holds::One(hold), Mode::Exclusive)
                if hold.mode() == Mode::Exclusive && hold.is_live(now) && *hold.owner != *owner =>
            {
                Some(hold.lease_end)
            }
            _ => None,
        }
    }

    /// A new lock taken by `owner`: what `acquire` does on an empty lock, which refuses only
    /// more permits than a semaphore's limit. The common case, made without an empty lock
    /// to ask first.
    pub fn first(
        owner: &[u8],
        mode: Mode,
        amount: u32,
        now: i64,
        lease_end: i64,
        clock: &TokenClock,
    ) -> Result<(Lock, HoldState), AcquireError> {
        permits_fit(mode, amount)?;
        let state = new_hold(mode, amount, now, lease_end, clock)?;
        let lock = Lock {
            holds: Holds::One(Hold::new(owner.into(), state)),
        };
        Ok((lock, state))
    }

    /// A new hold for `owner`, with a new token.
    fn grant(
        &mut self,
        owner: &[u8],
        mode: Mode,
        amount: u32,
        now: i64,
        lease_end: i64,
        clock: &TokenClock,
    ) -> Result<Acquired, AcquireError> {
        let state = new_hold(mode, amount, now, lease_end, clock)?;
        if !self.holds.push(Hold::new(owner.into(), state)) {
            return Err(AcquireError::TooManyHolds);
        }
        Ok(Acquired::Granted(state))
    }

    /// Give back one hold of `owner`: an exclusive hold before a shared one (so exclusive,
    /// then shared, then release is a downgrade), and all of a semaphore holder's permits.
    /// `None` when the owner holds nothing live; otherwise the hold's new state, with
    /// `count == 0` when it ended (and was removed).
    pub fn release(&mut self, owner: &[u8], now: i64) -> Option<HoldState> {
        let slot = [Mode::Exclusive, Mode::Shared, Mode::Semaphore { limit: 1 }]
            .into_iter()
            .find_map(|mode| self.position(owner, mode, now))?;
        let state = self.hold(slot)?.state();
        let count = match state.mode {
            Mode::Semaphore { .. } => 0,
            _ => state.count.saturating_sub(1),
        };
        let state = HoldState { count, ..state };
        if count == 0 {
            self.holds.remove(slot);
            Some(state)
        } else {
            self.holds.set_state(slot, state)
        }
    }

    /// Move the lease end of every live hold of `owner` to `lease_end`, reporting each new
    /// state to `changed`. False when the owner holds nothing live.
    pub fn extend(
        &mut self,
        owner: &[u8],
        now: i64,
        lease_end: i64,
        mut changed: impl FnMut(HoldState),
    ) -> bool {
        let slots = self.live_slots(owner, now);
        for slot in slots.iter() {
            let Some(hold) = self.hold(slot) else {
                continue;
            };
            let state = HoldState {
                lease_end,
                ..hold.state()
            };
            if let Some(state) = self.holds.set_state(slot, state) {
                changed(state);
            }
        }
        !slots.is_empty()
    }

    /// `DLOCK.FENCE`: raise the token of each of `owner`'s live holds to at least `token`;
    /// the highest of their tokens afterwards, or `None` when `owner` holds nothing. Leases
    /// stay as they are; each hold that changed goes to `changed`.
    pub fn raise(
        &mut self,
        owner: &[u8],
        token: i64,
        now: i64,
        mut changed: impl FnMut(HoldState),
    ) -> Option<i64> {
        let mut highest = None;
        for slot in self.live_slots(owner, now).iter() {
            let Some(hold) = self.hold(slot) else {
                continue;
            };
            let mut state = hold.state();
            if state.token < token {
                state.token = token;
                if let Some(state) = self.holds.set_state(slot, state) {
                    changed(state);
                }
            }
            highest = highest.max(Some(state.token));
        }
        highest
    }

    /// The slots of `owner`'s live holds, collected before a change, which the lookup's
    /// borrow forbids; the slots stay valid, as a hold's new lease end or token moves it
    /// within the indexes, never between slots. An owner a command built has at most two
    /// holds on a key (exclusive and shared, during a downgrade): they fit on the stack, and
    /// EXTEND allocates nothing. Only a state some `apply` built could have more.
    fn live_slots(&self, owner: &[u8], now: i64) -> Slots {
        let mut slots = Slots {
            few: [0; 2],
            found: 0,
            more: Vec::new(),
        };
        for slot in self.live_owned(owner, now) {
            match slots.few.get_mut(slots.found) {
                Some(entry) => *entry = slot,
                None => slots.more.push(slot),
            }
            slots.found = slots.found.saturating_add(1);
        }
        slots
    }

    /// End the hold of `owner` that carries `token`, whatever its count; its final state.
    pub fn remove(&mut self, owner: &[u8], token: i64) -> Option<HoldState> {
        let slot = self
            .holds
            .owned(owner)
            .find(|&slot| self.hold(slot).is_some_and(|h| h.token == token))?;
        let hold = self.holds.remove(slot)?;
        Some(HoldState {
            count: 0,
            ..hold.state()
        })
    }

    /// Set `owner`'s hold of the state's mode to a state decided elsewhere (a master or the
    /// AOF); `count == 0` removes it.
    pub fn apply(&mut self, owner: &[u8], state: HoldState) {
        let slot = self.holds.owned(owner).find(|&slot| {
            self.hold(slot)
                .is_some_and(|h| h.mode().same_class(state.mode))
        });
        match (slot, state.count) {
            (Some(slot), 0) => {
                self.holds.remove(slot);
            }
            (None, 0) => {}
            (Some(slot), _) => {
                self.holds.set_state(slot, state);
            }
            (None, _) => {
                // Fails only past u32::MAX - 1 holds, more than a server has memory for.
                self.holds.push(Hold::new(owner.into(), state));
            }
        }
    }

    /// Whether `apply(owner, state)` keeps the rules `is_consistent` checks, given that they
    /// hold now — in O(log n), because states from outside (the AOF, a master, an RDB file)
    /// arrive one hold at a time and a scan per hold would make loading quadratic. The hold's
    /// own fields (owner, token, count, lease end) are the caller's to check. On success, the
    /// owner's hold that `state` replaces, if any.
    pub fn check_apply(&self, owner: &[u8], state: HoldState) -> Result<Option<HoldState>, Broken> {
        let current = self
            .holds
            .owned(owner)
            .filter_map(|slot| self.hold(slot))
            .find(|h| h.mode().same_class(state.mode))
            .map(Hold::state);
        if state.count == 0 {
            return Ok(current);
        }
        let others = self.len().saturating_sub(usize::from(current.is_some()));
        match state.mode {
            Mode::Semaphore { limit } => {
                // A consistent key with a hold and no semaphore limit is a lock.
                match self.semaphore_limit() {
                    None if others > 0 => return Err(Broken::Modes),
                    Some(existing) if existing != limit && others > 0 => {
                        return Err(Broken::Modes);
                    }
                    _ => {}
                }
                // Lease ends are never negative, so at i64::MIN every hold counts.
                let used = self
                    .holds
                    .live(i64::MIN)
                    .permits
                    .saturating_sub(current.map_or(0, |c| u64::from(c.count)));
                if used.saturating_add(u64::from(state.count)) > u64::from(limit) {
                    return Err(Broken::Permits);
                }
            }
            Mode::Exclusive | Mode::Shared if self.semaphore_limit().is_some() => {
                return Err(Broken::Modes);
            }
            Mode::Exclusive => {
                // One hold per owner and mode: an owner has at most two holds of a lock.
                if self.len() > self.holds.owned(owner).count() {
                    return Err(Broken::Writers);
                }
            }
            Mode::Shared => {
                let other_writer = self
                    .holds
                    .live_exclusive(i64::MIN)
                    .any(|slot| self.hold(slot).is_some_and(|h| *h.owner != *owner));
                if other_writer {
                    return Err(Broken::Writers);
                }
            }
        }
        Ok(current)
    }

    /// Whether a live hold carries `token`: the check before a fenced write.
    pub fn fence(&self, token: i64, now: i64) -> Result<(), FenceError> {
        if self.holds.carrying(token, now).is_some() {
            return Ok(());
        }
        match self.holds.live(now).newest_token {
            None => Err(FenceError::NotHeld),
            Some(newest) if newest > token => Err(FenceError::Stale),
            Some(_) => Err(FenceError::Unknown),
        }
    }

    /// Whether the holds obey the rules every operation keeps: each hold has an owner, a
    /// positive token and a count; all of a lock or all of one semaphore, whose permits fit
    /// its limit; at most one exclusive owner, with no other owner's hold beside it; one hold
    /// per owner and mode. Every command keeps them (holds are pruned before any grant); a
    /// forged `RESTORE` payload may not.
    pub fn is_consistent(&self) -> bool {
        let holds = self.holds();
        let valid = holds
            .iter()
            .all(|h| !h.owner.is_empty() && h.token > 0 && h.count > 0);
        let mut seen = std::collections::HashSet::new();
        let unique = holds
            .iter()
            .all(|h| seen.insert((&*h.owner, h.mode().class())));
        let rules = match self.semaphore_limit() {
            Some(limit) => {
                holds.iter().all(|h| h.mode() == Mode::Semaphore { limit })
                    && holds.iter().map(|h| u64::from(h.count)).sum::<u64>() <= u64::from(limit)
            }
            None => {
                let mut writers = holds.iter().filter(|h| h.mode() == Mode::Exclusive);
                match (writers.next(), writers.next()) {
                    (None, _) => true,
                    (Some(_), Some(_)) => false,
                    (Some(writer), None) => holds.iter().all(|h| *h.owner == *writer.owner),
                }
            }
        };
        valid && unique && rules
    }

    /// Bytes this lock owns on the heap, for `MEMORY USAGE`.
    pub fn heap_size(&self) -> usize {
        self.holds.heap_size()
    }
}

/// More permits than a semaphore has are refused, whatever the key holds.
fn permits_fit(mode: Mode, amount: u32) -> Result<(), AcquireError> {
    match mode {
        Mode::Semaphore { limit } if amount > limit => Err(AcquireError::PermitsAboveLimit),
        _ => Ok(()),
    }
}

/// The state of a new hold: `amount` in `mode` until `lease_end`, with a new token.
fn new_hold(
    mode: Mode,
    amount: u32,
    now: i64,
    lease_end: i64,
    clock: &TokenClock,
) -> Result<HoldState, AcquireError> {
    let token = clock.issue(now).ok_or(AcquireError::TokensExhausted)?;
    Ok(HoldState {
        token,
        count: amount,
        lease_end,
        mode,
    })
}

/// A server-generated owner id: 128 random bits as 32 lowercase hex digits.
pub fn owner_from_bits(bits: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, digit) in out.iter_mut().enumerate() {
        let shift = 124usize.saturating_sub(i.saturating_mul(4));
        let nibble = (bits >> shift) & 0xf;
        *digit = HEX.get(nibble as usize).copied().unwrap_or(b'0');
    }
    out
}

/// Slots of one owner's holds (`Lock::live_slots`).
struct Slots {
    few: [usize; 2],
    found: usize,
    more: Vec<usize>,
}

impl Slots {
    fn is_empty(&self) -> bool {
        self.found == 0
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let few = self.few.get(..self.found.min(2)).unwrap_or_default();
        few.iter().chain(&self.more).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{EPOCH_MS, TICKS_PER_MS};

    const NOW: i64 = EPOCH_MS + 10_000;

    fn granted(lock: &mut Lock, owner: &[u8], clock: &TokenClock) -> HoldState {
        match lock.acquire(owner, Mode::Exclusive, 1, NOW, NOW + 1_000, clock) {
            Ok(Acquired::Granted(state)) => state,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn a_first_hold_is_what_acquire_grants_on_an_empty_lock() {
        for (mode, amount) in [
            (Mode::Exclusive, 1),
            (Mode::Shared, 1),
            (Mode::Semaphore { limit: 3 }, 2),
            (Mode::Semaphore { limit: 3 }, 3),
        ] {
            let (first_clock, acquire_clock) = (TokenClock::new(), TokenClock::new());
            let (first, state) =
                Lock::first(b"a", mode, amount, NOW, NOW + 1_000, &first_clock).unwrap();
            let mut acquired = Lock::new();
            assert_eq!(
                acquired.acquire(b"a", mode, amount, NOW, NOW + 1_000, &acquire_clock),
                Ok(Acquired::Granted(state))
            );
            assert_eq!(first, acquired);
            assert_eq!(first_clock.last(), acquire_clock.last());
        }
        let semaphore = Mode::Semaphore { limit: 3 };
        let clock = TokenClock::new();
        assert_eq!(
            Lock::first(b"a", semaphore, 4, NOW, NOW + 1_000, &clock).err(),
            Lock::new()
                .acquire(b"a", semaphore, 4, NOW, NOW + 1_000, &clock)
                .err()
        );
        assert_eq!(clock.last(), 0);
    }

    #[test]
    fn a_refusal_is_what_acquire_answers() {
        let clock = TokenClock::new();
        let end = NOW + 1_000;
        let one = |owner: &[u8], mode| {
            let mut lock = Lock::new();
            lock.acquire(owner, mode, 1, NOW, end, &clock).unwrap();
            lock
        };
        let mut two = one(b"a", Mode::Shared);
        two.acquire(b"b", Mode::Shared, 1, NOW, end, &clock)
            .unwrap();
        let semaphore = Mode::Semaphore { limit: 1 };
        let locks = [
            Lock::new(),
            one(b"a", Mode::Exclusive),
            one(b"a", Mode::Shared),
            one(b"a", semaphore),
            two,
        ];
        let mut refused = 0;
        for lock in &locks {
            for (owner, mode) in [
                (&b"a"[..], Mode::Exclusive),
                (b"b", Mode::Exclusive),
                (b"b", Mode::Shared),
                (b"b", semaphore),
            ] {
                for now in [NOW, end - 1, end] {
                    let Some(lease_end) = lock.refusal(owner, mode, now) else {
                        continue;
                    };
                    refused += 1;
                    let mut acquired = lock.clone();
                    assert!(acquired.prune(now).is_empty());
                    assert_eq!(
                        acquired.acquire(owner, mode, 1, now, now + 1_000, &clock),
                        Ok(Acquired::Busy)
                    );
                    assert_eq!(&acquired, lock);
                    assert_eq!(lock.next_lease_end(now), Some(lease_end));
                }
            }
        }
        // Another owner's exclusive request, before the lease ends: nothing else is answered.
        assert_eq!(refused, 2);
        assert_eq!(locks[1].refusal(b"b", Mode::Exclusive, end), None);
        assert_eq!(locks[1].refusal(b"a", Mode::Exclusive, NOW), None);
    }

    #[test]
    fn only_the_live_holds_token_passes_the_fence() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        assert_eq!(lock.fence(1, NOW), Err(FenceError::NotHeld));
        let first = granted(&mut lock, b"a", &clock);
        assert_eq!(lock.fence(first.token, NOW), Ok(()));
        assert_eq!(lock.fence(first.token + 1, NOW), Err(FenceError::Unknown));
        assert_eq!(
            lock.fence(first.token, NOW + 1_000),
            Err(FenceError::NotHeld)
        );

        lock.prune(NOW + 1_000);
        let later = NOW + 1_000;
        let second = match lock.acquire(b"b", Mode::Exclusive, 1, later, later + 1_000, &clock) {
            Ok(Acquired::Granted(state)) => state,
            other => panic!("expected a grant, got {other:?}"),
        };
        assert_eq!(lock.fence(first.token, later), Err(FenceError::Stale));
        assert_eq!(lock.fence(second.token, later), Ok(()));
    }

    #[test]
    fn a_free_lock_is_granted_with_a_token_and_lease() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let state = granted(&mut lock, b"a", &clock);
        assert_eq!(
            state,
            HoldState {
                token: 10_000 * TICKS_PER_MS,
                count: 1,
                lease_end: NOW + 1_000,
                mode: Mode::Exclusive,
            }
        );
        assert_eq!(lock.holder(NOW).map(|h| &*h.owner), Some(&b"a"[..]));
        assert_eq!(lock.expires_at(), Some(NOW + 1_000));
    }

    #[test]
    fn another_owner_is_refused_without_change() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        granted(&mut lock, b"a", &clock);
        let before = lock.clone();
        assert_eq!(
            lock.acquire(b"b", Mode::Exclusive, 1, NOW + 1, NOW + 5_000, &clock),
            Ok(Acquired::Busy)
        );
        assert_eq!(lock, before);
        assert_eq!(clock.last(), 10_000 * TICKS_PER_MS);
    }

    #[test]
    fn reentry_keeps_the_token_counts_and_resets_the_lease() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let first = granted(&mut lock, b"a", &clock);
        assert_eq!(
            lock.acquire(b"a", Mode::Exclusive, 1, NOW + 10, NOW + 300, &clock),
            Ok(Acquired::Reentered(HoldState {
                token: first.token,
                count: 2,
                lease_end: NOW + 300,
                mode: Mode::Exclusive,
            }))
        );
        assert_eq!(lock.expires_at(), Some(NOW + 300));
    }

    #[test]
    fn release_counts_down_then_frees() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let first = granted(&mut lock, b"a", &clock);
        assert!(
            lock.acquire(b"a", Mode::Exclusive, 1, NOW, NOW + 1_000, &clock)
                .is_ok()
        );
        assert_eq!(
            lock.release(b"a", NOW),
            Some(HoldState { count: 1, ..first })
        );
        assert!(!lock.is_empty());
        assert_eq!(
            lock.release(b"a", NOW),
            Some(HoldState { count: 0, ..first })
        );
        assert!(lock.is_empty());
        assert_eq!(lock.release(b"a", NOW), None);
    }

    #[test]
    fn only_the_owner_releases_or_extends() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        granted(&mut lock, b"a", &clock);
        let before = lock.clone();
        assert_eq!(lock.release(b"b", NOW), None);
        assert!(!lock.extend(b"b", NOW, NOW + 9_000, |_| panic!("extended")));
        assert_eq!(lock, before);
    }

    #[test]
    fn extend_moves_the_lease_end() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let first = granted(&mut lock, b"a", &clock);
        let mut states = vec![];
        assert!(lock.extend(b"a", NOW + 500, NOW + 9_000, |s| states.push(s)));
        assert_eq!(
            states,
            [HoldState {
                lease_end: NOW + 9_000,
                ..first
            }]
        );
        assert_eq!(lock.expires_at(), Some(NOW + 9_000));
    }

    #[test]
    fn raise_lifts_only_a_live_holders_token_and_never_lowers_it() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let first = granted(&mut lock, b"a", &clock);
        let mut states = vec![];
        assert_eq!(
            lock.raise(b"b", first.token + 9, NOW, |s| states.push(s)),
            None
        );
        assert_eq!(
            lock.raise(b"a", first.token - 1, NOW, |s| states.push(s)),
            Some(first.token)
        );
        assert!(states.is_empty());
        let raised = first.token + 9;
        assert_eq!(
            lock.raise(b"a", raised, NOW, |s| states.push(s)),
            Some(raised)
        );
        assert_eq!(
            states,
            [HoldState {
                token: raised,
                ..first
            }]
        );
        assert_eq!(lock.fence(raised, NOW), Ok(()));
        assert_eq!(lock.fence(first.token, NOW), Err(FenceError::Stale));
        assert_eq!(
            lock.raise(b"a", raised + 1, first.lease_end, |_| panic!("raised")),
            None
        );
    }

    #[test]
    fn an_ended_lease_frees_the_lock_for_others_with_a_higher_token() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let first = granted(&mut lock, b"a", &clock);
        let after = first.lease_end;
        assert_eq!(lock.release(b"a", after), None);
        assert!(!lock.extend(b"a", after, after + 10, |_| panic!("extended")));
        let pruned = lock.prune(after);
        assert_eq!(pruned.len(), 1);
        assert!(lock.is_empty());
        match lock.acquire(b"b", Mode::Exclusive, 1, after, after + 1_000, &clock) {
            Ok(Acquired::Granted(state)) => assert!(state.token > first.token),
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn prune_keeps_live_holds_and_allocates_nothing_when_none_ended() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        granted(&mut lock, b"a", &clock);
        let pruned = lock.prune(NOW);
        assert!(pruned.is_empty());
        assert_eq!(pruned.capacity(), 0);
        assert_eq!(lock.holds().len(), 1);
    }

    #[test]
    fn reentry_count_overflow_is_an_error_not_a_wrap() {
        let clock = TokenClock::new();
        let full = HoldState {
            token: 7,
            count: u32::MAX,
            lease_end: NOW + 1_000,
            mode: Mode::Exclusive,
        };
        let mut lock = Lock::from_holds(vec![Hold::new(b"a"[..].into(), full)]);
        let before = lock.clone();
        assert_eq!(
            lock.acquire(b"a", Mode::Exclusive, 1, NOW, NOW + 2_000, &clock),
            Err(AcquireError::TooManyHolds)
        );
        assert_eq!(lock, before);
    }

    #[test]
    fn exhausted_tokens_refuse_the_grant() {
        let clock = TokenClock::new();
        clock.observe(i64::MAX);
        let mut lock = Lock::new();
        assert_eq!(
            lock.acquire(b"a", Mode::Exclusive, 1, NOW, NOW + 1, &clock),
            Err(AcquireError::TokensExhausted)
        );
        assert!(lock.is_empty());
    }

    #[test]
    fn apply_sets_updates_and_removes_holds() {
        let mut lock = Lock::new();
        let state = HoldState {
            token: 42,
            count: 2,
            lease_end: NOW + 5,
            mode: Mode::Exclusive,
        };
        lock.apply(b"a", state);
        assert_eq!(lock.holds().first().map(Hold::state), Some(state));
        let changed = HoldState { count: 1, ..state };
        lock.apply(b"a", changed);
        assert_eq!(lock.holds().len(), 1);
        assert_eq!(lock.holds().first().map(Hold::state), Some(changed));
        lock.apply(b"a", HoldState { count: 0, ..state });
        assert!(lock.is_empty());
        lock.apply(b"a", HoldState { count: 0, ..state });
        assert!(lock.is_empty());
    }

    fn take(
        lock: &mut Lock,
        owner: &[u8],
        mode: Mode,
        amount: u32,
        clock: &TokenClock,
    ) -> Acquired {
        lock.acquire(owner, mode, amount, NOW, NOW + 1_000, clock)
            .unwrap()
    }

    fn granted_in(lock: &mut Lock, owner: &[u8], mode: Mode, clock: &TokenClock) -> HoldState {
        match take(lock, owner, mode, 1, clock) {
            Acquired::Granted(state) => state,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn modes_conflict_as_a_read_write_lock() {
        let clock = TokenClock::new();
        use Mode::{Exclusive, Shared};
        // (held by another owner, requested) -> granted?
        for (held, asked, grants) in [
            (Shared, Shared, true),
            (Shared, Exclusive, false),
            (Exclusive, Shared, false),
            (Exclusive, Exclusive, false),
        ] {
            let mut lock = Lock::new();
            granted_in(&mut lock, b"a", held, &clock);
            let got = take(&mut lock, b"b", asked, 1, &clock);
            assert_eq!(
                matches!(got, Acquired::Granted(_)),
                grants,
                "{held:?} then {asked:?}: {got:?}"
            );
        }
    }

    #[test]
    fn each_shared_holder_has_its_own_token_and_lease() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let a = granted_in(&mut lock, b"a", Mode::Shared, &clock);
        let b = match lock.acquire(b"b", Mode::Shared, 1, NOW, NOW + 50, &clock) {
            Ok(Acquired::Granted(state)) => state,
            other => panic!("{other:?}"),
        };
        assert!(b.token > a.token);
        assert_eq!(lock.next_lease_end(NOW), Some(NOW + 50));
        assert_eq!(lock.expires_at(), Some(NOW + 1_000));
        assert_eq!(lock.holder(NOW).map(|h| h.token), Some(a.token));
        // b's lease ends: a writer still waits for a.
        assert_eq!(lock.prune(NOW + 50).len(), 1);
        assert_eq!(
            lock.acquire(b"w", Mode::Exclusive, 1, NOW + 50, NOW + 99, &clock),
            Ok(Acquired::Busy)
        );
        assert_eq!(
            take(&mut lock, b"a", Mode::Shared, 1, &clock),
            Acquired::Reentered(HoldState { count: 2, ..a })
        );
    }

    #[test]
    fn downgrade_is_allowed_and_upgrade_only_alone() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let write = granted_in(&mut lock, b"a", Mode::Exclusive, &clock);
        let read = granted_in(&mut lock, b"a", Mode::Shared, &clock);
        assert!(read.token > write.token);
        // Release gives back the exclusive hold first: a downgrade.
        assert_eq!(
            lock.release(b"a", NOW).map(|s| s.mode),
            Some(Mode::Exclusive)
        );
        assert_eq!(lock.holder(NOW).map(Hold::mode), Some(Mode::Shared));
        granted_in(&mut lock, b"b", Mode::Shared, &clock);

        // a may not upgrade while b reads: waiting would deadlock.
        assert_eq!(
            lock.acquire(b"a", Mode::Exclusive, 1, NOW, NOW + 1, &clock),
            Err(AcquireError::UpgradeDeadlock)
        );
        assert_eq!(lock.release(b"b", NOW).map(|s| s.count), Some(0));
        // Alone, a upgrades.
        assert!(matches!(
            take(&mut lock, b"a", Mode::Exclusive, 1, &clock),
            Acquired::Granted(_)
        ));
        assert_eq!(
            take(&mut lock, b"c", Mode::Shared, 1, &clock),
            Acquired::Busy
        );
    }

    #[test]
    fn a_semaphore_grants_permits_up_to_its_limit() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let five = Mode::Semaphore { limit: 5 };
        let a = match take(&mut lock, b"a", five, 3, &clock) {
            Acquired::Granted(state) => state,
            other => panic!("{other:?}"),
        };
        assert_eq!(a.count, 3);
        assert_eq!(take(&mut lock, b"b", five, 3, &clock), Acquired::Busy);
        assert!(matches!(
            take(&mut lock, b"b", five, 2, &clock),
            Acquired::Granted(_)
        ));
        assert_eq!(take(&mut lock, b"a", five, 1, &clock), Acquired::Busy);
        // Releasing gives back all of an owner's permits.
        assert_eq!(lock.release(b"b", NOW).map(|s| s.count), Some(0));
        assert_eq!(
            take(&mut lock, b"a", five, 2, &clock),
            Acquired::Reentered(HoldState { count: 5, ..a })
        );
        for (mode, amount, error) in [
            (Mode::Semaphore { limit: 4 }, 1, AcquireError::LimitMismatch),
            (Mode::Exclusive, 1, AcquireError::NotALock),
            (Mode::Shared, 1, AcquireError::NotALock),
        ] {
            assert_eq!(
                lock.acquire(b"z", mode, amount, NOW, NOW + 1, &clock),
                Err(error)
            );
        }
        let mut plain = Lock::new();
        granted_in(&mut plain, b"a", Mode::Exclusive, &clock);
        assert_eq!(plain.admits(five, 1), Err(AcquireError::NotASemaphore));
        assert_eq!(
            Lock::new().admits(five, 6),
            Err(AcquireError::PermitsAboveLimit)
        );
        assert!(!lock.may_pass_queue(b"a", five, NOW));
        assert!(plain.may_pass_queue(b"a", Mode::Shared, NOW));
    }

    #[test]
    fn consistency_rejects_what_no_command_could_build() {
        let hold = |owner: &[u8], token, mode| {
            let state = HoldState {
                token,
                count: 2,
                lease_end: NOW,
                mode,
            };
            Hold::new(owner.into(), state)
        };
        let three = Mode::Semaphore { limit: 3 };
        let four = Mode::Semaphore { limit: 4 };
        for (holds, consistent) in [
            (
                vec![hold(b"a", 1, Mode::Exclusive), hold(b"a", 2, Mode::Shared)],
                true,
            ),
            (
                vec![hold(b"a", 1, Mode::Shared), hold(b"b", 2, Mode::Shared)],
                true,
            ),
            (
                vec![hold(b"a", 1, Mode::Exclusive), hold(b"b", 2, Mode::Shared)],
                false,
            ),
            (
                vec![
                    hold(b"a", 1, Mode::Exclusive),
                    hold(b"b", 2, Mode::Exclusive),
                ],
                false,
            ),
            (
                vec![hold(b"a", 1, Mode::Shared), hold(b"a", 2, Mode::Shared)],
                false,
            ),
            (vec![hold(b"a", 1, four), hold(b"b", 2, four)], true),
            (vec![hold(b"a", 1, three), hold(b"b", 2, three)], false),
            (vec![hold(b"a", 1, four), hold(b"b", 2, three)], false),
            (
                vec![hold(b"a", 1, four), hold(b"b", 2, Mode::Shared)],
                false,
            ),
        ] {
            let lock = Lock::from_holds(holds.clone());
            assert_eq!(lock.is_consistent(), consistent, "{holds:?}");
        }
    }

    #[test]
    fn modes_round_trip_through_their_code_and_apply() {
        for mode in [
            Mode::Exclusive,
            Mode::Shared,
            Mode::Semaphore { limit: 1 },
            Mode::Semaphore { limit: MAX_LIMIT },
        ] {
            assert_eq!(Mode::from_code(mode.code()), mode);
        }
        let mut lock = Lock::new();
        let shared = HoldState {
            token: 9,
            count: 1,
            lease_end: NOW + 5,
            mode: Mode::Shared,
        };
        let exclusive = HoldState {
            token: 8,
            mode: Mode::Exclusive,
            ..shared
        };
        lock.apply(b"a", exclusive);
        lock.apply(b"a", shared);
        assert_eq!(lock.holds().len(), 2);
        lock.apply(
            b"a",
            HoldState {
                count: 0,
                ..exclusive
            },
        );
        assert_eq!(
            lock.holds().iter().map(Hold::state).collect::<Vec<_>>(),
            [shared]
        );
        assert_eq!(lock.remove(b"a", 9), Some(HoldState { count: 0, ..shared }));
        assert!(lock.is_empty());
    }

    #[test]
    fn generated_owners_are_32_lowercase_hex_digits() {
        assert_eq!(&owner_from_bits(0), b"00000000000000000000000000000000");
        assert_eq!(
            &owner_from_bits(u128::MAX),
            b"ffffffffffffffffffffffffffffffff"
        );
        assert_eq!(
            &owner_from_bits(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
            b"0123456789abcdeffedcba9876543210"
        );
    }

    /// The holds as a plain list, every question answered by a scan: the rules as they were
    /// before the indexes, to check the indexed lock against.
    #[derive(Clone, Debug, Default)]
    struct Naive {
        holds: Vec<Hold>,
    }

    impl Naive {
        fn live(&self, now: i64) -> impl Iterator<Item = &Hold> {
            self.holds.iter().filter(move |h| h.is_live(now))
        }

        fn holder(&self, now: i64) -> Option<&Hold> {
            self.live(now)
                .find(|h| h.mode() == Mode::Exclusive)
                .or_else(|| self.live(now).min_by_key(|h| h.token))
        }

        fn semaphore_limit(&self) -> Option<u32> {
            self.holds.iter().find_map(|h| match h.mode() {
                Mode::Semaphore { limit } => Some(limit),
                _ => None,
            })
        }

        fn expires_at(&self) -> Option<i64> {
            self.holds.iter().map(|h| h.lease_end).max()
        }

        fn next_lease_end(&self, now: i64) -> Option<i64> {
            self.live(now).map(|h| h.lease_end).min()
        }

        fn may_pass_queue(&self, owner: &[u8], mode: Mode, now: i64) -> bool {
            !matches!(mode, Mode::Semaphore { .. }) && self.live(now).any(|h| *h.owner == *owner)
        }

        fn prune(&mut self, now: i64) -> Vec<Hold> {
            let (kept, ended) = std::mem::take(&mut self.holds)
                .into_iter()
                .partition(|h| h.is_live(now));
            self.holds = kept;
            ended
        }

        fn position(&self, owner: &[u8], mode: Mode, now: i64) -> Option<usize> {
            self.holds
                .iter()
                .position(|h| h.is_live(now) && *h.owner == *owner && h.mode().same_class(mode))
        }

        fn admits(&self, mode: Mode, amount: u32) -> Result<(), AcquireError> {
            match (mode, self.semaphore_limit()) {
                (Mode::Semaphore { .. }, None) if !self.holds.is_empty() => {
                    Err(AcquireError::NotASemaphore)
                }
                (Mode::Semaphore { limit }, Some(current)) if limit != current => {
                    Err(AcquireError::LimitMismatch)
                }
                (Mode::Semaphore { limit }, _) if amount > limit => {
                    Err(AcquireError::PermitsAboveLimit)
                }
                (Mode::Exclusive | Mode::Shared, Some(_)) => Err(AcquireError::NotALock),
                _ => Ok(()),
            }
        }

        fn acquire(
            &mut self,
            owner: &[u8],
            mode: Mode,
            amount: u32,
            now: i64,
            lease_end: i64,
            clock: &TokenClock,
        ) -> Result<Acquired, AcquireError> {
            self.admits(mode, amount)?;
            let busy = match mode {
                Mode::Semaphore { limit } => {
                    let used: u64 = self.live(now).map(|h| u64::from(h.count)).sum();
                    used + u64::from(amount) > u64::from(limit)
                }
                Mode::Shared => self
                    .live(now)
                    .any(|h| h.mode() == Mode::Exclusive && *h.owner != *owner),
                Mode::Exclusive => {
                    let own_hold = self.position(owner, mode, now).is_some();
                    let others = self.live(now).any(|h| *h.owner != *owner);
                    if others && !own_hold && self.live(now).any(|h| *h.owner == *owner) {
                        return Err(AcquireError::UpgradeDeadlock);
                    }
                    others && !own_hold
                }
            };
            if let Some(index) = self.position(owner, mode, now) {
                if matches!(mode, Mode::Semaphore { .. }) && busy {
                    return Ok(Acquired::Busy);
                }
                let hold = self.holds.get_mut(index).unwrap();
                hold.count = hold
                    .count
                    .checked_add(amount)
                    .ok_or(AcquireError::TooManyHolds)?;
                hold.lease_end = lease_end;
                return Ok(Acquired::Reentered(hold.state()));
            }
            if busy {
                return Ok(Acquired::Busy);
            }
            let token = clock.issue(now).ok_or(AcquireError::TokensExhausted)?;
            let state = HoldState {
                token,
                count: amount,
                lease_end,
                mode,
            };
            self.holds.push(Hold::new(owner.into(), state));
            Ok(Acquired::Granted(state))
        }

        fn release(&mut self, owner: &[u8], now: i64) -> Option<HoldState> {
            let index = [Mode::Exclusive, Mode::Shared, Mode::Semaphore { limit: 1 }]
                .into_iter()
                .find_map(|mode| self.position(owner, mode, now))?;
            let hold = self.holds.get_mut(index).unwrap();
            hold.count = match hold.mode() {
                Mode::Semaphore { .. } => 0,
                _ => hold.count - 1,
            };
            let state = hold.state();
            if state.count == 0 {
                self.holds.swap_remove(index);
            }
            Some(state)
        }

        fn extend(&mut self, owner: &[u8], now: i64, lease_end: i64) -> Vec<HoldState> {
            let mut changed = vec![];
            for hold in &mut self.holds {
                if hold.is_live(now) && *hold.owner == *owner {
                    hold.lease_end = lease_end;
                    changed.push(hold.state());
                }
            }
            changed
        }

        fn remove(&mut self, owner: &[u8], token: i64) -> Option<HoldState> {
            let index = self
                .holds
                .iter()
                .position(|h| *h.owner == *owner && h.token == token)?;
            let hold = self.holds.swap_remove(index);
            Some(HoldState {
                count: 0,
                ..hold.state()
            })
        }

        fn apply(&mut self, owner: &[u8], state: HoldState) {
            let index = self
                .holds
                .iter()
                .position(|h| *h.owner == *owner && h.mode().same_class(state.mode));
            match (index, state.count) {
                (Some(i), 0) => {
                    self.holds.swap_remove(i);
                }
                (None, 0) => {}
                (Some(i), _) => *self.holds.get_mut(i).unwrap() = Hold::new(owner.into(), state),
                (None, _) => self.holds.push(Hold::new(owner.into(), state)),
            }
        }

        fn fence(&self, token: i64, now: i64) -> Result<(), FenceError> {
            let mut newest = None;
            for hold in self.live(now) {
                if hold.token == token {
                    return Ok(());
                }
                newest = newest.max(Some(hold.token));
            }
            match newest {
                None => Err(FenceError::NotHeld),
                Some(newest) if newest > token => Err(FenceError::Stale),
                Some(_) => Err(FenceError::Unknown),
            }
        }
    }

    /// xorshift64*: deterministic, so a failing seed replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            *items.get(self.below(items.len() as u64) as usize).unwrap()
        }
    }

    fn sorted(holds: impl IntoIterator<Item = Hold>) -> Vec<(i64, Vec<u8>, HoldState)> {
        let mut list: Vec<_> = holds
            .into_iter()
            .map(|h| (h.token, h.owner.to_vec(), h.state()))
            .collect();
        list.sort_by_key(|(token, owner, state)| (*token, owner.clone(), state.mode.code()));
        list
    }

    fn sorted_states(mut states: Vec<HoldState>) -> Vec<HoldState> {
        states.sort_by_key(|s| (s.token, s.mode.code()));
        states
    }

    /// Every question, asked of both at `now`.
    fn same_answers(lock: &Lock, naive: &Naive, owners: &[Vec<u8>], now: i64, rng: &mut Rng) {
        lock.holds.check();
        let cloned = |holds: &[Hold]| holds.to_vec();
        assert_eq!(sorted(cloned(lock.holds())), sorted(naive.holds.clone()));
        assert_eq!(
            sorted(lock.live(now).cloned()),
            sorted(naive.live(now).cloned())
        );
        assert_eq!(lock.len(), naive.holds.len());
        assert_eq!(lock.live_holds(now), naive.live(now).count());
        let mut by_token: Vec<&Hold> = naive.live(now).collect();
        by_token.sort_by_key(|h| h.token);
        let after = by_token.get(by_token.len() / 3).map_or(0, |h| h.token);
        for (after, limit) in [(0, usize::MAX), (0, 16), (after, 5)] {
            let want: Vec<&Hold> = by_token
                .iter()
                .copied()
                .filter(|h| h.token > after)
                .take(limit)
                .collect();
            assert_eq!(lock.live_by_token(after, limit, now), want);
        }
        assert_eq!(
            lock.permits_used(now),
            naive.live(now).map(|h| u64::from(h.count)).sum::<u64>()
        );
        assert_eq!(lock.expires_at(), naive.expires_at());
        assert_eq!(lock.next_lease_end(now), naive.next_lease_end(now));
        // Which of several live exclusive holds (or semaphore limits) stands first depended
        // on the list's order, which no command can build; then any one of them will do.
        let exclusive: Vec<&Hold> = naive
            .live(now)
            .filter(|h| h.mode() == Mode::Exclusive)
            .collect();
        match (exclusive.len(), lock.holder(now)) {
            (0 | 1, holder) => assert_eq!(holder, naive.holder(now)),
            (_, Some(holder)) => assert!(exclusive.contains(&holder)),
            (_, None) => panic!("no holder"),
        }
        let mut limits: Vec<u32> = naive
            .holds
            .iter()
            .filter_map(|h| match h.mode() {
                Mode::Semaphore { limit } => Some(limit),
                _ => None,
            })
            .collect();
        limits.dedup();
        match limits.len() {
            0 | 1 => assert_eq!(lock.semaphore_limit(), naive.semaphore_limit()),
            _ => assert!(limits.contains(&lock.semaphore_limit().unwrap())),
        }
        let mut tokens = vec![0, 1, i64::MAX];
        for _ in 0..4 {
            if let Some(hold) = naive
                .holds
                .get(rng.below(naive.holds.len() as u64 + 1) as usize)
            {
                tokens.extend([hold.token - 1, hold.token, hold.token + 1]);
            }
        }
        for token in tokens {
            assert_eq!(lock.fence(token, now), naive.fence(token, now), "{token}");
        }
        for owner in owners.iter().take(4) {
            for mode in [Mode::Exclusive, Mode::Semaphore { limit: 3 }] {
                assert_eq!(
                    lock.may_pass_queue(owner, mode, now),
                    naive.may_pass_queue(owner, mode, now)
                );
            }
        }
    }

    /// Drive the indexed lock and the naive one with the same random commands and compare
    /// every answer and the holds after every step.
    /// Returns how often each outcome of `acquire` came up, and the most holds the key had.
    fn run_model(
        seed: u64,
        steps: usize,
        owner_count: usize,
        modes: &[Mode],
        max_amount: u64,
        lease: u64,
    ) -> (std::collections::BTreeMap<String, usize>, usize) {
        let mut outcomes = std::collections::BTreeMap::new();
        let mut most = 0;
        let mut rng = Rng(seed);
        let owners: Vec<Vec<u8>> = (0..owner_count)
            .map(|i| match i % 4 {
                // Past INLINE_OWNER: stored on the heap.
                3 => format!("{i:-<48}").into_bytes(),
                _ => format!("o{i}").into_bytes(),
            })
            .collect();
        let (clock, naive_clock) = (TokenClock::new(), TokenClock::new());
        let (mut lock, mut naive) = (Lock::new(), Naive::default());
        let mut now = NOW;
        for step in 0..steps {
            now += rng.pick(&[0, 0, 1, 3, 10, 40]);
            let owner = owners.get(rng.below(owner_count as u64) as usize).unwrap();
            let lease_end = now + 1 + rng.below(lease) as i64;
            let context = format!("seed {seed} step {step}");
            match rng.below(12) {
                0..=4 => {
                    assert_eq!(
                        sorted(lock.prune(now)),
                        sorted(naive.prune(now)),
                        "{context}"
                    );
                    let mode = rng.pick(modes);
                    let amount = 1 + rng.below(max_amount) as u32;
                    let got = lock.acquire(owner, mode, amount, now, lease_end, &clock);
                    assert_eq!(
                        got,
                        naive.acquire(owner, mode, amount, now, lease_end, &naive_clock),
                        "{context}"
                    );
                    let outcome = format!("{got:?}");
                    let outcome = outcome.split('(').take(2).collect::<Vec<_>>().join("(");
                    *outcomes.entry(outcome).or_insert(0) += 1;
                }
                5 | 6 => assert_eq!(
                    lock.release(owner, now),
                    naive.release(owner, now),
                    "{context}"
                ),
                7 => {
                    let mut changed = vec![];
                    let extended = lock.extend(owner, now, lease_end, |s| changed.push(s));
                    let expected = naive.extend(owner, now, lease_end);
                    assert_eq!(extended, !expected.is_empty(), "{context}");
                    assert_eq!(sorted_states(changed), sorted_states(expected), "{context}");
                }
                8 => {
                    let token = match naive.holds.get(rng.below(4) as usize) {
                        Some(hold) => hold.token,
                        None => 7,
                    };
                    assert_eq!(
                        lock.remove(owner, token),
                        naive.remove(owner, token),
                        "{context}"
                    );
                }
                9 => {
                    let token = clock.issue(now).unwrap();
                    assert_eq!(naive_clock.issue(now), Some(token));
                    // A master never has two semaphore limits on a key, so neither do we.
                    let mode = match (rng.pick(modes), naive.semaphore_limit()) {
                        (Mode::Semaphore { .. }, Some(limit)) => Mode::Semaphore { limit },
                        (mode, _) => mode,
                    };
                    let state = HoldState {
                        token,
                        count: rng.below(3) as u32,
                        lease_end: now - 20 + rng.below(lease) as i64,
                        mode,
                    };
                    lock.apply(owner, state);
                    naive.apply(owner, state);
                }
                10 => assert_eq!(
                    sorted(lock.prune(now)),
                    sorted(naive.prune(now)),
                    "{context}"
                ),
                _ => {
                    let mode = rng.pick(modes);
                    assert_eq!(lock.admits(mode, 2), naive.admits(mode, 2), "{context}");
                }
            }
            same_answers(&lock, &naive, &owners, now, &mut rng);
            let later = now + rng.below(60) as i64;
            same_answers(&lock, &naive, &owners, later, &mut rng);
            most = most.max(lock.len());
        }
        (outcomes, most)
    }

    #[test]
    fn the_indexed_lock_answers_as_the_naive_one_does() {
        use Mode::{Exclusive, Semaphore, Shared};
        let mut outcomes = std::collections::BTreeMap::new();
        let mut tally = |(seen, most): (std::collections::BTreeMap<String, usize>, usize)| {
            for (outcome, times) in seen {
                *outcomes.entry(outcome).or_insert(0) += times;
            }
            most
        };
        for seed in 1..=20 {
            tally(run_model(
                seed,
                3_000,
                6,
                &[Exclusive, Shared, Shared],
                1,
                120,
            ));
            let five = Semaphore { limit: 5 };
            tally(run_model(
                seed,
                3_000,
                6,
                &[five, five, five, Semaphore { limit: 6 }],
                3,
                120,
            ));
            tally(run_model(
                seed,
                1_000,
                5,
                &[Exclusive, Shared, Semaphore { limit: 4 }],
                5,
                120,
            ));
        }
        // Around `FEW` holds: moving into the indexes and out again.
        for seed in 1..=4 {
            let modes = [Exclusive, Shared, Shared, Shared, Shared];
            let most = tally(run_model(seed, 2_000, 20, &modes, 1, 600));
            assert!(most > 12, "{most}");
        }
        // Many holders: deep trees, a growing and shrinking owner table.
        let most = tally(run_model(1_007, 2_000, 300, &[Shared], 1, 10_000));
        assert!(most > 100, "{most}");
        let most = tally(run_model(
            1_008,
            2_000,
            300,
            &[Semaphore { limit: 400 }],
            3,
            10_000,
        ));
        assert!(most > 100, "{most}");
        for outcome in [
            "Ok(Granted",
            "Ok(Reentered",
            "Ok(Busy)",
            "Err(UpgradeDeadlock)",
            "Err(NotALock)",
            "Err(NotASemaphore)",
            "Err(LimitMismatch)",
            "Err(PermitsAboveLimit)",
        ] {
            assert!(outcomes.get(outcome).is_some_and(|&n| n > 10), "{outcome}");
        }
    }

    #[test]
    fn consistency_requires_an_owner_a_token_and_a_count_within_the_limit() {
        let hold = |owner: &[u8], token, count, mode| {
            let state = HoldState {
                token,
                count,
                lease_end: NOW,
                mode,
            };
            Hold::new(owner.into(), state)
        };
        let four = Mode::Semaphore { limit: 4 };
        for (holds, consistent) in [
            (vec![hold(b"a", 1, 4, four)], true),
            (vec![hold(b"a", 1, 5, four)], false),
            (vec![hold(b"a", 1, 0, Mode::Exclusive)], false),
            (vec![hold(b"a", 0, 1, Mode::Shared)], false),
            (vec![hold(b"a", -3, 1, Mode::Shared)], false),
            (vec![hold(b"", 1, 1, Mode::Shared)], false),
            (vec![hold(b"a", 1, 1, Mode::Shared)], true),
            (vec![], true),
        ] {
            let lock = Lock::from_holds(holds.clone());
            assert_eq!(lock.is_consistent(), consistent, "{holds:?}");
        }
    }

    #[test]
    fn check_apply_agrees_with_is_consistent() {
        let modes = [
            Mode::Exclusive,
            Mode::Shared,
            Mode::Semaphore { limit: 3 },
            Mode::Semaphore { limit: 5 },
        ];
        let owners: Vec<Vec<u8>> = (0..14).map(|i| vec![b'a' + i]).collect();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut outcomes = std::collections::HashMap::new();
        let mut largest = 0;
        for round in 0..400 {
            let mut lock = Lock::new();
            // Mostly one mode per round, so that locks grow past the scanned list.
            let usual = rng.pick(&modes);
            for step in 0..60 {
                let token = step + 1;
                let owner = owners.get(rng.below(owners.len() as u64) as usize).unwrap();
                let state = HoldState {
                    token,
                    count: rng.below(4) as u32,
                    lease_end: rng.below(50) as i64,
                    mode: if rng.below(10) < 8 {
                        usual
                    } else {
                        rng.pick(&modes)
                    },
                };
                let mut applied = lock.clone();
                applied.apply(owner, state);
                let checked = lock.check_apply(owner, state);
                assert_eq!(
                    checked.is_ok(),
                    applied.is_consistent(),
                    "round {round} step {step}: {state:?} by {owner:?} on {:?}",
                    lock.holds()
                );
                *outcomes
                    .entry(format!("{checked:?}").chars().take(9).collect::<String>())
                    .or_insert(0) += 1;
                if let Ok(current) = checked {
                    let replaced = lock
                        .holds()
                        .iter()
                        .find(|h| *h.owner == **owner && h.mode().same_class(state.mode));
                    assert_eq!(current, replaced.map(Hold::state));
                    lock = applied;
                }
                largest = largest.max(lock.len());
            }
        }
        assert!(largest > 10, "{largest}");
        for outcome in [
            "Ok(None)",
            "Ok(Some(H",
            "Err(Write",
            "Err(Modes",
            "Err(Permi",
        ] {
            assert!(
                outcomes.get(outcome).is_some_and(|&n| n > 20),
                "{outcome}: {outcomes:?}"
            );
        }
    }

    const HOLDERS: usize = 100_000;

    fn many_owner(i: usize) -> Vec<u8> {
        format!("{i:032x}").into_bytes()
    }

    fn crowded(mode: Mode, clock: &TokenClock) -> Lock {
        let mut lock = Lock::new();
        for i in 0..HOLDERS {
            lock.prune(NOW);
            let lease_end = NOW + 10_000 + (i % 977) as i64;
            let got = lock.acquire(&many_owner(i), mode, 1, NOW, lease_end, clock);
            assert!(matches!(got, Ok(Acquired::Granted(_))), "{got:?}");
        }
        lock
    }

    /// One round of what a busy key sees: a new holder comes, its token is checked, an old
    /// holder extends, the new one leaves, the holder is looked up.
    fn round(lock: &mut Lock, mode: Mode, i: usize, clock: &TokenClock) {
        let now = NOW + 1;
        let newcomer = many_owner(HOLDERS + i);
        lock.prune(now);
        let token = match lock.acquire(&newcomer, mode, 1, now, now + 20_000, clock) {
            Ok(Acquired::Granted(state)) => state.token,
            other => panic!("{other:?}"),
        };
        assert_eq!(lock.fence(token, now), Ok(()));
        assert!(lock.extend(&many_owner(i), now, now + 30_000, |_| {}));
        assert_eq!(lock.release(&newcomer, now).map(|s| s.count), Some(0));
        assert!(lock.holder(now).is_some());
        assert!(lock.next_lease_end(now).is_some());
    }

    #[test]
    fn commands_on_a_key_with_100k_holders_take_log_n() {
        use std::time::{Duration, Instant};
        const ROUNDS: usize = 10_000;
        for mode in [Mode::Shared, Mode::Semaphore { limit: MAX_LIMIT }] {
            let clock = TokenClock::new();
            let started = Instant::now();
            let mut lock = crowded(mode, &clock);
            let built = started.elapsed();
            let started = Instant::now();
            for i in 0..ROUNDS {
                round(&mut lock, mode, i, &clock);
            }
            let rounds = started.elapsed();
            lock.holds.check();
            // The same rounds on the naive list, for comparison (fewer: each scans them all).
            let mut naive = Naive {
                holds: lock.holds().to_vec(),
            };
            let started = Instant::now();
            for i in 0..100 {
                let newcomer = many_owner(2 * HOLDERS + i);
                let now = NOW + 1;
                naive.prune(now);
                let got = naive.acquire(&newcomer, mode, 1, now, now + 20_000, &clock);
                let Ok(Acquired::Granted(state)) = got else {
                    panic!("{got:?}")
                };
                assert_eq!(naive.fence(state.token, now), Ok(()));
                assert!(!naive.extend(&many_owner(i), now, now + 30_000).is_empty());
                assert_eq!(naive.release(&newcomer, now).map(|s| s.count), Some(0));
                assert!(naive.holder(now).is_some());
                assert!(naive.next_lease_end(now).is_some());
            }
            let naive_round = started.elapsed() / 100;
            eprintln!(
                "{mode:?}: {HOLDERS} grants in {built:?}; {ROUNDS} rounds in {rounds:?} \
                 ({:?} a round; naive: {naive_round:?} a round)",
                rounds / ROUNDS as u32
            );
            assert!(rounds < Duration::from_secs(1), "{rounds:?}");
            assert!(built < Duration::from_secs(5), "{built:?}");
        }
    }

    /// A key with `holders` short-owner shared holds, and the same holds as the plain list
    /// they were kept in before the indexes.
    fn filled(holders: usize) -> (Lock, Vec<Hold>) {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        for i in 0..holders {
            let state = HoldState {
                token: clock.issue(NOW).unwrap(),
                count: 1,
                lease_end: NOW + (i % 977) as i64,
                mode: Mode::Shared,
            };
            lock.apply(&many_owner(i), state);
        }
        let mut plain = Vec::new();
        for hold in lock.holds() {
            plain.push(hold.clone());
        }
        (lock, plain)
    }

    #[test]
    fn an_extra_holder_costs_at_most_250_bytes() {
        for holders in [1_000, HOLDERS] {
            let (lock, plain) = filled(holders);
            let per_holder = lock.heap_size() / holders;
            let before = plain.capacity() * size_of::<Hold>() / holders;
            eprintln!("{holders} holders: {per_holder} B a holder, {before} B as a plain list");
            assert!(per_holder <= 250, "{per_holder}");
        }
    }

    #[repr(C)]
    struct MallInfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }

    unsafe extern "C" {
        fn mallinfo2() -> MallInfo2;
    }

    /// Bytes the process has taken from malloc, headers included, over every arena.
    fn heap_in_use() -> isize {
        let info = unsafe { mallinfo2() };
        (info.uordblks + info.hblkhd) as isize
    }

    #[test]
    #[ignore = "reads the whole process's heap: run alone, with --test-threads=1"]
    fn memory_usage_matches_what_malloc_gives() {
        for holders in [1_000, 65_537, HOLDERS, 131_072] {
            let before = heap_in_use();
            let (lock, plain) = filled(holders);
            let both = heap_in_use() - before;
            drop(plain);
            let indexed = heap_in_use() - before;
            let plain = both - indexed;
            eprintln!(
                "{holders} holders: {} B a holder indexed (MEMORY USAGE says {}), \
                 {} B as a plain list",
                indexed / holders as isize,
                lock.heap_size() / holders,
                plain / holders as isize
            );
            let estimate = lock.heap_size() as f64 / indexed as f64;
            assert!((0.8..1.25).contains(&estimate), "{estimate}");
        }
    }
}
