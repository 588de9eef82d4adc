//! The fencing-token clock: a hybrid logical clock whose tokens carry the issuing server's
//! node id in their low bits.
//!
//! A token is `ms << 13 | seq << 4 | node`: the wall-clock milliseconds since `EPOCH_MS`, a
//! sequence of 512 tokens within that millisecond, and the node id (0–15). A server issues
//! the smallest token that is above `last`, at or above the wall term
//! `(wall_ms - EPOCH_MS) * TICKS_PER_MS`, and ends in its own node id.
//!
//! The layout is a trade between node ids, tokens per millisecond and years, because tokens
//! must stay below 2⁵³ for as long as possible: resources compare them in Lua (Redis scripts,
//! like the README's) and JavaScript, whose numbers are doubles. Above 2⁵³ neighbouring tokens
//! round to the same double, and two servers' tokens that differ only in the node id would be
//! equal again. With 2¹³ ticks per millisecond tokens stay exact in doubles until 2059 (and in
//! i64 for 35,000 years); 512 per millisecond is above what one server grants; 16 node ids
//! cover a master and its replicas.
//!
//! `last` is raised by every token this server issues or sees (RDB keys and aux data, AOF
//! replay, the replication stream, RESTORE), whatever node issued it. The wall-clock term makes
//! tokens survive what `last` cannot: a snapshot that lost recent grants, a replica that missed
//! them, a restart from the same old file twice. A server issues fewer than 512 grants
//! per millisecond, so `last` never runs ahead of the wall clock by more than a millisecond's
//! worth, and once a restart or failover has taken at least a millisecond, every new token is
//! above every token issued before it — including tokens whose writes were lost. The limit: a wall clock stepped back by more than the outage lets the `last` term
//! alone carry the order, and that term only knows the tokens that were persisted or
//! replicated.
//!
//! The node id is what keeps two servers apart when both grant the same key in the same
//! millisecond (split brain: a promoted replica and an old master that still serves): the
//! clocks are otherwise deterministic and would return the same token to both writers, and a
//! resource that accepts `token >= highest` would let both in. Servers with distinct node ids
//! never issue equal tokens.
//!
//! Tokens of the first format (`ms * 4096 + seq`, no node id) are half as large for the same
//! millisecond, so after an upgrade every new token is above every old one, and an old-version
//! server in split brain with a new one never issues one of the new server's tokens.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

/// 2025-01-01T00:00:00Z in Unix milliseconds. Tokens count from here so that they stay below
/// 2⁵³ (exact in doubles) as long as possible: 2⁴⁰ ms, until 2059.
pub const EPOCH_MS: i64 = 1_735_689_600_000;

/// Low bits of every token that hold the issuing server's node id.
pub const NODE_BITS: u32 = 4;

/// How many node ids there are (0 to 15).
pub const NODE_IDS: i64 = 1 << NODE_BITS;

const NODE_MASK: i64 = NODE_IDS - 1;

const NODE_MASK_U8: u8 = (1 << NODE_BITS) - 1;

/// The token space of one wall-clock millisecond, shared by all node ids: twice the first
/// format's 4096, so that new tokens are above old ones.
pub const TICKS_PER_MS: i64 = 1 << 13;

/// Tokens are replied as RESP integers (signed 64-bit), so the clock stops at `i64::MAX`.
#[derive(Debug, Default)]
pub struct TokenClock {
    last: AtomicI64,
    node: AtomicU8,
    /// How far (ms) an observed token may lead the wall clock to count as genuine; 0: any.
    max_lead_ms: AtomicI64,
}

impl TokenClock {
    /// A clock of node 0 that trusts every observed token.
    pub const fn new() -> Self {
        TokenClock::with_node(0)
    }

    pub const fn with_node(node: u8) -> Self {
        TokenClock {
            last: AtomicI64::new(0),
            node: AtomicU8::new(node & NODE_MASK_U8),
            max_lead_ms: AtomicI64::new(0),
        }
    }

    /// The node id in the low bits of every token this clock issues from now on.
    pub fn node(&self) -> u8 {
        self.node.load(Ordering::Relaxed)
    }

    /// Only the low `NODE_BITS` bits of `node` count.
    pub fn set_node(&self, node: u8) {
        self.node.store(node & NODE_MASK_U8, Ordering::Relaxed);
    }

    /// Set how far (ms) an observed token may lead the wall clock for `plausible`; 0 or less
    /// turns the check off.
    pub fn set_max_lead(&self, ms: i64) {
        self.max_lead_ms.store(ms.max(0), Ordering::Relaxed);
    }

    /// The token for a new grant at wall time `wall_ms`, or `None` when the token space is
    /// exhausted (a `last` near `i64::MAX`, which only a forged token could cause).
    pub fn issue(&self, wall_ms: i64) -> Option<i64> {
        let node = self.node();
        let previous = self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                next_token(last, wall_ms, node)
            })
            .ok()?;
        next_token(previous, wall_ms, node)
    }

    /// Raise the clock to a token issued elsewhere (RDB, AOF, master, RESTORE).
    pub fn observe(&self, token: i64) {
        self.last.fetch_max(token, Ordering::Relaxed);
    }

    /// The highest token issued or seen so far (0 before any).
    pub fn last(&self) -> i64 {
        self.last.load(Ordering::Relaxed)
    }

    /// Whether an observed token could have been issued by a server whose clock is at most
    /// the configured lead ahead of `wall_ms`. A token far beyond that (a forged AOF line, a
    /// RESTORE payload) would drag `last` with it and could exhaust the token space for good,
    /// so loaders ask before they `observe`. Tokens below the wall term always pass.
    pub fn plausible(&self, token: i64, wall_ms: i64) -> bool {
        within_lead(token, wall_ms, self.max_lead_ms.load(Ordering::Relaxed))
    }

    /// Whether a lead of `ms` still counts this clock's own `last` as plausible. A smaller one
    /// (after tokens were taken with the check off, or the wall clock stepped back) would make
    /// this server refuse its own tokens when it next loads its RDB or AOF.
    pub fn allows_lead(&self, ms: i64, wall_ms: i64) -> bool {
        within_lead(self.last(), wall_ms, ms)
    }
}

/// Whether `token` leads `wall_ms` by at most `lead_ms` (any, for a lead of 0 or less).
fn within_lead(token: i64, wall_ms: i64, lead_ms: i64) -> bool {
    if lead_ms <= 0 {
        return true;
    }
    // Any token of the last allowed millisecond passes, whatever its sequence and node.
    let limit = wall_ticks(wall_ms.saturating_add(lead_ms)).saturating_add(LAST_TICK_OF_MS);
    token <= limit
}

/// The last tick of a millisecond, counted from its first.
const LAST_TICK_OF_MS: i64 = TICKS_PER_MS - 1;

/// The smallest token above `last`, at or above the wall term, whose low bits are `node`.
fn next_token(last: i64, wall_ms: i64, node: u8) -> Option<i64> {
    let floor = last.checked_add(1)?.max(wall_ticks(wall_ms));
    let candidate = (floor & !NODE_MASK) | (i64::from(node) & NODE_MASK);
    if candidate >= floor {
        Some(candidate)
    } else {
        candidate.checked_add(NODE_IDS)
    }
}

/// The physical term of the clock; 0 for a wall clock before the epoch.
fn wall_ticks(wall_ms: i64) -> i64 {
    wall_ms
        .saturating_sub(EPOCH_MS)
        .max(0)
        .saturating_mul(TICKS_PER_MS)
}

/// The clock shared by every lock of this server (its node id and lead come from the
/// `dlock.node-id` and `dlock.max-token-lead` configs).
pub static CLOCK: TokenClock = TokenClock::new();

/// The node id in the low bits of the tokens this server issues.
pub fn node_id() -> u8 {
    CLOCK.node()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = EPOCH_MS + 1_000;

    /// 2026-06-01T00:00:00Z: a realistic "now" for the upgrade tests.
    const JUNE_2026: i64 = 1_780_272_000_000;

    /// The first format's tokens: 4096 per millisecond, no node id.
    const OLD_TICKS_PER_MS: i64 = 4096;

    fn low_bits(token: i64) -> u8 {
        u8::try_from(token & NODE_MASK).unwrap()
    }

    #[test]
    fn the_layout_leaves_512_tokens_per_ms_exact_in_doubles_until_2059() {
        assert_eq!(TICKS_PER_MS / NODE_IDS, 512);
        assert_eq!(NODE_IDS, 16);
        let year: i64 = 365 * 24 * 3_600_000;
        let end_of_2058 = EPOCH_MS + 34 * year;
        let token = TokenClock::with_node(15).issue(end_of_2058).unwrap();
        assert!(token < 1 << 53, "{token}");
        assert_eq!(token as f64 as i64, token);
        assert_ne!((token - 1) as f64, token as f64);
        let in_2100 = EPOCH_MS + 75 * year;
        assert!(TokenClock::with_node(15).issue(in_2100).is_some());
        assert!(i64::MAX / TICKS_PER_MS / year > 30_000);
    }

    #[test]
    fn first_token_comes_from_the_wall_clock() {
        let clock = TokenClock::new();
        assert_eq!(clock.issue(NOW), Some(1_000 * TICKS_PER_MS));
        let clock = TokenClock::with_node(7);
        assert_eq!(clock.issue(NOW), Some(1_000 * TICKS_PER_MS + 7));
    }

    #[test]
    fn tokens_strictly_increase_within_one_millisecond() {
        let clock = TokenClock::with_node(3);
        let a = clock.issue(NOW);
        let b = clock.issue(NOW);
        let c = clock.issue(NOW);
        assert_eq!(b, a.map(|t| t + NODE_IDS));
        assert_eq!(c, a.map(|t| t + 2 * NODE_IDS));
        assert!([a, b, c].iter().all(|t| t.map(low_bits) == Some(3)));
    }

    #[test]
    fn two_nodes_never_issue_the_same_token() {
        let one = TokenClock::with_node(1);
        let two = TokenClock::with_node(2);
        let mut seen = std::collections::HashSet::new();
        // The same millisecond many times over (the logical term), then millisecond by
        // millisecond, then with the clocks apart.
        for i in 0..20_000 {
            let wall = NOW + i / 5_000;
            for (clock, node) in [(&one, 1), (&two, 2)] {
                let token = clock.issue(wall).unwrap();
                assert_eq!(low_bits(token), node);
                assert!(seen.insert(token), "token {token} issued twice");
            }
        }
        for i in 0..1_000 {
            let a = one.issue(NOW + 100 + i).unwrap();
            let b = two.issue(NOW + 100 + i).unwrap();
            assert_ne!(a, b);
            assert!(seen.insert(a) && seen.insert(b));
        }
    }

    #[test]
    fn a_promoted_replica_issues_above_its_old_master_with_its_own_id() {
        let master = TokenClock::with_node(1);
        let replica = TokenClock::with_node(2);
        let mut highest = 0;
        for _ in 0..1_000 {
            highest = master.issue(NOW).unwrap();
            replica.observe(highest);
        }
        let promoted = replica.issue(NOW).unwrap();
        assert!(promoted > highest);
        assert_eq!(low_bits(promoted), 2);
        assert_eq!(promoted, highest + 1);
        // The old master carries on in the same millisecond: still never equal.
        for _ in 0..1_000 {
            let old = master.issue(NOW).unwrap();
            let new = replica.issue(NOW).unwrap();
            assert_ne!(old, new);
            assert_eq!((low_bits(old), low_bits(new)), (1, 2));
        }
    }

    #[test]
    fn an_observed_token_of_a_higher_id_is_passed_in_the_same_slot_or_the_next() {
        let clock = TokenClock::with_node(12);
        clock.observe(1_000 * TICKS_PER_MS + 5);
        assert_eq!(clock.issue(NOW), Some(1_000 * TICKS_PER_MS + 12));
        let clock = TokenClock::with_node(3);
        clock.observe(1_000 * TICKS_PER_MS + 5);
        assert_eq!(clock.issue(NOW), Some(1_000 * TICKS_PER_MS + NODE_IDS + 3));
    }

    #[test]
    fn a_wall_clock_stepped_back_never_lowers_tokens() {
        let clock = TokenClock::with_node(9);
        let a = clock.issue(NOW).unwrap();
        let b = clock.issue(NOW - 500).unwrap();
        assert_eq!(b, a + NODE_IDS);
    }

    #[test]
    fn observed_tokens_raise_the_clock() {
        let clock = TokenClock::new();
        let seen = (NOW - EPOCH_MS + 3) * TICKS_PER_MS + 5;
        clock.observe(seen);
        assert_eq!(clock.issue(NOW), Some(seen - 5 + NODE_IDS));
        clock.observe(5);
        assert_eq!(clock.last(), seen - 5 + NODE_IDS);
    }

    #[test]
    fn a_lost_token_is_exceeded_after_a_millisecond() {
        // The crashed server issued tokens that nobody persisted; the restarted one (or a
        // replica promoted in its place) starts from zero but a millisecond later.
        let crashed = TokenClock::with_node(15);
        let mut lost = 0;
        for _ in 0..500 {
            lost = crashed.issue(NOW).unwrap();
        }
        assert!(lost < (NOW - EPOCH_MS + 1) * TICKS_PER_MS);
        let restarted = TokenClock::with_node(0);
        assert!(restarted.issue(NOW + 1).unwrap() > lost);
    }

    #[test]
    fn new_tokens_exceed_tokens_of_the_first_format() {
        // The old server granted a burst in this very millisecond, and its clock even ran an
        // hour ahead; the upgraded server has loaded the highest of them.
        let old_now = (JUNE_2026 - EPOCH_MS) * OLD_TICKS_PER_MS + 4_095;
        let old_ahead = (JUNE_2026 + 3_600_000 - EPOCH_MS) * OLD_TICKS_PER_MS + 4_095;
        let fresh = TokenClock::with_node(0);
        let first = fresh.issue(JUNE_2026).unwrap();
        assert!(first > old_now && first > old_ahead);
        let upgraded = TokenClock::with_node(0);
        upgraded.observe(old_ahead);
        assert_eq!(upgraded.issue(JUNE_2026), Some(first));
        // Even a wall clock stepped back by a day after the upgrade stays above.
        let stepped_back = TokenClock::new().issue(JUNE_2026 - 86_400_000).unwrap();
        assert!(stepped_back > old_ahead);
    }

    #[test]
    fn a_wall_clock_before_the_epoch_counts_from_last() {
        let clock = TokenClock::with_node(4);
        assert_eq!(clock.issue(0), Some(4));
        assert_eq!(clock.issue(i64::MIN), Some(4 + NODE_IDS));
        let clock = TokenClock::new();
        assert_eq!(clock.issue(0), Some(NODE_IDS));
    }

    #[test]
    fn the_clock_stops_at_the_end_of_the_token_space() {
        let clock = TokenClock::new();
        clock.observe(i64::MAX);
        assert_eq!(clock.issue(NOW), None);
        assert_eq!(clock.issue(i64::MAX), None);
        assert_eq!(clock.last(), i64::MAX);

        // i64::MAX ends in 0xf: node 15 gets it, every other node is already out.
        let top = TokenClock::with_node(15);
        top.observe(i64::MAX - 10);
        assert_eq!(top.issue(NOW), Some(i64::MAX));
        assert_eq!(top.issue(NOW), None);
        let other = TokenClock::with_node(0);
        other.observe(i64::MAX - 10);
        assert_eq!(other.issue(NOW), None);
        assert_eq!(other.last(), i64::MAX - 10);
        assert_eq!(TokenClock::new().issue(i64::MAX), None);
    }

    #[test]
    fn a_lead_is_allowed_only_while_the_clock_s_own_last_token_passes_it() {
        let clock = TokenClock::with_node(1);
        let wall = JUNE_2026;
        assert!(clock.allows_lead(1, wall), "no token yet");
        let two_hours_ahead = (wall + 2 * 3_600_000 - EPOCH_MS) * TICKS_PER_MS;
        clock.observe(two_hours_ahead);
        assert!(!clock.allows_lead(3_600_000, wall));
        assert!(clock.allows_lead(2 * 3_600_000, wall));
        assert!(clock.allows_lead(0, wall), "0 turns the check off");
        assert!(
            clock.allows_lead(3_600_000, wall + 3_600_000),
            "the wall clock caught up"
        );
    }

    #[test]
    fn plausible_tokens_lead_the_wall_clock_by_at_most_the_limit() {
        let clock = TokenClock::with_node(1);
        assert!(clock.plausible(i64::MAX, NOW), "no limit: all pass");
        clock.set_max_lead(3_600_000);
        let wall = JUNE_2026;
        let limit_ms = wall - EPOCH_MS + 3_600_000;
        assert!(clock.plausible(1, wall));
        assert!(clock.plausible(-5, wall));
        assert!(clock.plausible((wall - EPOCH_MS) * TICKS_PER_MS + 1, wall));
        assert!(clock.plausible(limit_ms * TICKS_PER_MS, wall));
        assert!(clock.plausible((limit_ms + 1) * TICKS_PER_MS - 1, wall));
        assert!(!clock.plausible((limit_ms + 1) * TICKS_PER_MS, wall));
        assert!(!clock.plausible(i64::MAX, wall));
        // Tokens of the first format are far below.
        let old = (wall + 86_400_000 - EPOCH_MS) * OLD_TICKS_PER_MS;
        assert!(clock.plausible(old, wall));
        // A token from a replica's master whose clock is a little ahead.
        let master = TokenClock::with_node(2);
        let token = master.issue(wall + 250).unwrap();
        assert!(clock.plausible(token, wall));
        // Broken wall clocks cannot overflow the check.
        assert!(clock.plausible(i64::MAX, i64::MAX));
        assert!(!clock.plausible(i64::MAX, i64::MIN));
        // A wall clock back in 1970 trusts no token of this century.
        assert!(!clock.plausible(TICKS_PER_MS, 0));
        assert!(clock.plausible(TICKS_PER_MS - 1, 0));
        clock.set_max_lead(0);
        assert!(clock.plausible(i64::MAX, wall));
        clock.set_max_lead(-1);
        assert!(clock.plausible(i64::MAX, wall));
    }

    #[test]
    fn only_the_low_bits_of_a_node_id_count() {
        let clock = TokenClock::with_node(0x2f);
        assert_eq!(clock.node(), 0xf);
        assert_eq!(clock.issue(NOW), Some(1_000 * TICKS_PER_MS + 0xf));
        clock.set_node(0xe3);
        assert_eq!(clock.node(), 3);
    }

    #[test]
    fn the_node_id_can_change_and_the_clock_keeps_rising() {
        let clock = TokenClock::with_node(1);
        let a = clock.issue(NOW).unwrap();
        clock.set_node(0);
        let b = clock.issue(NOW).unwrap();
        assert!(b > a);
        assert_eq!((low_bits(a), low_bits(b)), (1, 0));
        assert_eq!(clock.node(), 0);
    }
}
