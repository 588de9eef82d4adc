//! Memory per held lock against SET NX PX string locks of the same sizes.

use super::common::{Connection, cmd, used_memory};
use super::report::{Figure, Target};
use super::{Sizes, flushall, for_each_key, populate};

fn release_all(c: &mut Connection, dlock: bool, count: u64) {
    let drop = if dlock {
        "redis.call('DLOCK.RELEASE', k, ARGV[3])"
    } else {
        "if redis.call('get', k) == ARGV[3] then redis.call('del', k) end"
    };
    for_each_key(c, drop, "lk:", 8, count);
}

/// Bytes per held lock with 11-byte keys (`lk:00000000`) and 32-byte owners, and what is left
/// once every lock is released, for each side.
pub fn memory(c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let mut per_lock = [0.0; 2];
    let mut left = [0.0; 2];
    for (side, dlock) in [true, false].into_iter().enumerate() {
        flushall(c);
        let base = used_memory(c) as f64;
        populate(c, dlock, "lk:", 8, sizes.memory_locks);
        let held = used_memory(c) as f64;
        release_all(c, dlock, sizes.memory_locks);
        let dbsize: i64 = cmd("DBSIZE").query(c).expect("DBSIZE");
        assert_eq!(dbsize, 0, "every lock released");
        per_lock[side] = (held - base) / sizes.memory_locks as f64;
        left[side] = used_memory(c) as f64 - base;
    }
    figures.push(Figure {
        name: format!(
            "memory per held lock at {} locks (bytes)",
            sizes.memory_locks
        ),
        unit: "bytes",
        dlock: per_lock[0],
        baseline: Some(per_lock[1]),
        target: Some(Target::RatioAtMost(1.3)),
        others: vec![],
    });
    // The keyspace's hash table shrinks later, in serverCron, on both sides alike.
    figures.push(Figure {
        name: "memory left after releasing every lock (bytes)".into(),
        unit: "bytes",
        dlock: left[0],
        baseline: Some(left[1]),
        target: Some(Target::AtMost(left[1] + 64.0 * 1024.0)),
        others: vec![],
    });
}
