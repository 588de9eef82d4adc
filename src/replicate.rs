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
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicPtr, Ordering};

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

/// The mode word of shared holds, after the numbers (exclusive holds have none).
pub const SHARED_WORD: &[u8] = b"SHARED";

/// The mode word of semaphore holds, followed by the limit.
pub const SEMAPHORE_WORD: &[u8] = b"SEMAPHORE";

/// A string every replicated command may carry whatever its values: a count of 1 (almost
/// every hold's) or a mode word. Made once at load and passed by reference (`s`), Redis
/// shares it (a reference count) where a buffer (`b`) would cost an object per command.
struct SharedString {
    text: &'static [u8],
    string: AtomicPtr<raw::RedisModuleString>,
}

impl SharedString {
    const fn new(text: &'static [u8]) -> SharedString {
        SharedString {
            text,
            string: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

static ONE: SharedString = SharedString::new(b"1");
static SHARED: SharedString = SharedString::new(SHARED_WORD);
static SEMAPHORE: SharedString = SharedString::new(SEMAPHORE_WORD);

/// A new string with no context (so never freed automatically), or null.
fn create_string(text: &[u8]) -> *mut raw::RedisModuleString {
    match unsafe { raw::RedisModule_CreateString } {
        Some(create) => unsafe {
            create(ptr::null_mut(), text.as_ptr().cast::<c_char>(), text.len())
        },
        None => ptr::null_mut(),
    }
}

/// Let go of a string (null: nothing).
fn free_string(string: *mut raw::RedisModuleString) {
    if let (false, Some(free)) = (string.is_null(), unsafe { raw::RedisModule_FreeString }) {
        unsafe { free(ptr::null_mut(), string) };
    }
}

/// Make the shared strings (at load). They live as long as the server: nothing frees them.
pub fn init() -> Result<(), &'static str> {
    for shared in [&ONE, &SHARED, &SEMAPHORE] {
        let string = create_string(shared.text);
        if string.is_null() {
            return Err("cannot create the replication strings");
        }
        shared.string.store(string, Ordering::Relaxed);
    }
    Ok(())
}

/// The lease end last replicated, as a string kept for the next command. Grants made in the
/// same millisecond with the same ttl end their leases together, and each would otherwise
/// format the number and build an object for it; passed by reference, Redis only counts one
/// more user. Main thread only: every command, timer and event that replicates runs there,
/// holding the server's lock.
static LAST_LEASE_END: LastString = LastString {
    value: AtomicI64::new(0),
    string: AtomicPtr::new(ptr::null_mut()),
};

struct LastString {
    value: AtomicI64,
    string: AtomicPtr<raw::RedisModuleString>,
}

impl LastString {
    /// `value` as a string: the kept one when it is `value`'s, or a new one kept in its place
    /// (the old one is freed here, or by Redis once the commands that share it are sent).
    fn get(&self, value: i64) -> StringArg {
        let kept = self.string.load(Ordering::Relaxed);
        if !kept.is_null() && self.value.load(Ordering::Relaxed) == value {
            return StringArg::borrowed(kept);
        }
        let string = create_string(Decimal::new().format(value));
        if !string.is_null() {
            self.value.store(value, Ordering::Relaxed);
            free_string(self.string.swap(string, Ordering::Relaxed));
        }
        StringArg::borrowed(string)
    }
}

/// A string argument passed by reference: a shared one, or one made for this command alone
/// and freed with it.
struct StringArg {
    string: *mut raw::RedisModuleString,
    owned: bool,
}

impl StringArg {
    /// `shared`'s string (made for this command should the load not have made it).
    fn shared(shared: &SharedString) -> StringArg {
        let string = shared.string.load(Ordering::Relaxed);
        if string.is_null() {
            return StringArg::made(shared.text);
        }
        StringArg::borrowed(string)
    }

    /// A string someone else frees.
    fn borrowed(string: *mut raw::RedisModuleString) -> StringArg {
        StringArg {
            string,
            owned: false,
        }
    }

    fn made(text: &[u8]) -> StringArg {
        StringArg {
            string: create_string(text),
            owned: true,
        }
    }

    fn count(count: u32) -> StringArg {
        if count == 1 {
            StringArg::shared(&ONE)
        } else {
            StringArg::made(Decimal::new().format(i64::from(count)))
        }
    }

    /// The mode word after the numbers, if any (none: exclusive).
    fn mode(mode: Mode) -> StringArg {
        match mode {
            Mode::Exclusive => StringArg::borrowed(ptr::null_mut()),
            Mode::Shared => StringArg::shared(&SHARED),
            Mode::Semaphore { .. } => StringArg::shared(&SEMAPHORE),
        }
    }
}

impl Drop for StringArg {
    fn drop(&mut self) {
        if self.owned {
            free_string(self.string);
        }
    }
}

/// What masters send: the key and owner as the client's own argument strings (shared, not
/// copied) or the owner as bytes, the token as a buffer (one small object, where `l` would
/// build an sds and an object), the count, lease end and mode word shared.
fn replicated_format(owner: OwnerRef, mode: Mode) -> &'static CStr {
    match (owner, mode) {
        (OwnerRef::Arg(_), Mode::Exclusive) => c"ssbss",
        (OwnerRef::Arg(_), Mode::Shared) => c"ssbsss",
        (OwnerRef::Arg(_), Mode::Semaphore { .. }) => c"ssbsssb",
        (OwnerRef::Bytes(_), Mode::Exclusive) => c"sbbss",
        (OwnerRef::Bytes(_), Mode::Shared) => c"sbbsss",
        (OwnerRef::Bytes(_), Mode::Semaphore { .. }) => c"sbbsssb",
    }
}

/// An owner as the client sent it, or as bytes the server holds.
#[derive(Clone, Copy)]
pub enum OwnerRef<'a> {
    Arg(&'a Arg),
    Bytes(&'a [u8]),
}

/// Send `owner`'s new hold state on `key` to replicas and the AOF. The format passes only
/// the arguments the mode has; the rest of the call's arguments are never read.
pub fn replicate(ctx: &Context, key: &Arg, owner: OwnerRef, state: HoldState) {
    let Some(replicate) = (unsafe { raw::RedisModule_Replicate }) else {
        return;
    };
    let (ctx, command, key) = (ctx.get_raw(), COMMAND.as_ptr(), key.raw());
    let format = replicated_format(owner, state.mode).as_ptr();
    let (mut token, mut limit) = (Decimal::new(), Decimal::new());
    let token = token.format(state.token);
    let limit = match state.mode {
        Mode::Semaphore { limit: value } => limit.format(i64::from(value)),
        _ => &[],
    };
    let (count, lease_end, word) = (
        StringArg::count(state.count),
        LAST_LEASE_END.get(state.lease_end),
        StringArg::mode(state.mode),
    );
    if count.string.is_null() || lease_end.string.is_null() {
        return;
    }
    let [(token, token_len), (limit, limit_len)] =
        [token, limit].map(|n| (n.as_ptr().cast::<c_char>(), n.len()));
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
                count.string,
                lease_end.string,
                word.string,
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
                count.string,
                lease_end.string,
                word.string,
                limit,
                limit_len,
            ),
        }
    };
}

/// A stack buffer holding an i64 in decimal: a sign slot, then three groups of eight digits
/// (an i64 has at most 19).
struct Decimal([u8; 25]);

/// Ten to the eighth: one group of digits.
const GROUP: u64 = 100_000_000;

/// The digit bytes of a group are its digit values plus this, byte by byte.
const ASCII_ZEROS: u64 = 0x3030_3030_3030_3030;

impl Decimal {
    fn new() -> Self {
        Decimal([0; 25])
    }

    /// Three groups of eight digits made with a few multiplications each (no loop, no
    /// table), then the leading zeros skipped by counting zero bytes.
    #[inline(never)]
    fn format(&mut self, value: i64) -> &[u8] {
        let magnitude = value.unsigned_abs();
        let groups = [
            magnitude / GROUP / GROUP,
            magnitude / GROUP % GROUP,
            magnitude % GROUP,
        ]
        .map(digits);
        let mut start = match groups {
            [high, _, _] if high != 0 => leading_zeros(high),
            [_, middle, _] if middle != 0 => leading_zeros(middle).saturating_add(8),
            // Zero is one digit.
            [_, _, low] => leading_zeros(low).min(7).saturating_add(16),
        }
        .saturating_add(1);
        for (slot, group) in self
            .0
            .get_mut(1..)
            .unwrap_or(&mut [])
            .chunks_exact_mut(8)
            .zip(groups)
        {
            slot.copy_from_slice(&(group | ASCII_ZEROS).to_le_bytes());
        }
        if value < 0 {
            start = start.saturating_sub(1);
            if let Some(sign) = self.0.get_mut(start) {
                *sign = b'-';
            }
        }
        self.0.get(start..).unwrap_or(&[])
    }
}

/// The eight decimal digits of `n` (below 10^8) as the bytes of a u64, most significant
/// first in memory (little-endian), each byte a digit's value: the number splits into halves
/// of four digits, each half into pairs (dividing by 100 as `* 10486 >> 20`, exact below
/// 10^4) and each pair into digits (dividing by 10 as `* 103 >> 10`, exact below 100), all
/// lanes of one u64 at once; no lane carries into the next.
fn digits(n: u64) -> u64 {
    let halves = (n / 10_000) | ((n % 10_000) << 32);
    let hundreds = (halves.wrapping_mul(10_486) >> 20) & 0x7f_0000_007f;
    let pairs = hundreds | (halves.wrapping_sub(hundreds.wrapping_mul(100)) << 16);
    let tens = (pairs.wrapping_mul(103) >> 10) & 0x000f_000f_000f_000f;
    tens | (pairs.wrapping_sub(tens.wrapping_mul(10)) << 8)
}

/// How many of a group's digits (as `digits` lays them out, not all zero) are leading zeros.
fn leading_zeros(group: u64) -> usize {
    (group.trailing_zeros() / 8) as usize
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
            99,
            100,
            -99,
            -100,
            1_000_000,
            9_999_999_999,
            i64::MAX - 1,
            i64::MIN + 1,
        ] {
            assert_eq!(Decimal::new().format(value), value.to_string().as_bytes());
        }
        let mut power: i64 = 1;
        while let Some(next) = power.checked_mul(10) {
            for value in [power - 1, power, power + 1, -power, next / 2 + 7] {
                assert_eq!(Decimal::new().format(value), value.to_string().as_bytes());
            }
            power = next;
        }
        for value in 0..100_000 {
            assert_eq!(Decimal::new().format(value), value.to_string().as_bytes());
        }
        // Every length and every digit in every place: a xorshift sequence, each value cut to
        // a random number of bits, and negated every other time.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..1_000_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let value = (state >> (state % 64)) as i64;
            let value = if i % 2 == 0 {
                value
            } else {
                value.wrapping_neg()
            };
            assert_eq!(Decimal::new().format(value), value.to_string().as_bytes());
        }
    }
}
