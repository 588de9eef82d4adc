//! Compact storage for a lock's holds.
//!
//! Most locks have one holder with a short owner id, so a lock with one hold and an owner of
//! up to `INLINE_OWNER` bytes lives in a single 64-byte allocation: one `malloc` per grant
//! instead of three, and about two thirds of the memory.

use std::ops::Deref;
use std::slice;

use crate::lock::Hold;

/// Owners up to this many bytes are stored inline (a UUID with dashes is 36).
pub const INLINE_OWNER: usize = 38;

/// An owner id: inline when short, on the heap otherwise.
#[derive(Clone, Debug)]
pub enum Owner {
    Inline { len: u8, bytes: [u8; INLINE_OWNER] },
    Heap(Box<[u8]>),
}

impl From<&[u8]> for Owner {
    fn from(owner: &[u8]) -> Self {
        match u8::try_from(owner.len()) {
            Ok(len) if owner.len() <= INLINE_OWNER => {
                let mut bytes = [0u8; INLINE_OWNER];
                if let Some(prefix) = bytes.get_mut(..owner.len()) {
                    prefix.copy_from_slice(owner);
                }
                Owner::Inline { len, bytes }
            }
            _ => Owner::Heap(owner.into()),
        }
    }
}

impl Deref for Owner {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Owner::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
            Owner::Heap(bytes) => bytes,
        }
    }
}

impl PartialEq for Owner {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Owner {}

impl Owner {
    /// Bytes on the heap beyond the owner's inline slot.
    pub fn heap_size(&self) -> usize {
        match self {
            Owner::Inline { .. } => 0,
            Owner::Heap(bytes) => bytes.len(),
        }
    }
}

/// A list of holds with the common single hold stored inline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Holds {
    #[default]
    Empty,
    One(Hold),
    Many(Vec<Hold>),
}

impl Holds {
    pub fn as_slice(&self) -> &[Hold] {
        match self {
            Holds::Empty => &[],
            Holds::One(hold) => slice::from_ref(hold),
            Holds::Many(holds) => holds,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [Hold] {
        match self {
            Holds::Empty => &mut [],
            Holds::One(hold) => slice::from_mut(hold),
            Holds::Many(holds) => holds,
        }
    }

    pub fn push(&mut self, hold: Hold) {
        *self = match std::mem::take(self) {
            Holds::Empty => Holds::One(hold),
            Holds::One(first) => Holds::Many(vec![first, hold]),
            Holds::Many(mut holds) => {
                holds.push(hold);
                Holds::Many(holds)
            }
        };
    }

    /// Remove the hold at `index` (order is not kept).
    pub fn swap_remove(&mut self, index: usize) {
        match self {
            Holds::One(_) if index == 0 => *self = Holds::Empty,
            Holds::Many(holds) if index < holds.len() => {
                holds.swap_remove(index);
                if holds.is_empty() {
                    *self = Holds::Empty;
                }
            }
            _ => {}
        }
    }

    /// Split off the holds for which `keep` is false and return them.
    pub fn split_off(&mut self, keep: impl Fn(&Hold) -> bool) -> Vec<Hold> {
        let (kept, removed): (Vec<Hold>, Vec<Hold>) = match std::mem::take(self) {
            Holds::Empty => return Vec::new(),
            Holds::One(hold) if keep(&hold) => {
                *self = Holds::One(hold);
                return Vec::new();
            }
            Holds::One(hold) => return vec![hold],
            Holds::Many(holds) => holds.into_iter().partition(&keep),
        };
        for hold in kept {
            self.push(hold);
        }
        removed
    }

    /// Bytes on the heap beyond the inline slot, for `MEMORY USAGE`.
    pub fn heap_size(&self) -> usize {
        let list = match self {
            Holds::Many(holds) => holds.capacity().saturating_mul(size_of::<Hold>()),
            _ => 0,
        };
        self.as_slice()
            .iter()
            .fold(list, |sum, h| sum.saturating_add(h.owner.heap_size()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(owner: &[u8], token: i64) -> Hold {
        let state = crate::lock::HoldState {
            token,
            count: 1,
            lease_end: 100,
            mode: crate::lock::Mode::Exclusive,
        };
        Hold::new(owner.into(), state)
    }

    #[test]
    fn a_lock_with_one_short_owner_fits_in_64_bytes() {
        assert!(
            size_of::<crate::lock::Lock>() <= 64,
            "{}",
            size_of::<crate::lock::Lock>()
        );
    }

    #[test]
    fn owners_round_trip_inline_and_on_the_heap() {
        for len in [1, 32, INLINE_OWNER, INLINE_OWNER + 1, 256] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let owner = Owner::from(&bytes[..]);
            assert_eq!(&*owner, &bytes[..]);
            assert_eq!(owner.heap_size(), if len <= INLINE_OWNER { 0 } else { len });
        }
    }

    #[test]
    fn push_remove_and_split_keep_every_hold() {
        let mut holds = Holds::default();
        holds.push(hold(b"a", 1));
        assert!(matches!(holds, Holds::One(_)));
        holds.push(hold(b"b", 2));
        holds.push(hold(b"c", 3));
        assert_eq!(holds.as_slice().len(), 3);
        let removed = holds.split_off(|h| h.token != 2);
        assert_eq!(removed, vec![hold(b"b", 2)]);
        let tokens: Vec<i64> = holds.as_slice().iter().map(|h| h.token).collect();
        assert_eq!(tokens, [1, 3]);
        holds.swap_remove(0);
        holds.swap_remove(5);
        assert_eq!(holds.as_slice(), &[hold(b"c", 3)]);
        holds.swap_remove(0);
        assert_eq!(holds, Holds::Empty);
    }
}
