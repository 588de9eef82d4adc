//! What a hold that comes from outside — a master's replication stream, the AOF, an RDB file,
//! a `RESTORE` payload — must satisfy before it takes effect.

use crate::errors::{
    ERR_HOLD_INVALID, ERR_HOLD_LEASE_END, ERR_HOLD_MODES, ERR_HOLD_PERMITS, ERR_HOLD_TOKEN_LEAD,
    ERR_HOLD_WRITERS,
};
use crate::lock::{Broken, HoldState, Lock};
use crate::token::CLOCK;

/// Whether `owner`'s hold on `lock` may take `state`, as a master, the AOF, an RDB file or a
/// `RESTORE` payload says: its fields, a token this server could have seen, and the lock's
/// rules (`Lock::check_apply`, O(log n), so that replaying a key's holds stays linear). On
/// success, the owner's hold that `state` replaces, if any.
///
/// The token check (`CLOCK.plausible`, `dlock.max-token-lead`) applies to every source, the
/// replication stream included: one token near 2^63 − 1 would raise the clock to it and use up
/// the token space for good, on a replica as much as on a master, and a replica is promoted
/// with the clock it has. A master's tokens lead its own clock by less than a millisecond, so
/// a replica refuses one only when its clock is behind its master's by more than the lead
/// (default 1 hour): a broken clock, said in the log, and `dlock.max-token-lead 0` trusts all.
pub fn check_hold(
    lock: &Lock,
    owner: &[u8],
    state: HoldState,
    now: i64,
) -> Result<Option<HoldState>, &'static str> {
    check_fields(owner, state, now)?;
    lock.check_apply(owner, state)
        .map_err(|broken| match broken {
            Broken::Writers => ERR_HOLD_WRITERS,
            Broken::Modes => ERR_HOLD_MODES,
            Broken::Permits => ERR_HOLD_PERMITS,
        })
}

/// The part of `check_hold` that looks at the hold alone.
pub fn check_fields(owner: &[u8], state: HoldState, now: i64) -> Result<(), &'static str> {
    if owner.is_empty() || state.token <= 0 {
        return Err(ERR_HOLD_INVALID);
    }
    if state.lease_end < 0 {
        return Err(ERR_HOLD_LEASE_END);
    }
    if !CLOCK.plausible(state.token, now) {
        return Err(ERR_HOLD_TOKEN_LEAD);
    }
    Ok(())
}
