//! Storage for a lock's holds.
//!
//! Most locks have one holder with a short owner id, so a lock with one hold and an owner of
//! up to `INLINE_OWNER` bytes lives in a single 64-byte allocation: one `malloc` per grant
//! instead of three, and about two thirds of the memory.
//!
//! A shared lock or a semaphore may have a hundred thousand holders, and every command asks
//! its question again (who holds it, how many permits are used, is this token live), so past
//! `FEW` holds they move into an `Indexed` store that answers each question in O(log n)
//! instead of scanning them all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::ops::Deref;
use std::slice;

use crate::hold::{Hold, HoldState, Mode};

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

/// What the live holds add up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub holds: usize,
    /// The sum of the holds' counts: a semaphore's permits in use.
    pub permits: u64,
    pub oldest_token: Option<i64>,
    pub newest_token: Option<i64>,
}

/// Past this many holds a list moves into an `Indexed` store, and back when it has half as
/// many: below, a scan is as quick as the indexes and takes a fifth of the memory; the gap
/// keeps a key that hovers around the size from rebuilding its indexes at every command.
const FEW: usize = 8;

/// The holds of a lock: the common single hold stored inline, a few in a list that every
/// question scans, many in an `Indexed` store. Holds are addressed by their slot in
/// `as_slice`; removing one moves the last hold into its slot.
#[derive(Clone, Debug, Default)]
pub enum Holds {
    #[default]
    Empty,
    One(Hold),
    Few(Vec<Hold>),
    Many(Box<Indexed>),
}

impl PartialEq for Holds {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Holds {}

impl Holds {
    pub fn as_slice(&self) -> &[Hold] {
        match self {
            Holds::Empty => &[],
            Holds::One(hold) => slice::from_ref(hold),
            Holds::Few(holds) => holds,
            Holds::Many(index) => &index.holds,
        }
    }

    /// The holds when they are few enough to scan.
    fn scanned(&self) -> Option<&[Hold]> {
        match self {
            Holds::Many(_) => None,
            _ => Some(self.as_slice()),
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Add a hold; false (and nothing added) only when the key already has `u32::MAX - 1`
    /// holds, which no server has the memory for.
    pub fn push(&mut self, hold: Hold) -> bool {
        match self {
            Holds::Empty => *self = Holds::One(hold),
            Holds::One(_) => {
                if let Holds::One(first) = std::mem::take(self) {
                    *self = Holds::Few(vec![first, hold]);
                }
            }
            Holds::Few(holds) if holds.len() < FEW => holds.push(hold),
            Holds::Few(holds) => {
                let mut index = Box::new(Indexed::new());
                for hold in std::mem::take(holds).into_iter().chain([hold]) {
                    index.push(hold);
                }
                *self = Holds::Many(index);
            }
            Holds::Many(index) => return index.push(hold),
        }
        true
    }

    /// Remove the hold at `slot`; the last hold takes its slot.
    pub fn remove(&mut self, slot: usize) -> Option<Hold> {
        let removed = match self {
            Holds::Empty => None,
            Holds::One(_) if slot == 0 => match std::mem::take(self) {
                Holds::One(hold) => Some(hold),
                _ => None,
            },
            Holds::One(_) => None,
            Holds::Few(holds) => (slot < holds.len()).then(|| holds.swap_remove(slot)),
            Holds::Many(index) => index.remove(slot),
        };
        match self {
            Holds::Few(holds) if holds.len() < 2 => {
                *self = holds.pop().map_or(Holds::Empty, Holds::One);
            }
            Holds::Many(index) if index.holds.len() <= FEW / 2 => {
                let mut holds = std::mem::take(&mut index.holds);
                holds.shrink_to(FEW);
                *self = Holds::Few(holds);
            }
            _ => {}
        }
        removed
    }

    /// Give the hold at `slot` a new state (its owner stays); its new state.
    pub fn set_state(&mut self, slot: usize, state: HoldState) -> Option<HoldState> {
        let hold = match self {
            Holds::Empty => None,
            Holds::One(hold) => (slot == 0).then_some(hold),
            Holds::Few(holds) => holds.get_mut(slot),
            Holds::Many(index) => return index.set_state(slot, state),
        }?;
        hold.set_state(state);
        Some(hold.state())
    }

    /// The slots of `owner`'s holds, live or not, in any mode.
    pub fn owned<'a>(&'a self, owner: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
        let few = self.scanned().map(|holds| {
            (0..holds.len())
                .filter(move |&slot| holds.get(slot).is_some_and(|h| *h.owner == *owner))
        });
        let many = match self {
            Holds::Many(index) => Some(index.owned(owner)),
            _ => None,
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// The slot of a live hold that carries `token`.
    pub fn carrying(&self, token: i64, now: i64) -> Option<usize> {
        match self {
            Holds::Many(index) => index.carrying(token, now),
            _ => self
                .as_slice()
                .iter()
                .position(|h| h.token == token && h.is_live(now)),
        }
    }

    /// What the live holds add up to.
    pub fn live(&self, now: i64) -> Live {
        match self {
            Holds::Many(index) => index.tree.live(now),
            _ => self.as_slice().iter().filter(|h| h.is_live(now)).fold(
                Live::default(),
                |live, h| Live {
                    holds: live.holds.saturating_add(1),
                    permits: live.permits.saturating_add(u64::from(h.count)),
                    oldest_token: Some(live.oldest_token.map_or(h.token, |t| t.min(h.token))),
                    newest_token: live.newest_token.max(Some(h.token)),
                },
            ),
        }
    }

    /// Up to `limit` live holds with a token above `after`, by token: `DLOCK.INFO`'s listing
    /// and its pages. Many holds are read from the token index, so the cost is that of the
    /// holds returned, not of all of them (plus any ended holds the timer has not removed yet
    /// among them, as none are kept past their lease end for long).
    pub fn live_by_token(&self, after: i64, limit: usize, now: i64) -> Vec<&Hold> {
        match self {
            Holds::Many(index) => index.live_by_token(after, limit, now),
            _ => {
                let mut live: Vec<&Hold> = self
                    .as_slice()
                    .iter()
                    .filter(|h| h.token > after && h.is_live(now))
                    .collect();
                live.sort_unstable_by_key(|h| h.token);
                live.truncate(limit);
                live
            }
        }
    }

    /// The slots of the live exclusive holds.
    pub fn live_exclusive(&self, now: i64) -> impl Iterator<Item = usize> + '_ {
        let few = self.scanned().map(|holds| {
            (0..holds.len()).filter(move |&slot| {
                holds
                    .get(slot)
                    .is_some_and(|h| h.mode() == Mode::Exclusive && h.is_live(now))
            })
        });
        let many = match self {
            Holds::Many(index) => Some(
                index
                    .exclusive
                    .iter()
                    .rev()
                    .take_while(move |(lease_end, _)| *lease_end > now)
                    .filter_map(move |&(_, id)| index.tree.slot(id)),
            ),
            _ => None,
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// The earliest lease end after `now`.
    pub fn next_lease_end(&self, now: i64) -> Option<i64> {
        match self {
            Holds::Many(index) => index.tree.next_lease_end(now),
            _ => self
                .as_slice()
                .iter()
                .filter(|h| h.is_live(now))
                .map(|h| h.lease_end)
                .min(),
        }
    }

    /// The earliest lease end of any hold.
    pub fn first_lease_end(&self) -> Option<i64> {
        match self {
            Holds::Many(index) => index.tree.first().map(|(lease_end, _)| lease_end),
            _ => self.as_slice().iter().map(|h| h.lease_end).min(),
        }
    }

    /// The latest lease end of any hold.
    pub fn last_lease_end(&self) -> Option<i64> {
        match self {
            Holds::Many(index) => index.tree.last().map(|(lease_end, _)| lease_end),
            _ => self.as_slice().iter().map(|h| h.lease_end).max(),
        }
    }

    /// The limit of a semaphore hold (should holds disagree, the first one's, or the
    /// smallest when there are many).
    pub fn semaphore_limit(&self) -> Option<u32> {
        match self {
            Holds::Many(index) => index.limits.keys().next().copied(),
            _ => self.as_slice().iter().find_map(|h| match h.mode() {
                Mode::Semaphore { limit } => Some(limit),
                _ => None,
            }),
        }
    }

    /// Remove the holds whose lease ended at `now` and return them.
    pub fn prune(&mut self, now: i64) -> Vec<Hold> {
        let mut ended = Vec::new();
        loop {
            let first = match self {
                Holds::Many(index) => index
                    .tree
                    .first()
                    .filter(|&(lease_end, _)| lease_end <= now)
                    .and_then(|(_, id)| index.tree.slot(id)),
                _ => self.as_slice().iter().position(|h| !h.is_live(now)),
            };
            match first.and_then(|slot| self.remove(slot)) {
                Some(hold) => ended.push(hold),
                None => return ended,
            }
        }
    }

    /// Bytes on the heap beyond the inline slot, for `MEMORY USAGE`.
    pub fn heap_size(&self) -> usize {
        let list = match self {
            Holds::Empty | Holds::One(_) => 0,
            Holds::Few(holds) => holds.capacity().saturating_mul(size_of::<Hold>()),
            Holds::Many(index) => index.heap_size(),
        };
        self.as_slice()
            .iter()
            .fold(list, |sum, h| sum.saturating_add(h.owner.heap_size()))
    }
}

/// No node: the end of a branch, an empty tree or table bucket.
const NIL: u32 = u32::MAX;

/// Many holds, with the indexes that answer every command's question in O(log n):
///
/// - `holds`, dense, so that callers still get a slice; removal swaps the last hold in;
/// - `tree`, a treap of the holds by lease end, each subtree knowing its hold count, permits
///   and token range: the ended holds are its leftmost ones, so the sums over the live ones
///   are one walk down the tree;
/// - `owners`, a hash table of the holds by owner;
/// - `tokens`, the holds by token, for the fence;
/// - `exclusive`, the exclusive holds by lease end (usually none or one);
/// - `limits`, how many semaphore holds have each limit (usually none or one).
///
/// Trees, sets and table refer to a hold by its node id, which stays put while the hold
/// moves between slots.
#[derive(Clone)]
pub struct Indexed {
    holds: Vec<Hold>,
    /// The node of the hold in each slot.
    node_of: Vec<u32>,
    tree: Tree,
    /// Open addressing with linear probing, at most half full, so that a probe meets an
    /// empty bucket soon.
    owners: Vec<Bucket>,
    hasher: RandomState,
    tokens: BTreeSet<(i64, u32)>,
    exclusive: BTreeSet<(i64, u32)>,
    limits: BTreeMap<u32, u32>,
}

impl fmt::Debug for Indexed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.holds).finish()
    }
}

impl Indexed {
    fn new() -> Indexed {
        let hasher = RandomState::new();
        // The treap's balance rests on priorities a client cannot predict.
        let seed = hasher.hash_one(0u8) | 1;
        Indexed {
            holds: Vec::new(),
            node_of: Vec::new(),
            tree: Tree::new(seed),
            owners: Vec::new(),
            hasher,
            tokens: BTreeSet::new(),
            exclusive: BTreeSet::new(),
            limits: BTreeMap::new(),
        }
    }

    fn push(&mut self, hold: Hold) -> bool {
        let Ok(slot) = u32::try_from(self.holds.len()) else {
            return false;
        };
        let Some(id) = self.tree.alloc(&hold, slot) else {
            return false;
        };
        self.holds.push(hold);
        self.node_of.push(id);
        self.attach(id);
        self.insert_owner(id);
        true
    }

    fn remove(&mut self, slot: usize) -> Option<Hold> {
        let id = *self.node_of.get(slot)?;
        self.detach(id);
        self.remove_owner(id);
        let hold = self.holds.swap_remove(slot);
        self.node_of.swap_remove(slot);
        if let Some(&moved) = self.node_of.get(slot) {
            self.tree.set_slot(moved, slot);
        }
        self.tree.free(id);
        Some(hold)
    }

    fn set_state(&mut self, slot: usize, state: HoldState) -> Option<HoldState> {
        let id = *self.node_of.get(slot)?;
        let old = self.holds.get(slot)?.state();
        if old.token != state.token || old.mode != state.mode {
            self.detach(id);
            let hold = self.holds.get_mut(slot)?;
            hold.set_state(state);
            let state = hold.state();
            self.tree.reset(id, hold);
            self.attach(id);
            return Some(state);
        }
        // Same token and mode (EXTEND, re-entry): only the lease-ordered structures move; the
        // token index and the limits stay as they are, which halves the work at scale.
        self.tree.remove(id);
        let exclusive = old.mode == Mode::Exclusive;
        if exclusive {
            self.exclusive.remove(&(old.lease_end, id));
        }
        let hold = self.holds.get_mut(slot)?;
        hold.set_state(state);
        let state = hold.state();
        self.tree.reset(id, hold);
        self.tree.insert(id);
        if exclusive {
            self.exclusive.insert((state.lease_end, id));
        }
        Some(state)
    }

    /// Enter the hold of node `id` in the tree, tokens, exclusive holds and limits.
    fn attach(&mut self, id: u32) {
        let Some(hold) = self.tree.slot(id).and_then(|slot| self.holds.get(slot)) else {
            return;
        };
        self.tokens.insert((hold.token, id));
        match hold.mode() {
            Mode::Exclusive => {
                self.exclusive.insert((hold.lease_end, id));
            }
            Mode::Shared => {}
            Mode::Semaphore { limit } => {
                let holds = self.limits.entry(limit).or_insert(0);
                *holds = holds.saturating_add(1);
            }
        }
        self.tree.insert(id);
    }

    /// Undo `attach`, before the hold changes or leaves.
    fn detach(&mut self, id: u32) {
        let Some(hold) = self.tree.slot(id).and_then(|slot| self.holds.get(slot)) else {
            return;
        };
        self.tokens.remove(&(hold.token, id));
        match hold.mode() {
            Mode::Exclusive => {
                self.exclusive.remove(&(hold.lease_end, id));
            }
            Mode::Shared => {}
            Mode::Semaphore { limit } => {
                if let Some(holds) = self.limits.get_mut(&limit) {
                    *holds = holds.saturating_sub(1);
                    if *holds == 0 {
                        self.limits.remove(&limit);
                    }
                }
            }
        }
        self.tree.remove(id);
    }

    fn owner_hash(&self, id: u32) -> u64 {
        let owner = self.tree.slot(id).and_then(|slot| self.holds.get(slot));
        self.hasher.hash_one(owner.map_or(&[][..], |h| &*h.owner))
    }

    fn insert_owner(&mut self, id: u32) {
        if self.holds.len().saturating_mul(2) > self.owners.len() {
            let size = self.owners.len().saturating_mul(2).max(8);
            let old = std::mem::replace(&mut self.owners, vec![Bucket::EMPTY; size]);
            for bucket in old.into_iter().filter(|b| !b.is_empty()) {
                self.place_owner(bucket);
            }
        }
        let bucket = Bucket::new(self.owner_hash(id), id);
        self.place_owner(bucket);
    }

    fn place_owner(&mut self, entry: Bucket) {
        let mask = self.owners.len().wrapping_sub(1);
        let start = entry.home();
        for step in 0..self.owners.len() {
            if let Some(bucket) = self.owners.get_mut(start.wrapping_add(step) & mask)
                && bucket.is_empty()
            {
                *bucket = entry;
                return;
            }
        }
    }

    /// Take `id` out of the owner table, moving back the entries after it that would
    /// otherwise no longer be found from their home bucket.
    fn remove_owner(&mut self, id: u32) {
        let mask = self.owners.len().wrapping_sub(1);
        let start = self.owner_hash(id) as usize;
        let Some(mut hole) = (0..self.owners.len())
            .map(|step| start.wrapping_add(step) & mask)
            .take_while(|&i| self.owners.get(i).is_some_and(|b| !b.is_empty()))
            .find(|&i| self.owners.get(i).is_some_and(|b| b.id() == id))
        else {
            return;
        };
        if let Some(bucket) = self.owners.get_mut(hole) {
            *bucket = Bucket::EMPTY;
        }
        let mut next = hole;
        for _ in 0..self.owners.len() {
            next = next.wrapping_add(1) & mask;
            let entry = match self.owners.get(next) {
                Some(&entry) if !entry.is_empty() => entry,
                _ => return,
            };
            let home = entry.home() & mask;
            // The entry stays when its home lies cyclically in (hole, next].
            let stays = if hole <= next {
                hole < home && home <= next
            } else {
                hole < home || home <= next
            };
            if !stays {
                if let Some(bucket) = self.owners.get_mut(hole) {
                    *bucket = entry;
                }
                if let Some(bucket) = self.owners.get_mut(next) {
                    *bucket = Bucket::EMPTY;
                }
                hole = next;
            }
        }
    }

    fn owned<'a>(&'a self, owner: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
        let mask = self.owners.len().wrapping_sub(1);
        let hash = self.hasher.hash_one(owner);
        let start = hash as usize;
        (0..self.owners.len())
            .map(move |step| {
                let bucket = self.owners.get(start.wrapping_add(step) & mask);
                bucket.copied().unwrap_or(Bucket::EMPTY)
            })
            .take_while(|bucket| !bucket.is_empty())
            // Only an entry with the same hash is worth the two cache misses of a look at its
            // hold.
            .filter(move |bucket| bucket.matches(hash))
            .filter_map(move |bucket| self.tree.slot(bucket.id()))
            .filter(move |&slot| self.holds.get(slot).is_some_and(|h| *h.owner == *owner))
    }

    fn carrying(&self, token: i64, now: i64) -> Option<usize> {
        self.tokens
            .range((token, 0)..=(token, NIL))
            .filter_map(|&(_, id)| self.tree.slot(id))
            .find(|&slot| self.holds.get(slot).is_some_and(|h| h.is_live(now)))
    }

    fn live_by_token(&self, after: i64, limit: usize, now: i64) -> Vec<&Hold> {
        // Start at the oldest live token (one walk down the tree): holds that ended before
        // it are never visited.
        let Some(oldest) = self.tree.live(now).oldest_token else {
            return Vec::new();
        };
        let from = after.saturating_add(1).max(oldest);
        self.tokens
            .range((from, 0)..)
            .filter_map(|&(_, id)| self.tree.slot(id).and_then(|slot| self.holds.get(slot)))
            .filter(|h| h.is_live(now))
            .take(limit)
            .collect()
    }

    fn heap_size(&self) -> usize {
        // A B-tree node is about two-thirds full: count an entry twice its size.
        let entry = size_of::<(i64, u32)>().saturating_mul(2);
        let sets = self.tokens.len().saturating_add(self.exclusive.len());
        [
            size_of::<Indexed>(),
            self.holds.capacity().saturating_mul(size_of::<Hold>()),
            self.node_of.capacity().saturating_mul(size_of::<u32>()),
            self.tree.nodes.capacity().saturating_mul(size_of::<Node>()),
            self.owners.capacity().saturating_mul(size_of::<Bucket>()),
            sets.saturating_mul(entry),
            self.limits.len().saturating_mul(entry),
        ]
        .into_iter()
        .fold(0usize, usize::saturating_add)
    }
}

/// A bucket of the owner table: a node id and the low 32 bits of its owner's hash, which
/// give its home bucket without a look at the hold, and tell most other owners apart.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Bucket(u64);

impl Bucket {
    const EMPTY: Bucket = Bucket(u64::MAX);

    fn new(hash: u64, id: u32) -> Bucket {
        Bucket(((hash & 0xffff_ffff) << 32) | u64::from(id))
    }

    fn is_empty(self) -> bool {
        self.id() == NIL
    }

    fn id(self) -> u32 {
        (self.0 & 0xffff_ffff) as u32
    }

    fn home(self) -> usize {
        (self.0 >> 32) as usize
    }

    fn matches(self, hash: u64) -> bool {
        self.0 >> 32 == hash & 0xffff_ffff
    }
}

/// A hold in the treap, with what its subtree adds up to: 64 bytes, aligned to a cache line
/// so that a visit costs one.
#[derive(Clone, Debug)]
#[repr(align(64))]
struct Node {
    lease_end: i64,
    token: i64,
    count: u32,
    /// The hold's slot in `Indexed::holds`.
    slot: u32,
    priority: u32,
    left: u32,
    right: u32,
    holds: u32,
    permits: u64,
    min_token: i64,
    max_token: i64,
}

impl Node {
    /// What the subtree at this node adds up to.
    fn sum(&self) -> Sum {
        Sum {
            holds: self.holds,
            permits: self.permits,
            min_token: self.min_token,
            max_token: self.max_token,
        }
    }

    fn set(&mut self, left: u32, right: u32, sum: Sum) {
        self.left = left;
        self.right = right;
        self.holds = sum.holds;
        self.permits = sum.permits;
        self.min_token = sum.min_token;
        self.max_token = sum.max_token;
    }
}

/// A treap (a binary search tree kept balanced by random priorities) of nodes ordered by
/// (lease end, id); freed nodes form a list through `left`.
#[derive(Clone, Debug)]
struct Tree {
    nodes: Vec<Node>,
    root: u32,
    free: u32,
    /// xorshift64 state for the priorities.
    seed: u64,
}

/// What a subtree adds up to.
#[derive(Clone, Copy)]
struct Sum {
    holds: u32,
    permits: u64,
    min_token: i64,
    max_token: i64,
}

impl Sum {
    const NONE: Sum = Sum {
        holds: 0,
        permits: 0,
        min_token: i64::MAX,
        max_token: i64::MIN,
    };

    fn join(self, other: Sum) -> Sum {
        Sum {
            holds: self.holds.saturating_add(other.holds),
            permits: self.permits.saturating_add(other.permits),
            min_token: self.min_token.min(other.min_token),
            max_token: self.max_token.max(other.max_token),
        }
    }
}

impl Tree {
    fn new(seed: u64) -> Tree {
        Tree {
            nodes: Vec::new(),
            root: NIL,
            free: NIL,
            seed,
        }
    }

    fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    fn slot(&self, id: u32) -> Option<usize> {
        self.node(id).map(|n| n.slot as usize)
    }

    fn set_slot(&mut self, id: u32, slot: usize) {
        if let (Some(node), Ok(slot)) = (self.nodes.get_mut(id as usize), u32::try_from(slot)) {
            node.slot = slot;
        }
    }

    fn key(&self, id: u32) -> (i64, u32) {
        (self.node(id).map_or(i64::MAX, |n| n.lease_end), id)
    }

    fn priority(&self, id: u32) -> u32 {
        self.node(id).map_or(0, |n| n.priority)
    }

    fn children(&self, id: u32) -> (u32, u32) {
        self.node(id).map_or((NIL, NIL), |n| (n.left, n.right))
    }

    fn own(node: &Node) -> Sum {
        Sum {
            holds: 1,
            permits: u64::from(node.count),
            min_token: node.token,
            max_token: node.token,
        }
    }

    fn sum(&self, id: u32) -> Sum {
        self.node(id).map_or(Sum::NONE, Node::sum)
    }

    /// Set the children of `id` and what its subtree adds up to.
    fn link(&mut self, id: u32, left: u32, right: u32) {
        let (l, r) = (self.sum(left), self.sum(right));
        if let Some(node) = self.nodes.get_mut(id as usize) {
            let sum = l.join(Tree::own(node)).join(r);
            node.set(left, right, sum);
        }
    }

    /// A detached node for `hold` in `slot`; `None` when ids run out.
    fn alloc(&mut self, hold: &Hold, slot: u32) -> Option<u32> {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let node = Node {
            lease_end: hold.lease_end,
            token: hold.token,
            count: hold.count,
            slot,
            priority: (self.seed >> 32) as u32,
            left: NIL,
            right: NIL,
            holds: 1,
            permits: u64::from(hold.count),
            min_token: hold.token,
            max_token: hold.token,
        };
        if let Some(free) = self.nodes.get_mut(self.free as usize) {
            let id = self.free;
            self.free = free.left;
            *free = node;
            return Some(id);
        }
        let id = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&id| id != NIL)?;
        self.nodes.push(node);
        Some(id)
    }

    fn free(&mut self, id: u32) {
        if let Some(node) = self.nodes.get_mut(id as usize) {
            node.left = self.free;
            self.free = id;
        }
    }

    /// Copy a detached node's fields from its hold's new state.
    fn reset(&mut self, id: u32, hold: &Hold) {
        if let Some(node) = self.nodes.get_mut(id as usize) {
            node.lease_end = hold.lease_end;
            node.token = hold.token;
            node.count = hold.count;
        }
        self.link(id, NIL, NIL);
    }

    fn insert(&mut self, id: u32) {
        self.root = self.insert_into(self.root, id);
    }

    fn insert_into(&mut self, at: u32, id: u32) -> u32 {
        if self.node(at).is_none() {
            return id;
        }
        if self.priority(id) > self.priority(at) {
            let (left, right) = self.split(at, self.key(id));
            self.link(id, left, right);
            return id;
        }
        let added = self.node(id).map_or(Sum::NONE, Tree::own);
        let (left, right) = self.children(at);
        if self.key(id) < self.key(at) {
            let left = self.insert_into(left, id);
            self.set_children(at, left, right, |sum| sum.join(added));
        } else {
            let right = self.insert_into(right, id);
            self.set_children(at, left, right, |sum| sum.join(added));
        }
        at
    }

    /// Set the children of `id` where its subtree changed by one node, its sums computed by
    /// `change` from the old ones: unlike `link`, this reads no sibling, which at scale is a
    /// cache miss on every level of the path.
    fn set_children(&mut self, id: u32, left: u32, right: u32, change: impl Fn(Sum) -> Sum) {
        if let Some(node) = self.nodes.get_mut(id as usize) {
            let sum = change(node.sum());
            node.set(left, right, sum);
        }
    }

    /// Split the subtree at `at` into the nodes before `key` and the rest.
    fn split(&mut self, at: u32, key: (i64, u32)) -> (u32, u32) {
        if self.node(at).is_none() {
            return (NIL, NIL);
        }
        let (left, right) = self.children(at);
        if self.key(at) < key {
            let (middle, rest) = self.split(right, key);
            self.link(at, left, middle);
            (at, rest)
        } else {
            let (before, middle) = self.split(left, key);
            self.link(at, middle, right);
            (before, at)
        }
    }

    /// Join two subtrees, every key of `a` before every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if self.node(a).is_none() {
            return b;
        }
        if self.node(b).is_none() {
            return a;
        }
        if self.priority(a) > self.priority(b) {
            let (left, right) = self.children(a);
            let right = self.merge(right, b);
            self.link(a, left, right);
            a
        } else {
            let (left, right) = self.children(b);
            let left = self.merge(a, left);
            self.link(b, left, right);
            b
        }
    }

    fn remove(&mut self, id: u32) {
        self.root = self.remove_from(self.root, id);
    }

    fn remove_from(&mut self, at: u32, id: u32) -> u32 {
        let Some(node) = self.node(at) else {
            return NIL;
        };
        let (left, right) = (node.left, node.right);
        if at == id {
            return self.merge(left, right);
        }
        let (left, right) = if self.key(id) < self.key(at) {
            (self.remove_from(left, id), right)
        } else {
            (left, self.remove_from(right, id))
        };
        let removed = self.node(id).map_or(Sum::NONE, Tree::own);
        let bound = self
            .node(at)
            .is_some_and(|n| n.min_token == removed.min_token || n.max_token == removed.max_token);
        if bound {
            // The removed hold may have been this subtree's oldest or newest token.
            self.link(at, left, right);
        } else {
            self.set_children(at, left, right, |sum| Sum {
                holds: sum.holds.saturating_sub(removed.holds),
                permits: sum.permits.saturating_sub(removed.permits),
                ..sum
            });
        }
        at
    }

    /// The live nodes are those after (now, any id): the right side of one path down.
    fn live(&self, now: i64) -> Live {
        let mut sum = Sum::NONE;
        let mut at = self.root;
        while let Some(node) = self.node(at) {
            if node.lease_end > now {
                sum = sum.join(Tree::own(node)).join(self.sum(node.right));
                at = node.left;
            } else {
                at = node.right;
            }
        }
        Live {
            holds: sum.holds as usize,
            permits: sum.permits,
            oldest_token: (sum.holds > 0).then_some(sum.min_token),
            newest_token: (sum.holds > 0).then_some(sum.max_token),
        }
    }

    fn next_lease_end(&self, now: i64) -> Option<i64> {
        let mut next = None;
        let mut at = self.root;
        while let Some(node) = self.node(at) {
            if node.lease_end > now {
                next = Some(node.lease_end);
                at = node.left;
            } else {
                at = node.right;
            }
        }
        next
    }

    /// The (lease end, id) of the earliest lease.
    fn first(&self) -> Option<(i64, u32)> {
        let mut at = self.root;
        let mut first = None;
        while let Some(node) = self.node(at) {
            first = Some((node.lease_end, at));
            at = node.left;
        }
        first
    }

    /// The (lease end, id) of the latest lease.
    fn last(&self) -> Option<(i64, u32)> {
        let mut at = self.root;
        let mut last = None;
        while let Some(node) = self.node(at) {
            last = Some((node.lease_end, at));
            at = node.right;
        }
        last
    }
}

#[cfg(test)]
impl Holds {
    /// Panic unless every index agrees with the holds.
    pub fn check(&self) {
        let holds = self.len();
        let Holds::Many(index) = self else {
            assert!(holds <= FEW);
            assert_eq!(matches!(self, Holds::Few(_)), holds >= 2);
            return;
        };
        let index = &**index;
        assert!(holds > FEW / 2);
        assert_eq!(index.holds.len(), index.node_of.len());
        let mut ids = Vec::new();
        index.walk(index.tree.root, &mut ids);
        assert_eq!(ids.len(), index.holds.len());
        for pair in ids.windows(2) {
            assert!(
                index.tree.key(pair.first().copied().unwrap())
                    < index.tree.key(pair.last().copied().unwrap())
            );
        }
        for (slot, (hold, &id)) in index.holds.iter().zip(&index.node_of).enumerate() {
            let node = index.tree.node(id).unwrap();
            assert_eq!(node.slot as usize, slot);
            assert_eq!(
                (node.lease_end, node.token, node.count),
                (hold.lease_end, hold.token, hold.count)
            );
            assert!(index.tokens.contains(&(hold.token, id)));
            assert_eq!(
                index.exclusive.contains(&(hold.lease_end, id)),
                hold.mode() == Mode::Exclusive
            );
            assert!(index.owned(&hold.owner).any(|s| s == slot));
        }
        assert_eq!(index.tokens.len(), index.holds.len());
        let semaphores: u32 = index.limits.values().sum();
        let expected = index
            .holds
            .iter()
            .filter(|h| matches!(h.mode(), Mode::Semaphore { .. }))
            .count();
        assert_eq!(semaphores as usize, expected);
        let buckets = index.owners.iter().filter(|b| !b.is_empty()).count();
        assert_eq!(buckets, index.holds.len());
        assert!(index.owners.len() >= 2 * index.holds.len());
    }
}

#[cfg(test)]
impl Indexed {
    /// In order, checking each node's priority and sums on the way.
    fn walk(&self, at: u32, out: &mut Vec<u32>) -> Sum {
        let Some(node) = self.tree.node(at) else {
            return Sum::NONE;
        };
        for child in [node.left, node.right] {
            assert!(
                self.tree
                    .node(child)
                    .is_none_or(|c| c.priority <= node.priority)
            );
        }
        let left = self.walk(node.left, out);
        out.push(at);
        let right = self.walk(node.right, out);
        let sum = left.join(Tree::own(node)).join(right);
        assert_eq!(
            (sum.holds, sum.permits, sum.min_token, sum.max_token),
            (node.holds, node.permits, node.min_token, node.max_token)
        );
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(owner: &[u8], token: i64) -> Hold {
        let state = crate::hold::HoldState {
            token,
            count: 1,
            lease_end: 100 + token,
            mode: crate::hold::Mode::Shared,
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
        assert_eq!(size_of::<Node>(), 64);
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
    fn push_remove_and_prune_keep_every_other_hold() {
        let mut holds = Holds::default();
        assert!(holds.push(hold(b"a", 1)));
        assert!(matches!(holds, Holds::One(_)));
        holds.push(hold(b"b", 2));
        holds.push(hold(b"c", 3));
        assert!(matches!(holds, Holds::Few(_)));
        assert_eq!(holds.len(), 3);
        let pruned = holds.prune(102);
        assert_eq!(pruned, vec![hold(b"a", 1), hold(b"b", 2)]);
        assert_eq!(holds.as_slice(), &[hold(b"c", 3)]);
        assert!(matches!(holds, Holds::One(_)));
        holds.push(hold(b"d", 4));
        assert_eq!(holds.remove(0), Some(hold(b"c", 3)));
        assert_eq!(holds.remove(5), None);
        assert_eq!(holds.as_slice(), &[hold(b"d", 4)]);
        assert_eq!(holds.remove(0), Some(hold(b"d", 4)));
        assert_eq!(holds, Holds::Empty);
    }

    #[test]
    fn random_changes_keep_every_index_and_sum_exact() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut holds = Holds::default();
        for step in 0..20_000 {
            let len = holds.len() as u64;
            match next(10) {
                0..=3 if len < 300 => {
                    // Tokens repeat now and then, as one owner's holds may share one.
                    let mut h = hold(format!("o{}", next(400)).as_bytes(), next(50) as i64);
                    h.lease_end = 100 + next(100) as i64;
                    h.count = 1 + next(3) as u32;
                    holds.push(h);
                }
                4..=5 if len > 0 => {
                    holds.remove(next(len) as usize);
                }
                6..=8 if len > 0 => {
                    let slot = next(len) as usize;
                    let mut state = holds.as_slice().get(slot).unwrap().state();
                    state.lease_end = 100 + next(100) as i64;
                    if next(2) == 0 {
                        state.token = next(50) as i64;
                        state.count = 1 + next(3) as u32;
                    }
                    holds.set_state(slot, state);
                }
                _ => {
                    holds.prune(100 + next(20) as i64);
                }
            }
            holds.check();
            let live = holds.live(150);
            let naive: Vec<&Hold> = holds.as_slice().iter().filter(|h| h.is_live(150)).collect();
            assert_eq!(live.holds, naive.len(), "step {step}");
            let permits: u64 = naive.iter().map(|h| u64::from(h.count)).sum();
            assert_eq!(live.permits, permits, "step {step}");
            assert_eq!(live.oldest_token, naive.iter().map(|h| h.token).min());
            assert_eq!(live.newest_token, naive.iter().map(|h| h.token).max());
        }
    }

    #[test]
    fn many_holds_are_indexed_and_few_are_not() {
        let mut holds = Holds::default();
        for token in 1..=FEW as i64 {
            holds.push(hold(b"a", token));
            holds.check();
        }
        assert!(matches!(holds, Holds::Few(_)));
        holds.push(hold(b"b", 100));
        holds.check();
        assert!(matches!(holds, Holds::Many(_)));
        let mut pruned = holds.prune(100 + FEW as i64 / 2);
        holds.check();
        assert!(matches!(holds, Holds::Many(_)));
        pruned.extend(holds.prune(101 + FEW as i64 / 2));
        holds.check();
        assert!(matches!(holds, Holds::Few(_)));
        pruned.sort_by_key(|h| h.token);
        let tokens: Vec<i64> = pruned.iter().map(|h| h.token).collect();
        assert_eq!(tokens, (1..=1 + FEW as i64 / 2).collect::<Vec<_>>());
        assert_eq!(holds.len(), FEW / 2);
        let b = holds.as_slice().iter().position(|h| h.token == 100);
        assert_eq!(holds.owned(b"b").collect::<Vec<_>>(), Vec::from_iter(b));
    }

    #[test]
    fn live_holds_are_listed_by_token_from_any_point() {
        for count in [1, 3, FEW, FEW + 1, 1_000] {
            let mut holds = Holds::default();
            // Tokens out of lease order, so the token index and the lease tree disagree.
            for i in 0..count as i64 {
                let token = (i * 7919) % 10_007 + 1;
                let mut h = hold(format!("o{i}").as_bytes(), token);
                h.lease_end = 100 + (i * 31) % 50;
                holds.push(h);
            }
            holds.check();
            for now in [0, 110, 125, 200] {
                let mut naive: Vec<&Hold> =
                    holds.as_slice().iter().filter(|h| h.is_live(now)).collect();
                naive.sort_by_key(|h| h.token);
                for after in [0, 1, 5_000, 10_007] {
                    for limit in [0, 1, 16, usize::MAX] {
                        let want: Vec<i64> = naive
                            .iter()
                            .filter(|h| h.token > after)
                            .take(limit)
                            .map(|h| h.token)
                            .collect();
                        let got: Vec<i64> = holds
                            .live_by_token(after, limit, now)
                            .iter()
                            .map(|h| h.token)
                            .collect();
                        assert_eq!(got, want, "{count} holds, now {now}, after {after}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_owner_table_finds_every_owner_through_growth_and_removal() {
        let mut holds = Holds::default();
        let owner = |i: i64| format!("owner-{}", i % 300).into_bytes();
        for i in 1..=1_000 {
            holds.push(hold(&owner(i), i));
        }
        holds.check();
        for i in (1..=1_000).step_by(3) {
            let slot = holds.carrying(i, 0).unwrap();
            assert_eq!(holds.remove(slot).map(|h| h.token), Some(i));
        }
        holds.check();
        for i in 1..=1_000 {
            let found = holds
                .owned(&owner(i))
                .any(|slot| holds.as_slice().get(slot).unwrap().token == i);
            assert_eq!(found, i % 3 != 1, "{i}");
        }
    }
}
