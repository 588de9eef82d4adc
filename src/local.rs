//! State kept on Redis's main thread, where every command, timer and event callback runs.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::thread::LocalKey;

/// Run `f` on the state in `cell`. Callers never hold the state across a call into Redis that
/// could re-enter the module, so the borrow cannot fail; should it ever (or should the
/// thread's storage be gone), `f` is skipped and the caller gets `T::default()` rather than a
/// panic that would take the server down.
pub fn with<S, T: Default>(cell: &'static LocalKey<RefCell<S>>, f: impl FnOnce(&mut S) -> T) -> T {
    cell.try_with(|c| c.try_borrow_mut().ok().map(|mut s| f(&mut s)))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// A hash table never gives back room on its own: after a spike (50,000 session bindings, as
/// many waiters) the module would keep that size for good. `fit` gives it back as the table
/// empties, down to room for twice what it holds, so a table is rebuilt at most once per
/// halving (amortized O(1) per removal); small tables are left alone.
pub trait Fit {
    fn fit(&mut self);
}

const SMALL: usize = 64;

/// Hash tables size themselves in powers of two, which gives the hysteresis: asking for room
/// for twice the entries rebuilds only once they fill under about a quarter of the buckets,
/// and costs nothing otherwise. (`capacity()` cannot tell: it counts the slots of removed
/// entries as taken until a rebuild.)
fn hash_room(len: usize) -> usize {
    len.saturating_mul(2).max(SMALL)
}

impl<K: Eq + Hash, V, S: BuildHasher> Fit for HashMap<K, V, S> {
    fn fit(&mut self) {
        self.shrink_to(hash_room(self.len()));
    }
}

impl<T: Eq + Hash, S: BuildHasher> Fit for HashSet<T, S> {
    fn fit(&mut self) {
        self.shrink_to(hash_room(self.len()));
    }
}

/// A queue's capacity is exact, so the hysteresis is explicit: it shrinks only once it holds
/// under a quarter of its room.
impl<T> Fit for VecDeque<T> {
    fn fit(&mut self) {
        if self.capacity() > SMALL && self.len() < self.capacity() / 4 {
            self.shrink_to(self.len().saturating_mul(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_gives_back_its_room_as_it_empties() {
        let mut map: HashMap<u32, u32> = (0..50_000).map(|i| (i, i)).collect();
        let full = map.capacity();
        for i in 0..49_990 {
            map.remove(&i);
            map.fit();
        }
        assert!(map.capacity() <= 2 * SMALL, "{} of {full}", map.capacity());
        assert_eq!(map.len(), 10);
        assert_eq!(map.get(&49_995), Some(&49_995));
    }

    #[test]
    fn a_queue_shrinks_only_once_it_is_under_a_quarter_full() {
        let mut queue: VecDeque<u32> = (0..1_000).collect();
        let room = queue.capacity();
        queue.truncate(400);
        queue.fit();
        assert_eq!(queue.capacity(), room);
        queue.truncate(200);
        queue.fit();
        assert!(queue.capacity() >= 200 && queue.capacity() < room);
        let mut small: VecDeque<u32> = (0..60).collect();
        let room = small.capacity();
        small.truncate(1);
        small.fit();
        assert_eq!(small.capacity(), room);
    }
}
