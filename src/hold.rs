//! One holder's claim on a lock: its owner, mode, fencing token, count and lease end, in the
//! compact form `Lock` stores.

use crate::holds::Owner;

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
    pub(crate) fn class(self) -> u8 {
        match self {
            Mode::Exclusive => 0,
            Mode::Shared => 1,
            Mode::Semaphore { .. } => 2,
        }
    }

    /// Holds of the same owner and class are one hold: re-entry adds to it.
    pub(crate) fn same_class(self, other: Mode) -> bool {
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

    /// Take `state` (the owner stays).
    pub fn set_state(&mut self, state: HoldState) {
        self.token = state.token;
        self.count = state.count;
        self.lease_end = state.lease_end;
        self.kind = Kind::of(state.mode);
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
