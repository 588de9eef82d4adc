//! Scaling: acquire/release throughput with 1k, 100k and 1M locks held elsewhere in the
//! keyspace, and the cost of a hand-over with 1, 100 and 10k waiters queued behind it.
//! Flat is the target: each figure is compared with the smallest case.

use std::collections::VecDeque;
use std::time::Instant;

use super::common::{Connection, Server, cmd, wait_until, waiters};
use super::report::{Figure, Target, median};
use super::throughput::redis_benchmark;
use super::{OWNER, Sizes, TTL_MS, flushall, populate};

/// Keys the measured commands touch, apart from the held locks.
const MEASURED_KEYS: u64 = 10_000;

pub fn scaling(server: &Server, c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let ttl = TTL_MS.to_string();
    let acquire = ["DLOCK.ACQUIRE", "s:__rand_int__", OWNER, &ttl];
    let release = ["DLOCK.RELEASE", "s:__rand_int__", OWNER];
    // Redis's own cost of a larger keyspace, beside ours: the same new keys by `SET NX PX`.
    let set = ["SET", "t:__rand_int__", OWNER, "NX", "PX", &ttl];
    // Each round measures every size in turn, so the machine's drift over the section lands
    // on all sizes alike: (requests/s, server CPU us/request) of ACQUIRE, RELEASE and SET.
    let mut runs: Vec<[Vec<(f64, f64)>; 3]> = sizes
        .held
        .iter()
        .map(|_| [vec![], vec![], vec![]])
        .collect();
    for _ in 0..sizes.rounds {
        for (&held, [acquires, releases, sets]) in sizes.held.iter().zip(&mut runs) {
            flushall(c);
            populate(c, true, "held:", 12, held);
            let requests = sizes.requests_pipelined;
            acquires.push(redis_benchmark(
                server,
                MEASURED_KEYS,
                32,
                requests,
                &acquire,
            ));
            releases.push(redis_benchmark(
                server,
                MEASURED_KEYS,
                32,
                requests,
                &release,
            ));
            sets.push(redis_benchmark(server, MEASURED_KEYS, 32, requests, &set));
        }
    }
    let medians = |runs: &[(f64, f64)]| {
        (
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
        )
    };
    let smallest = sizes.held.first().copied().unwrap_or(0);
    let mut first: Option<[(f64, f64); 3]> = None;
    for (&held, [acquires, releases, sets]) in sizes.held.iter().zip(&runs) {
        let [acquire, release, set] = [medians(acquires), medians(releases), medians(sets)];
        let base = *first.get_or_insert([acquire, release, set]);
        let set_ratio = set.0 / base[2].0;
        // ACQUIRE's target is issue 17's; RELEASE keeps the one it was given first.
        for ((name, target), ((rps, cpu), (base_rps, base_cpu))) in
            [("ACQUIRE", 0.9), ("RELEASE", 0.8)]
                .into_iter()
                .zip([acquire, release].into_iter().zip(base))
        {
            figures.push(Figure {
                name: format!("{name} ops/s with {held} locks held, vs {smallest} held"),
                unit: "ops/s",
                dlock: rps,
                baseline: Some(base_rps),
                target: Some(Target::RatioAtLeast(target)),
                others: vec![
                    ("server CPU us/op".into(), cpu),
                    (format!("with {smallest} held"), base_cpu),
                    (format!("SET NX PX vs with {smallest} held"), set_ratio),
                ],
            });
        }
    }

    let mut first_p50 = None;
    let smallest = sizes.queued.first().copied().unwrap_or(0);
    for &queued in sizes.queued {
        let rtts = handovers(server, c, queued, sizes.handovers);
        let p50 = median(rtts.clone());
        let base = *first_p50.get_or_insert(p50);
        let mut sorted = rtts;
        sorted.sort_by(f64::total_cmp);
        let p99 = sorted
            .get(sorted.len() * 99 / 100)
            .copied()
            .unwrap_or(f64::NAN);
        figures.push(Figure {
            name: format!(
                "RELEASE with hand-over, {queued} waiters queued, p50 (ms), vs {smallest} queued"
            ),
            unit: "ms",
            dlock: p50,
            baseline: Some(base),
            target: Some(Target::RatioAtMost(1.5)),
            others: vec![("p99".into(), p99)],
        });
    }
}

/// Round trips of `RELEASE` that each hand the lock to the next of `queued` waiters. Every
/// granted waiter queues again at the back with a new owner, so the queue stays as long.
fn handovers(server: &Server, c: &mut Connection, queued: usize, count: usize) -> Vec<f64> {
    const KEY: &str = "queue";
    flushall(c);
    let _: i64 = cmd("DLOCK.ACQUIRE")
        .arg(KEY)
        .arg("first")
        .arg(TTL_MS)
        .query(c)
        .expect("grant");
    let wait = |owner: &str| {
        cmd("DLOCK.ACQUIRE")
            .arg(KEY)
            .arg(owner)
            .arg(TTL_MS)
            .arg("WAIT")
            .arg(0)
            .get_packed_command()
    };
    let mut conns: Vec<Connection> = Vec::with_capacity(queued);
    let mut order = VecDeque::with_capacity(queued);
    for j in 0..queued {
        let mut w = server.client();
        let owner = format!("w{j}-0");
        w.send_packed_command(&wait(&owner)).expect("queue");
        conns.push(w);
        order.push_back((j, owner));
        if j % 1_000 == 999 {
            wait_until("waiters to queue", || waiters(c, KEY) as usize == j + 1);
        }
    }
    wait_until("every waiter to queue", || {
        waiters(c, KEY) as usize == queued
    });
    let mut holder = "first".to_string();
    let mut rtts = Vec::with_capacity(count);
    for i in 1..=count {
        let start = Instant::now();
        let released: i64 = cmd("DLOCK.RELEASE")
            .arg(KEY)
            .arg(&holder)
            .query(c)
            .expect("release");
        rtts.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(released, 1, "released the hand-over chain's holder");
        let Some((j, owner)) = order.pop_front() else {
            break;
        };
        holder = owner;
        let again = format!("w{j}-{i}");
        conns[j]
            .send_packed_command(&wait(&again))
            .expect("queue again");
        order.push_back((j, again));
    }
    drop(conns);
    wait_until("the waiters to leave", || waiters(c, KEY) == 0);
    rtts
}
