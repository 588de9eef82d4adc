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

use crate::holds::{Holds, Owner};
use crate::token::TokenClock;

/// How a hold holds its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
    /// Permits of a counting semaphore of `limit` permits (the hold's count is its permits).
    Semaphore {
        limit: u32,
    },
}

/// The largest semaphore limit (the encoding of `Kind` reserves one value).
pub const MAX_LIMIT: u32 = u32::MAX - 1;

impl Mode {
    /// Exclusive, shared or semaphore, whatever the limit.
    fn class(self) -> u8 {
        match self {
            Mode::Exclusive => 0,
            Mode::Shared => 1,
            Mode::Semaphore { .. } => 2,
        }
    }

    /// Holds of the same owner and class are one hold: re-entry adds to it.
    fn same_class(self, other: Mode) -> bool {
        self.class() == other.class()
    }
}

/// A `Mode` in four bytes, so that a hold keeps its 64-byte slot: 0 is exclusive,
/// `u32::MAX` shared, and anything else the limit of a semaphore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Kind(u32);

impl Mode {
    /// The mode as RDB files store it (the `Kind` encoding).
    pub fn code(self) -> u32 {
        Kind::of(self).0
    }

    pub fn from_code(code: u32) -> Mode {
        Kind(code).mode()
    }
}

impl Kind {
    fn of(mode: Mode) -> Kind {
        match mode {
            Mode::Exclusive => Kind(0),
            Mode::Shared => Kind(u32::MAX),
            Mode::Semaphore { limit } => Kind(limit.clamp(1, MAX_LIMIT)),
        }
    }

    fn mode(self) -> Mode {
        match self.0 {
            0 => Mode::Exclusive,
            u32::MAX => Mode::Shared,
            limit => Mode::Semaphore { limit },
        }
    }
}

/// One holder's claim on a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub owner: Owner,
    pub token: i64,
    /// Re-entries (the owner must release this many times before the hold ends), or a
    /// semaphore hold's permits.
    pub count: u32,
    /// The lease ends at this Unix millisecond; the hold is live strictly before it.
    pub lease_end: i64,
    kind: Kind,
}

impl Hold {
    pub fn new(owner: Owner, state: HoldState) -> Hold {
        Hold {
            owner,
            token: state.token,
            count: state.count,
            lease_end: state.lease_end,
            kind: Kind::of(state.mode),
        }
    }

    pub fn is_live(&self, now: i64) -> bool {
        self.lease_end > now
    }

    pub fn mode(&self) -> Mode {
        self.kind.mode()
    }

    pub fn state(&self) -> HoldState {
        HoldState {
            token: self.token,
            count: self.count,
            lease_end: self.lease_end,
            mode: self.mode(),
        }
    }
}

/// A hold's state after a change; `count == 0` means the hold is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldState {
    pub token: i64,
    pub count: u32,
    pub lease_end: i64,
    pub mode: Mode,
}

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
            lock.holds.push(hold);
        }
        lock
    }

    pub fn is_empty(&self) -> bool {
        self.holds.as_slice().is_empty()
    }

    pub fn holds(&self) -> &[Hold] {
        self.holds.as_slice()
    }

    /// The live holds, in no particular order.
    pub fn live(&self, now: i64) -> impl Iterator<Item = &Hold> {
        self.holds().iter().filter(move |h| h.is_live(now))
    }

    /// The hold that stands for the lock: the exclusive holder, or else the live hold with
    /// the oldest token.
    pub fn holder(&self, now: i64) -> Option<&Hold> {
        self.live(now)
            .find(|h| h.mode() == Mode::Exclusive)
            .or_else(|| self.live(now).min_by_key(|h| h.token))
    }

    /// The semaphore's limit when this key is a semaphore.
    pub fn semaphore_limit(&self) -> Option<u32> {
        self.holds().iter().find_map(|h| match h.mode() {
            Mode::Semaphore { limit } => Some(limit),
            _ => None,
        })
    }

    /// When the key must expire: the latest lease end of any hold.
    pub fn expires_at(&self) -> Option<i64> {
        self.holds().iter().map(|h| h.lease_end).max()
    }

    /// When the next live hold ends: the earliest moment a waiter may get in.
    pub fn next_lease_end(&self, now: i64) -> Option<i64> {
        self.live(now).map(|h| h.lease_end).min()
    }

    /// Whether `owner` may act ahead of clients already waiting: a lock's holder (re-entry,
    /// downgrade, upgrade), never a semaphore's, whose queue is strictly first come, first
    /// served.
    pub fn may_pass_queue(&self, owner: &[u8], mode: Mode, now: i64) -> bool {
        !matches!(mode, Mode::Semaphore { .. }) && self.live(now).any(|h| *h.owner == *owner)
    }

    /// Remove the holds whose lease has ended and return them, so the caller can replicate
    /// their removal. Call before `acquire`.
    pub fn prune(&mut self, now: i64) -> Vec<Hold> {
        if self.holds().iter().all(|h| h.is_live(now)) {
            return Vec::new();
        }
        self.holds.split_off(|h| h.is_live(now))
    }

    fn position(&self, owner: &[u8], mode: Mode, now: i64) -> Option<usize> {
        self.holds()
            .iter()
            .position(|h| h.is_live(now) && *h.owner == *owner && h.mode().same_class(mode))
    }

    /// Whether a request in `mode` for `amount` can ever be granted on this key: a semaphore
    /// takes semaphore requests of its own limit, a lock takes lock modes.
    pub fn admits(&self, mode: Mode, amount: u32) -> Result<(), AcquireError> {
        match (mode, self.semaphore_limit()) {
            (Mode::Semaphore { .. }, None) if !self.is_empty() => Err(AcquireError::NotASemaphore),
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
        let busy = match mode {
            Mode::Semaphore { limit } => {
                let used: u64 = self.live(now).map(|h| u64::from(h.count)).sum();
                used.saturating_add(u64::from(amount)) > u64::from(limit)
            }
            Mode::Shared => self
                .live(now)
                .any(|h| h.mode() == Mode::Exclusive && *h.owner != *owner),
            Mode::Exclusive => {
                let own_hold = self.position(owner, mode, now).is_some();
                let others = self.live(now).any(|h| *h.owner != *owner);
                if others && !own_hold {
                    let shares = self.live(now).any(|h| *h.owner == *owner);
                    if shares {
                        return Err(AcquireError::UpgradeDeadlock);
                    }
                }
                others && !own_hold
            }
        };
        if let Some(index) = self.position(owner, mode, now) {
            if matches!(mode, Mode::Semaphore { .. }) && busy {
                return Ok(Acquired::Busy);
            }
            let hold = self
                .holds
                .as_mut_slice()
                .get_mut(index)
                .ok_or(AcquireError::TooManyHolds)?;
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

    /// Give back one hold of `owner`: an exclusive hold before a shared one (so exclusive,
    /// then shared, then release is a downgrade), and all of a semaphore holder's permits.
    /// `None` when the owner holds nothing live; otherwise the hold's new state, with
    /// `count == 0` when it ended (and was removed).
    pub fn release(&mut self, owner: &[u8], now: i64) -> Option<HoldState> {
        let index = [Mode::Exclusive, Mode::Shared, Mode::Semaphore { limit: 1 }]
            .into_iter()
            .find_map(|mode| self.position(owner, mode, now))?;
        let hold = self.holds.as_mut_slice().get_mut(index)?;
        hold.count = match hold.mode() {
            Mode::Semaphore { .. } => 0,
            _ => hold.count.saturating_sub(1),
        };
        let state = hold.state();
        if state.count == 0 {
            self.holds.swap_remove(index);
        }
        Some(state)
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
        let mut any = false;
        for hold in self.holds.as_mut_slice() {
            if hold.is_live(now) && *hold.owner == *owner {
                hold.lease_end = lease_end;
                changed(hold.state());
                any = true;
            }
        }
        any
    }

    /// End the hold of `owner` that carries `token`, whatever its count; its final state.
    pub fn remove(&mut self, owner: &[u8], token: i64) -> Option<HoldState> {
        let index = self
            .holds()
            .iter()
            .position(|h| *h.owner == *owner && h.token == token)?;
        let state = HoldState {
            count: 0,
            ..self.holds().get(index)?.state()
        };
        self.holds.swap_remove(index);
        Some(state)
    }

    /// Set `owner`'s hold of the state's mode to a state decided elsewhere (a master or the
    /// AOF); `count == 0` removes it.
    pub fn apply(&mut self, owner: &[u8], state: HoldState) {
        let index = self
            .holds()
            .iter()
            .position(|h| *h.owner == *owner && h.mode().same_class(state.mode));
        match (index, state.count) {
            (Some(i), 0) => {
                self.holds.swap_remove(i);
            }
            (None, 0) => {}
            (Some(i), _) => {
                if let Some(hold) = self.holds.as_mut_slice().get_mut(i) {
                    *hold = Hold::new(owner.into(), state);
                }
            }
            (None, _) => self.holds.push(Hold::new(owner.into(), state)),
        }
    }

    /// Whether a live hold carries `token`: the check before a fenced write.
    pub fn fence(&self, token: i64, now: i64) -> Result<(), FenceError> {
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

    /// Whether the holds obey the rules every operation keeps: all of a lock or all of one
    /// semaphore, whose permits fit its limit; at most one exclusive owner, with no other
    /// owner's hold beside it; one hold per owner and mode. Every command keeps them (holds
    /// are pruned before any grant); a forged `RESTORE` payload may not.
    pub fn is_consistent(&self) -> bool {
        let holds = self.holds();
        if holds.len() < 2 {
            return true;
        }
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
        unique && rules
    }

    /// Bytes this lock owns on the heap, for `MEMORY USAGE`.
    pub fn heap_size(&self) -> usize {
        self.holds.heap_size()
    }
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
}
