//! Expiry hand-over: a holder that never releases (lease 100 ms) and one waiter. How long
//! after the lease ends does the waiter hold the lock? dlock's waiter blocks in the server;
//! the baseline polls `SET NX PX` every 50 ms. Run with no other keys and with many unrelated
//! keys carrying TTLs, where Redis's active expiry alone can take hundreds of milliseconds to
//! notice one expired key.

use std::thread;
use std::time::{Duration, Instant};

use super::charts::{BarPanel, Charts};
use super::common::{Connection, Server, Value, cmd};
use super::report::{Figure, Target, median};
use super::{Sizes, flushall};

const LEASE: Duration = Duration::from_millis(100);

/// Milliseconds from the lease end (as seen from here: mid-way through the grant's round
/// trip, plus the lease) to the waiter's grant.
fn delay(lease_start: (Instant, Instant), granted: Instant) -> f64 {
    let (sent, replied) = lease_start;
    let lease_end = sent + (replied - sent) / 2 + LEASE;
    if granted >= lease_end {
        (granted - lease_end).as_secs_f64() * 1e3
    } else {
        -((lease_end - granted).as_secs_f64() * 1e3)
    }
}

fn dlock_round(server: &Server, c: &mut Connection, key: &str) -> f64 {
    let sent = Instant::now();
    let _: i64 = cmd("DLOCK.ACQUIRE")
        .arg(key)
        .arg("holder")
        .arg(LEASE.as_millis() as i64)
        .query(c)
        .expect("grant");
    let replied = Instant::now();
    let mut w = server.client();
    let key = key.to_string();
    let granted = thread::spawn(move || {
        let reply: Value = cmd("DLOCK.ACQUIRE")
            .arg(&key)
            .arg("waiter")
            .arg(10_000)
            .arg("WAIT")
            .arg(5_000)
            .query(&mut w)
            .expect("wait");
        assert!(matches!(reply, Value::Int(_)), "{reply:?}");
        Instant::now()
    })
    .join()
    .expect("waiter");
    delay((sent, replied), granted)
}

/// `phase` staggers the poller's first try, as real pollers are not in step with the lease.
fn poll_round(server: &Server, c: &mut Connection, key: &str, phase: Duration) -> f64 {
    let sent = Instant::now();
    let _: () = cmd("SET")
        .arg(key)
        .arg("holder")
        .arg("NX")
        .arg("PX")
        .arg(LEASE.as_millis() as i64)
        .query(c)
        .expect("SET");
    let replied = Instant::now();
    let mut w = server.client();
    let key = key.to_string();
    let granted = thread::spawn(move || {
        thread::sleep(phase);
        loop {
            let reply: Value = cmd("SET")
                .arg(&key)
                .arg("waiter")
                .arg("NX")
                .arg("PX")
                .arg(10_000)
                .query(&mut w)
                .expect("SET NX");
            if reply != Value::Nil {
                return Instant::now();
            }
            thread::sleep(Duration::from_millis(50));
        }
    })
    .join()
    .expect("poller");
    delay((sent, replied), granted)
}

pub fn expiry(server: &Server, c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let mut chart = BarPanel {
        title: "lease end to the waiter's grant".into(),
        y_label: "delay (ms)".into(),
        groups: vec![],
        values: vec![vec![], vec![]],
        runs: vec![vec![], vec![]],
        reference: Some((5.0, "target ≤ 5 ms".into())),
    };
    for filler in [0, sizes.expiry_filler] {
        flushall(c);
        if filler > 0 {
            let _: () = cmd("DEBUG")
                .arg("POPULATE")
                .arg(filler)
                .arg("filler")
                .query(c)
                .expect("populate");
            let _: () = cmd("EVAL")
                .arg("for i = 0, tonumber(ARGV[1]) - 1 do redis.call('PEXPIRE', 'filler:' .. i, 3600000 + i) end")
                .arg(0)
                .arg(filler)
                .query(c)
                .expect("TTLs");
        }
        let (mut dlock, mut poll) = (vec![], vec![]);
        for round in 0..sizes.expiry_rounds {
            dlock.push(dlock_round(server, c, &format!("expiring-dlock-{round}")));
            let phase = Duration::from_millis((round as u64 * 17) % 50);
            poll.push(poll_round(
                server,
                c,
                &format!("expiring-poll-{round}"),
                phase,
            ));
        }
        let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        figures.push(Figure {
            name: format!("expiry hand-over delay, {filler} other keys with TTLs, median (ms), vs poll every 50 ms"),
            unit: "ms",
            dlock: median(dlock.clone()),
            baseline: Some(median(poll.clone())),
            target: Some(Target::AtMost(5.0)),
            others: vec![],
        });
        figures.push(Figure {
            name: format!("expiry hand-over delay, {filler} other keys with TTLs, max (ms), vs poll every 50 ms"),
            unit: "ms",
            dlock: max(&dlock),
            baseline: Some(max(&poll)),
            target: Some(Target::AtMost(5.0)),
            others: vec![],
        });
        chart.groups.push(match filler {
            0 => "no other keys".to_string(),
            n => format!("{n} other keys with TTLs"),
        });
        for (k, delays) in [dlock, poll].into_iter().enumerate() {
            chart.values[k].push(median(delays.clone()));
            chart.runs[k].push(delays);
        }
    }
    Charts::new(c).bars(
        "expiry",
        "Expiry hand-over: a 100 ms lease is not released, one waiter; median and each round",
        &["dlock WAIT".into(), "SET NX retry 50 ms".into()],
        &[chart],
    );
}
