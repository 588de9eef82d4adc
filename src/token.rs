//! The fencing-token clock: a hybrid logical clock.
//!
//! `token = max(last + 1, (wall_ms - EPOCH_MS) * TICKS_PER_MS)`.
//!
//! `last` is raised by every token this server issues or sees (RDB keys and aux data, AOF
//! replay, the replication stream, RESTORE). The wall-clock term makes tokens survive what
//! `last` cannot: a snapshot that lost recent grants, a replica that missed them, a restart
//! from the same old file twice. A server issues far fewer than `TICKS_PER_MS` grants per
//! millisecond, so `last` never runs ahead of the wall clock by more than a millisecond's
//! worth, and once a restart or failover has taken at least a millisecond, every new token is
//! above every token issued before it — including tokens whose writes were lost. The limit: a
//! wall clock stepped back by more than the outage lets the `last` term alone carry the order,
//! and that term only knows the tokens that were persisted or replicated.

use std::sync::atomic::{AtomicI64, Ordering};

/// 2025-01-01T00:00:00Z in Unix milliseconds. Tokens count from here so that they stay far
/// from `i64::MAX` (about 70,000 years of headroom at 4096 per millisecond).
pub const EPOCH_MS: i64 = 1_735_689_600_000;

/// Tokens available per wall-clock millisecond before the logical term takes over.
pub const TICKS_PER_MS: i64 = 4096;

/// Tokens are replied as RESP integers (signed 64-bit), so the clock stops at `i64::MAX`.
#[derive(Debug, Default)]
pub struct TokenClock {
    last: AtomicI64,
}

impl TokenClock {
    pub const fn new() -> Self {
        TokenClock {
            last: AtomicI64::new(0),
        }
    }

    /// The token for a new grant at wall time `wall_ms`, or `None` when the token space is
    /// exhausted (a `last` at `i64::MAX`, which only a forged token could cause).
    pub fn issue(&self, wall_ms: i64) -> Option<i64> {
        let next = self.last.load(Ordering::Relaxed).checked_add(1)?;
        let token = next.max(wall_ticks(wall_ms));
        self.last.fetch_max(token, Ordering::Relaxed);
        Some(token)
    }

    /// Raise the clock to a token issued elsewhere (RDB, AOF, master, RESTORE).
    pub fn observe(&self, token: i64) {
        self.last.fetch_max(token, Ordering::Relaxed);
    }

    /// The highest token issued or seen so far (0 before any).
    pub fn last(&self) -> i64 {
        self.last.load(Ordering::Relaxed)
    }
}

/// The physical term of the clock; 0 for a wall clock before the epoch.
fn wall_ticks(wall_ms: i64) -> i64 {
    wall_ms
        .saturating_sub(EPOCH_MS)
        .max(0)
        .saturating_mul(TICKS_PER_MS)
}

/// The clock shared by every lock of this server.
pub static CLOCK: TokenClock = TokenClock::new();

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = EPOCH_MS + 1_000;

    #[test]
    fn first_token_comes_from_the_wall_clock() {
        let clock = TokenClock::new();
        assert_eq!(clock.issue(NOW), Some(1_000 * TICKS_PER_MS));
    }

    #[test]
    fn tokens_strictly_increase_within_one_millisecond() {
        let clock = TokenClock::new();
        let a = clock.issue(NOW);
        let b = clock.issue(NOW);
        let c = clock.issue(NOW);
        assert_eq!(b, a.map(|t| t + 1));
        assert_eq!(c, a.map(|t| t + 2));
    }

    #[test]
    fn a_wall_clock_stepped_back_never_lowers_tokens() {
        let clock = TokenClock::new();
        let a = clock.issue(NOW).unwrap_or_default();
        let b = clock.issue(NOW - 500).unwrap_or_default();
        assert_eq!(b, a + 1);
    }

    #[test]
    fn observed_tokens_raise_the_clock() {
        let clock = TokenClock::new();
        clock.observe(NOW * TICKS_PER_MS);
        assert_eq!(clock.issue(NOW), Some(NOW * TICKS_PER_MS + 1));
        clock.observe(5);
        assert_eq!(clock.last(), NOW * TICKS_PER_MS + 1);
    }

    #[test]
    fn a_lost_token_is_exceeded_after_a_millisecond() {
        // The crashed server issued tokens that nobody persisted; the restarted one starts
        // from zero but a millisecond later.
        let crashed = TokenClock::new();
        let mut lost = 0;
        for _ in 0..4000 {
            lost = crashed.issue(NOW).unwrap_or_default();
        }
        let restarted = TokenClock::new();
        assert!(restarted.issue(NOW + 1).unwrap_or_default() > lost);
    }

    #[test]
    fn a_wall_clock_before_the_epoch_counts_from_last() {
        let clock = TokenClock::new();
        assert_eq!(clock.issue(0), Some(1));
        assert_eq!(clock.issue(i64::MIN), Some(2));
    }

    #[test]
    fn the_clock_stops_at_the_end_of_the_token_space() {
        let clock = TokenClock::new();
        clock.observe(i64::MAX);
        assert_eq!(clock.issue(NOW), None);
        assert_eq!(clock.issue(i64::MAX), None);
    }
}
