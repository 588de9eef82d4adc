//! The lock's rules, in plain Rust with no Redis types.
//!
//! A lock is a list of holds, each with its own owner, fencing token, re-entry count and lease
//! end (absolute Unix milliseconds). The exclusive lock has at most one live hold; the list
//! leaves room for shared modes where several holders each keep their own lease.
//!
//! Every operation that changes a hold reports the hold's new state (`HoldState`), so the
//! Redis layer can replicate exactly that effect: nothing that depends on time or randomness is
//! decided again on a replica or during AOF replay.

use crate::holds::{Holds, Owner};
use crate::token::TokenClock;

/// One holder's claim on a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub owner: Owner,
    pub token: i64,
    /// Re-entries: the owner must release this many times before the hold ends.
    pub count: u32,
    /// The lease ends at this Unix millisecond; the hold is live strictly before it.
    pub lease_end: i64,
}

impl Hold {
    pub fn is_live(&self, now: i64) -> bool {
        self.lease_end > now
    }

    pub fn state(&self) -> HoldState {
        HoldState {
            token: self.token,
            count: self.count,
            lease_end: self.lease_end,
        }
    }
}

/// A hold's state after a change; `count == 0` means the hold is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldState {
    pub token: i64,
    pub count: u32,
    pub lease_end: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// A new hold with a new fencing token.
    Granted(HoldState),
    /// The owner already held the lock: one more hold, same token, lease reset.
    Reentered(HoldState),
    /// Another owner holds the lock; nothing changed.
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireError {
    /// The token clock has no token left (see `TokenClock::issue`).
    TokensExhausted,
    /// One more re-entry would overflow the hold count.
    TooManyHolds,
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

    /// The first live hold (the holder of an exclusive lock).
    pub fn holder(&self, now: i64) -> Option<&Hold> {
        self.holds().iter().find(|h| h.is_live(now))
    }

    /// When the key must expire: the latest lease end of any hold.
    pub fn expires_at(&self) -> Option<i64> {
        self.holds().iter().map(|h| h.lease_end).max()
    }

    /// Remove the holds whose lease has ended and return them, so the caller can replicate
    /// their removal. Call before `acquire`.
    pub fn prune(&mut self, now: i64) -> Vec<Hold> {
        if self.holds().iter().all(|h| h.is_live(now)) {
            return Vec::new();
        }
        self.holds.split_off(|h| h.is_live(now))
    }

    /// Take the lock for `owner` until `lease_end`, drawing a new token from `clock` when the
    /// lock is free. Ended holds must have been pruned first.
    pub fn acquire(
        &mut self,
        owner: &[u8],
        now: i64,
        lease_end: i64,
        clock: &TokenClock,
    ) -> Result<Acquired, AcquireError> {
        if let Some(hold) = self
            .holds
            .as_mut_slice()
            .iter_mut()
            .find(|h| h.is_live(now) && *h.owner == *owner)
        {
            hold.count = hold
                .count
                .checked_add(1)
                .ok_or(AcquireError::TooManyHolds)?;
            hold.lease_end = lease_end;
            return Ok(Acquired::Reentered(hold.state()));
        }
        if self.holder(now).is_some() {
            return Ok(Acquired::Busy);
        }
        let token = clock.issue(now).ok_or(AcquireError::TokensExhausted)?;
        let hold = Hold {
            owner: owner.into(),
            token,
            count: 1,
            lease_end,
        };
        let state = hold.state();
        self.holds.push(hold);
        Ok(Acquired::Granted(state))
    }

    /// Give back one hold of `owner`. `None` when the owner holds no live hold; otherwise the
    /// hold's new state, with `count == 0` when it ended (and was removed).
    pub fn release(&mut self, owner: &[u8], now: i64) -> Option<HoldState> {
        let index = self
            .holds()
            .iter()
            .position(|h| h.is_live(now) && *h.owner == *owner)?;
        let hold = self.holds.as_mut_slice().get_mut(index)?;
        hold.count = hold.count.saturating_sub(1);
        let state = hold.state();
        if state.count == 0 {
            self.holds.swap_remove(index);
        }
        Some(state)
    }

    /// Move the lease end of `owner`'s live hold to `lease_end`.
    pub fn extend(&mut self, owner: &[u8], now: i64, lease_end: i64) -> Option<HoldState> {
        let hold = self
            .holds
            .as_mut_slice()
            .iter_mut()
            .find(|h| h.is_live(now) && *h.owner == *owner)?;
        hold.lease_end = lease_end;
        Some(hold.state())
    }

    /// Set `owner`'s hold to a state decided elsewhere (a master or the AOF); `count == 0`
    /// removes it.
    pub fn apply(&mut self, owner: &[u8], state: HoldState) {
        let index = self.holds().iter().position(|h| *h.owner == *owner);
        match (index, state.count) {
            (Some(i), 0) => {
                self.holds.swap_remove(i);
            }
            (None, 0) => {}
            (Some(i), _) => {
                if let Some(hold) = self.holds.as_mut_slice().get_mut(i) {
                    hold.token = state.token;
                    hold.count = state.count;
                    hold.lease_end = state.lease_end;
                }
            }
            (None, _) => self.holds.push(Hold {
                owner: owner.into(),
                token: state.token,
                count: state.count,
                lease_end: state.lease_end,
            }),
        }
    }

    /// Whether a live hold carries `token`: the check before a fenced write.
    pub fn fence(&self, token: i64, now: i64) -> Result<(), FenceError> {
        let mut newest = None;
        for hold in self.holds().iter().filter(|h| h.is_live(now)) {
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
        match lock.acquire(owner, NOW, NOW + 1_000, clock) {
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
        let second = match lock.acquire(b"b", later, later + 1_000, &clock) {
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
                lease_end: NOW + 1_000
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
            lock.acquire(b"b", NOW + 1, NOW + 5_000, &clock),
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
            lock.acquire(b"a", NOW + 10, NOW + 300, &clock),
            Ok(Acquired::Reentered(HoldState {
                token: first.token,
                count: 2,
                lease_end: NOW + 300
            }))
        );
        assert_eq!(lock.expires_at(), Some(NOW + 300));
    }

    #[test]
    fn release_counts_down_then_frees() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let first = granted(&mut lock, b"a", &clock);
        assert!(lock.acquire(b"a", NOW, NOW + 1_000, &clock).is_ok());
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
        assert_eq!(lock.extend(b"b", NOW, NOW + 9_000), None);
        assert_eq!(lock, before);
    }

    #[test]
    fn extend_moves_the_lease_end() {
        let clock = TokenClock::new();
        let mut lock = Lock::new();
        let first = granted(&mut lock, b"a", &clock);
        assert_eq!(
            lock.extend(b"a", NOW + 500, NOW + 9_000),
            Some(HoldState {
                lease_end: NOW + 9_000,
                ..first
            })
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
        assert_eq!(lock.extend(b"a", after, after + 10), None);
        let pruned = lock.prune(after);
        assert_eq!(pruned.len(), 1);
        assert!(lock.is_empty());
        match lock.acquire(b"b", after, after + 1_000, &clock) {
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
        let mut lock = Lock::from_holds(vec![Hold {
            owner: b"a"[..].into(),
            token: 7,
            count: u32::MAX,
            lease_end: NOW + 1_000,
        }]);
        let before = lock.clone();
        assert_eq!(
            lock.acquire(b"a", NOW, NOW + 2_000, &clock),
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
            lock.acquire(b"a", NOW, NOW + 1, &clock),
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
