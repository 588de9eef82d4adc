//! The effect of a lock command, as replicas and the AOF receive it: `DLOCK.APPLY key owner
//! token count lease_end_ms [SHARED | SEMAPHORE limit]` (no mode word: exclusive).
//!
//! Masters replicate every change to a hold as this command, so replicas and AOF replay set
//! exactly the owner, mode, token, count and absolute lease end the master decided: nothing is
//! decided again from the replica's clock or randomness. `count == 0` removes the hold.
//! Rewritten AOFs recreate whole keys with the multi-hold form, `DLOCK.APPLY key HOLDS n
//! owner token count lease_end_ms mode_code ...` (`datatype::aof_rewrite`).

use std::ffi::CStr;
use std::os::raw::c_char;

use redis_module::{Context, raw};

use crate::arg::Arg;
use crate::lock::{HoldState, Mode};

pub const COMMAND: &CStr = c"DLOCK.APPLY";

/// The keyword of the multi-hold form.
pub const HOLDS_WORD: &[u8] = b"HOLDS";

/// Holds per multi-hold command in a rewritten AOF: as many items as Redis puts in one
/// command when it rewrites a list or a set (`AOF_REWRITE_ITEMS_PER_CMD`), so that no command
/// of a huge key needs a huge argument vector to write or to replay.
pub const HOLDS_PER_COMMAND: usize = 64;

/// The mode word after the numbers, if any.
pub fn mode_word(mode: Mode) -> &'static CStr {
    match mode {
        Mode::Exclusive => c"",
        Mode::Shared => c"SHARED",
        Mode::Semaphore { .. } => c"SEMAPHORE",
    }
}

/// A semaphore's limit, 0 for a lock.
pub fn limit(mode: Mode) -> u32 {
    match mode {
        Mode::Semaphore { limit } => limit,
        _ => 0,
    }
}

/// What masters send: the key and owner as the client's own argument strings (shared, not
/// copied) or the owner as bytes, then the numbers (and the mode) as buffers, which Redis
/// turns into one small object each where `l` would build an sds and an object.
fn replicated_format(owner: OwnerRef, mode: Mode) -> &'static CStr {
    match (owner, mode) {
        (OwnerRef::Arg(_), Mode::Exclusive) => c"ssbbb",
        (OwnerRef::Arg(_), Mode::Shared) => c"ssbbbb",
        (OwnerRef::Arg(_), Mode::Semaphore { .. }) => c"ssbbbbb",
        (OwnerRef::Bytes(_), Mode::Exclusive) => c"sbbbb",
        (OwnerRef::Bytes(_), Mode::Shared) => c"sbbbbb",
        (OwnerRef::Bytes(_), Mode::Semaphore { .. }) => c"sbbbbbb",
    }
}

/// An owner as the client sent it, or as bytes the server holds.
#[derive(Clone, Copy)]
pub enum OwnerRef<'a> {
    Arg(&'a Arg),
    Bytes(&'a [u8]),
}

/// Send `owner`'s new hold state on `key` to replicas and the AOF.
pub fn replicate(ctx: &Context, key: &Arg, owner: OwnerRef, state: HoldState) {
    let Some(replicate) = (unsafe { raw::RedisModule_Replicate }) else {
        return;
    };
    let (ctx, command, key) = (ctx.get_raw(), COMMAND.as_ptr(), key.raw());
    let format = replicated_format(owner, state.mode).as_ptr();
    let (mut token, mut count, mut lease_end) = (Decimal::new(), Decimal::new(), Decimal::new());
    let mut limit_digits = Decimal::new();
    let token = token.format(state.token);
    let count = count.format(i64::from(state.count));
    let lease_end = lease_end.format(state.lease_end);
    let limit_digits = limit_digits.format(i64::from(limit(state.mode)));
    let word = mode_word(state.mode).to_bytes();
    let buffers = [token, count, lease_end, word, limit_digits]
        .map(|n| (n.as_ptr().cast::<c_char>(), n.len()));
    let [
        (token, token_len),
        (count, count_len),
        (lease_end, lease_end_len),
        (word, word_len),
        (limit, limit_len),
    ] = buffers;
    unsafe {
        match owner {
            OwnerRef::Arg(owner) => replicate(
                ctx,
                command,
                format,
                key,
                owner.raw(),
                token,
                token_len,
                count,
                count_len,
                lease_end,
                lease_end_len,
                word,
                word_len,
                limit,
                limit_len,
            ),
            OwnerRef::Bytes(owner) => replicate(
                ctx,
                command,
                format,
                key,
                owner.as_ptr().cast::<c_char>(),
                owner.len(),
                token,
                token_len,
                count,
                count_len,
                lease_end,
                lease_end_len,
                word,
                word_len,
                limit,
                limit_len,
            ),
        }
    };
}

/// A stack buffer holding an i64 in decimal.
struct Decimal([u8; 20]);

impl Decimal {
    fn new() -> Self {
        Decimal([0; 20])
    }

    fn format(&mut self, value: i64) -> &[u8] {
        let negative = value < 0;
        let mut magnitude = value.unsigned_abs();
        let mut start = self.0.len();
        loop {
            start = start.saturating_sub(1);
            if let (Some(digit), Some(value)) = (
                self.0.get_mut(start),
                b"0123456789".get((magnitude % 10) as usize),
            ) {
                *digit = *value;
            }
            magnitude /= 10;
            if magnitude == 0 {
                break;
            }
        }
        if negative {
            start = start.saturating_sub(1);
            if let Some(sign) = self.0.get_mut(start) {
                *sign = b'-';
            }
        }
        self.0.get(start..).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::Decimal;

    #[test]
    fn decimals_match_the_standard_formatting() {
        for value in [
            0,
            1,
            -1,
            9,
            10,
            4096,
            -4096,
            i64::MAX,
            i64::MIN,
            245_554_323_034_112,
        ] {
            assert_eq!(Decimal::new().format(value), value.to_string().as_bytes());
        }
    }
}
