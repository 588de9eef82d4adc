//! Memory per held lock against SET NX PX string locks of the same sizes.

use super::common::{Connection, cmd};
use super::report::{Figure, Target};
use super::{OWNER, Sizes, flushall, populate};

pub fn used_memory(c: &mut Connection) -> f64 {
    let info: String = cmd("INFO").arg("memory").query(c).expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

fn release_all(c: &mut Connection, dlock: bool, count: u64) {
    let drop = if dlock {
        "redis.call('DLOCK.RELEASE', k, ARGV[3])"
    } else {
        "if redis.call('get', k) == ARGV[3] then redis.call('del', k) end"
    };
    let script = format!(
        "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do \
           local k = 'lk:' .. string.format('%08d', i) {drop} end"
    );
    let step = 100_000;
    let mut from = 0;
    while from < count {
        let to = (from + step).min(count) - 1;
        let _: () = cmd("EVAL")
            .arg(&script)
            .arg(0)
            .arg(from)
            .arg(to)
            .arg(OWNER)
            .query(c)
            .expect("release all");
        from = to + 1;
    }
}

/// Bytes per held lock with 11-byte keys (`lk:00000000`) and 32-byte owners, and what is left
/// once every lock is released, for each side.
pub fn memory(c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let mut per_lock = [0.0; 2];
    let mut left = [0.0; 2];
    for (side, dlock) in [true, false].into_iter().enumerate() {
        flushall(c);
        let base = used_memory(c);
        populate(c, dlock, "lk:", 8, sizes.memory_locks);
        let held = used_memory(c);
        release_all(c, dlock, sizes.memory_locks);
        let dbsize: i64 = cmd("DBSIZE").query(c).expect("DBSIZE");
        assert_eq!(dbsize, 0, "every lock released");
        per_lock[side] = (held - base) / sizes.memory_locks as f64;
        left[side] = used_memory(c) - base;
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
