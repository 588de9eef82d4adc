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
/// many waiters) the module would keep that size for good. `fit` gives it back once the table
/// holds under a quarter of its room, down to twice what it holds, so a table is rebuilt at
/// most once per halving (amortized O(1) per removal); small tables are left alone.
pub trait Fit {
    fn fit(&mut self);
}

const SMALL: usize = 64;

fn give_back(len: usize, room: usize, shrink_to: impl FnOnce(usize)) {
    if room > SMALL && len < room / 4 {
        shrink_to(len.saturating_mul(2));
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> Fit for HashMap<K, V, S> {
    fn fit(&mut self) {
        give_back(self.len(), self.capacity(), |to| self.shrink_to(to));
    }
}

impl<T: Eq + Hash, S: BuildHasher> Fit for HashSet<T, S> {
    fn fit(&mut self) {
        give_back(self.len(), self.capacity(), |to| self.shrink_to(to));
    }
}

impl<T> Fit for VecDeque<T> {
    fn fit(&mut self) {
        give_back(self.len(), self.capacity(), |to| self.shrink_to(to));
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
        assert!(map.capacity() <= SMALL, "{} of {full}", map.capacity());
        assert_eq!(map.len(), 10);
        assert_eq!(map.get(&49_995), Some(&49_995));
    }

    #[test]
    fn small_or_full_tables_are_left_alone() {
        let mut set: HashSet<u32> = (0..40).collect();
        let room = set.capacity();
        set.retain(|&i| i < 2);
        set.fit();
        assert_eq!(set.capacity(), room);
        let mut queue: VecDeque<u32> = (0..1_000).collect();
        let room = queue.capacity();
        queue.truncate(400);
        queue.fit();
        assert_eq!(queue.capacity(), room);
        queue.truncate(200);
        queue.fit();
        assert!(queue.capacity() >= 200 && queue.capacity() < room);
    }
}
