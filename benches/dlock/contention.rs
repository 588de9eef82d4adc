//! Contended hand-over on one key: every contender loops acquire → hold 1 ms → release →
//! think 1 ms. dlock waits in the server (`WAIT 0`); the baselines take the lock with
//! `SET NX PX`, retrying every 50 ms (redsync's default), every 1 ms, or without pause, and
//! release with the EVALSHA compare-and-delete.
//!
//! Times are taken in this one process (one monotonic clock for every thread): a grant when
//! its reply arrives, a release just before it is sent, so "release → next grant" is the whole
//! latency a waiting client sees. The `clients` section runs the same loop and metrics through
//! the clients.
//!
//! Rounds of every strategy repeat until the key figures settle or a cap is hit, and the table
//! says which; it also gives the hold each strategy achieved, as a 1 ms sleep overshoots on a
//! loaded machine and utilization counts the overshoot as held time. The hand-over latencies
//! and each round's utilization and fairness are drawn as charts.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use super::charts::{BarPanel, Charts};
use super::common::{Connection, Server, Value, cmd};
use super::report::{Figure, Target, median};
use super::{Sizes, flushall};

pub(crate) const KEY: &str = "contended";
const HOLD: Duration = Duration::from_millis(1);
const THINK: Duration = Duration::from_millis(1);
pub(crate) const LEASE_MS: i64 = 10_000;
/// Rounds repeat until two consecutive medians of the key figures agree within this, or
/// until `Sizes::contention_max_rounds` or `TIME_CAP`.
const STABLE_WITHIN: f64 = 0.03;
const TIME_CAP: Duration = Duration::from_secs(90);
const RELEASE_SCRIPT: &str =
    "if redis.call('get',KEYS[1])==ARGV[1] then return redis.call('del',KEYS[1]) else return 0 end";

#[derive(Clone, Copy)]
pub(crate) enum Strategy {
    Dlock,
    /// SET NX PX, sleeping this long between tries (zero: no pause).
    Poll(Duration),
}

impl Strategy {
    fn label(self) -> String {
        match self {
            Strategy::Dlock => "dlock WAIT".into(),
            Strategy::Poll(d) if d.is_zero() => "SET NX busy retry".into(),
            Strategy::Poll(d) => format!("SET NX retry {} ms", d.as_millis()),
        }
    }
}

/// One grant, its times counted from any origin shared by the whole run.
pub(crate) struct Grant {
    pub(crate) client: usize,
    pub(crate) requested: Duration,
    pub(crate) granted: Duration,
    pub(crate) released: Duration,
}

pub(crate) struct Metrics {
    pub(crate) utilization: f64,
    pub(crate) grants_per_s: f64,
    /// The hold actually achieved: 1 ms asked, plus however late the sleep woke.
    pub(crate) hold_ms: f64,
    pub(crate) handoff_p50_ms: f64,
    pub(crate) handoff_p99_ms: f64,
    pub(crate) handoff_max_ms: f64,
    pub(crate) longest_wait_vs_ideal: f64,
    pub(crate) longest_wait_vs_mean: f64,
    pub(crate) spread: f64,
    /// Every release → next grant at another client (ms), sorted, for the chart.
    pub(crate) handoffs: Vec<f64>,
}

pub(crate) type Pick = fn(&Metrics) -> f64;

/// The metrics as table rows: name, unit, value.
pub(crate) const ROWS: [(&str, &str, Pick); 8] = [
    ("lock utilization", "fraction", |m| m.utilization),
    ("grants/s", "grants/s", |m| m.grants_per_s),
    (
        "mean hold achieved (ms; 1 asked, the rest is sleep overshoot)",
        "ms",
        |m| m.hold_ms,
    ),
    ("release to next grant p50 (ms)", "ms", |m| m.handoff_p50_ms),
    ("release to next grant p99 (ms)", "ms", |m| m.handoff_p99_ms),
    ("release to next grant max (ms)", "ms", |m| m.handoff_max_ms),
    ("longest wait / ideal queue time", "ratio", |m| {
        m.longest_wait_vs_ideal
    }),
    (
        "grants per contender, worst deviation from mean",
        "fraction",
        |m| m.spread,
    ),
];

/// One contender of the loop: `take` returns once it holds the lock, `give_back` releases it.
pub(crate) trait Contender: Send + 'static {
    fn take(&mut self);
    fn give_back(&mut self);
}

/// A contender sending the commands itself, as `strategy` says.
pub(crate) struct Raw {
    c: Connection,
    strategy: Strategy,
    owner: String,
}

impl Raw {
    pub(crate) fn new(server: &Server, strategy: Strategy, client: usize) -> Raw {
        Raw {
            c: server.client(),
            strategy,
            owner: format!("contender-{client}"),
        }
    }
}

impl Contender for Raw {
    fn take(&mut self) {
        take(&mut self.c, self.strategy, &self.owner);
    }

    fn give_back(&mut self) {
        give_back(&mut self.c, self.strategy, &self.owner);
    }
}

fn take(c: &mut Connection, strategy: Strategy, owner: &str) {
    match strategy {
        Strategy::Dlock => {
            let reply: Value = cmd("DLOCK.ACQUIRE")
                .arg(KEY)
                .arg(owner)
                .arg(LEASE_MS)
                .arg("WAIT")
                .arg(0)
                .query(c)
                .expect("acquire");
            assert!(matches!(reply, Value::Int(_)), "{reply:?}");
        }
        Strategy::Poll(pause) => loop {
            let reply: Value = cmd("SET")
                .arg(KEY)
                .arg(owner)
                .arg("NX")
                .arg("PX")
                .arg(LEASE_MS)
                .query(c)
                .expect("SET NX");
            if reply != Value::Nil {
                return;
            }
            if !pause.is_zero() {
                thread::sleep(pause);
            }
        },
    }
}

fn give_back(c: &mut Connection, strategy: Strategy, owner: &str) {
    let released: i64 = match strategy {
        Strategy::Dlock => cmd("DLOCK.RELEASE").arg(KEY).arg(owner).query(c),
        Strategy::Poll(_) => cmd("EVAL")
            .arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(KEY)
            .arg(owner)
            .query(c),
    }
    .expect("release");
    assert_eq!(released, 1, "released a lock it held");
}

/// Run the loop with one thread per contender (`contenders[i]` is client i) for `length`.
pub(crate) fn run<C: Contender>(contenders: Vec<C>, length: Duration) -> Vec<Grant> {
    let barrier = Arc::new(Barrier::new(contenders.len()));
    let origin = Instant::now();
    let threads: Vec<_> = contenders
        .into_iter()
        .enumerate()
        .map(|(client, mut contender)| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut grants = vec![];
                barrier.wait();
                let end = Instant::now() + length;
                while Instant::now() < end {
                    let requested = origin.elapsed();
                    contender.take();
                    let granted = origin.elapsed();
                    thread::sleep(HOLD);
                    let released = origin.elapsed();
                    contender.give_back();
                    grants.push(Grant {
                        client,
                        requested,
                        granted,
                        released,
                    });
                    thread::sleep(THINK);
                }
                grants
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("contender"))
        .collect()
}

fn run_raw(server: &Server, strategy: Strategy, contenders: usize, length: Duration) -> Vec<Grant> {
    let raw = (0..contenders)
        .map(|client| Raw::new(server, strategy, client))
        .collect();
    run(raw, length)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub(crate) fn measure(mut grants: Vec<Grant>, contenders: usize) -> Metrics {
    grants.sort_by_key(|g| g.granted);
    let (Some(first), Some(last)) = (grants.first(), grants.iter().map(|g| g.released).max())
    else {
        panic!("no grants at all");
    };
    let window = last.saturating_sub(first.granted).as_secs_f64();
    let held: f64 = grants
        .iter()
        .map(|g| g.released.saturating_sub(g.granted).as_secs_f64())
        .sum();
    let mut handoffs: Vec<f64> = grants
        .windows(2)
        .filter(|w| w[0].client != w[1].client)
        .map(|w| w[1].granted.saturating_sub(w[0].released).as_secs_f64() * 1e3)
        .collect();
    handoffs.sort_by(f64::total_cmp);
    let period = window / grants.len() as f64;
    let ideal_wait = (contenders.saturating_sub(1)) as f64 * period;
    let waits: Vec<f64> = grants
        .iter()
        .map(|g| g.granted.saturating_sub(g.requested).as_secs_f64())
        .collect();
    let longest_wait = waits.iter().copied().fold(0.0, f64::max);
    let mean_wait = waits.iter().sum::<f64>() / waits.len() as f64;
    let mut per_client: HashMap<usize, f64> = (0..contenders).map(|c| (c, 0.0)).collect();
    for g in &grants {
        *per_client.entry(g.client).or_default() += 1.0;
    }
    let mean = grants.len() as f64 / contenders as f64;
    let spread = per_client
        .values()
        .map(|n| (n - mean).abs() / mean)
        .fold(0.0, f64::max);
    Metrics {
        utilization: held / window,
        grants_per_s: grants.len() as f64 / window,
        hold_ms: held / grants.len() as f64 * 1e3,
        handoff_p50_ms: percentile(&handoffs, 0.5),
        handoff_p99_ms: percentile(&handoffs, 0.99),
        handoff_max_ms: handoffs.last().copied().unwrap_or(f64::NAN),
        longest_wait_vs_ideal: longest_wait / ideal_wait,
        longest_wait_vs_mean: longest_wait / mean_wait,
        spread,
        handoffs,
    }
}

/// The medians that must settle, by strategy: dlock's utilization and median hand-over, and
/// the utilization of the 50 ms poller the table divides by. Not that poller's median
/// hand-over: a retry lands either just after a release or up to 50 ms later, so its median
/// jumps between the two from round to round.
const KEY_FIGURES: [(usize, Pick); 3] = [
    (0, |m| m.utilization),
    (0, |m| m.handoff_p50_ms),
    (1, |m| m.utilization),
];

/// Rounds of every strategy (`[strategy][round]`) until the key figures' medians settle or a
/// cap is hit, and which of the two ended them.
fn rounds_until_stable(
    server: &Server,
    c: &mut Connection,
    sizes: &Sizes,
    strategies: &[Strategy],
    contenders: usize,
) -> (Vec<Vec<Metrics>>, String) {
    let started = Instant::now();
    let length = Duration::from_millis(sizes.contention_ms);
    let mut rounds: Vec<Vec<Metrics>> = strategies.iter().map(|_| vec![]).collect();
    let mut previous: Option<Vec<f64>> = None;
    loop {
        for (strategy, results) in strategies.iter().zip(rounds.iter_mut()) {
            flushall(c);
            results.push(measure(
                run_raw(server, *strategy, contenders, length),
                contenders,
            ));
        }
        let done = rounds[0].len();
        let medians: Vec<f64> = KEY_FIGURES
            .iter()
            .map(|(strategy, pick)| median(rounds[*strategy].iter().map(pick).collect()))
            .collect();
        let moved = previous.as_ref().map(|before| {
            before
                .iter()
                .zip(&medians)
                .map(|(a, b)| if a == b { 0.0 } else { (b - a).abs() / a.abs() })
                .fold(0.0, f64::max)
        });
        let (dlock, poller) = (&rounds[0][done - 1], &rounds[1][done - 1]);
        eprintln!(
            "   {contenders} contenders, round {done}: dlock utilization {:.3}, p50 hand-over {:.3} ms, hold {:.3} ms; {} utilization {:.3}{}",
            dlock.utilization,
            dlock.handoff_p50_ms,
            dlock.hold_ms,
            strategies[1].label(),
            poller.utilization,
            moved.map_or(String::new(), |m| format!(
                "; key medians moved up to {:.1}%",
                m * 100.0
            ))
        );
        let verdict = match moved {
            Some(m) if done >= sizes.rounds && m <= STABLE_WITHIN => format!(
                "stable: two consecutive medians within {:.0}%",
                STABLE_WITHIN * 100.0
            ),
            _ if done >= sizes.contention_max_rounds || started.elapsed() >= TIME_CAP => format!(
                "capped at {} rounds or {} s before two medians agreed within {:.0}%",
                sizes.contention_max_rounds,
                TIME_CAP.as_secs(),
                STABLE_WITHIN * 100.0
            ),
            _ => {
                previous = Some(medians);
                continue;
            }
        };
        eprintln!("   {contenders} contenders: {done} rounds, {verdict}");
        return (rounds, verdict);
    }
}

pub fn contention(server: &Server, c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let strategies = [
        Strategy::Dlock,
        Strategy::Poll(Duration::from_millis(50)),
        Strategy::Poll(Duration::from_millis(1)),
        Strategy::Poll(Duration::ZERO),
    ];
    let labels: Vec<String> = strategies.iter().map(|s| s.label()).collect();
    let mut handover_panels = vec![];
    let mut utilization = BarPanel {
        title: "lock utilization".into(),
        y_label: "fraction of the run the lock is held".into(),
        groups: vec![],
        values: vec![vec![]; strategies.len()],
        runs: vec![vec![]; strategies.len()],
        reference: Some((0.9, "target ≥ 0.9".into())),
    };
    let mut fairness = BarPanel {
        title: "fairness".into(),
        y_label: "grants per contender: worst deviation from mean".into(),
        groups: vec![],
        values: vec![vec![]; strategies.len()],
        runs: vec![vec![]; strategies.len()],
        reference: Some((0.05, "target ≤ 0.05".into())),
    };
    for &contenders in sizes.contenders {
        let (rounds, verdict) = rounds_until_stable(server, c, sizes, &strategies, contenders);
        let targets = [
            Some(Target::AtLeast(0.9)),
            None,
            None,
            Some(Target::AtMost(0.2)),
            Some(Target::AtMost(1.0)),
            None,
            Some(Target::AtMost(1.2)),
            Some(Target::AtMost(0.05)),
        ];
        for ((name, unit, pick), target) in ROWS.into_iter().zip(targets) {
            let medians: Vec<f64> = rounds
                .iter()
                .map(|runs| median(runs.iter().map(pick).collect()))
                .collect();
            let others = labels
                .iter()
                .zip(&medians)
                .skip(2)
                .map(|(label, v)| (label.clone(), *v))
                .collect();
            figures.push(Figure {
                name: format!("{contenders} contenders: {name}, vs {}", labels[1]),
                unit,
                dlock: medians[0],
                baseline: Some(medians[1]),
                target,
                others,
            });
        }
        figures.push(Figure {
            name: format!("{contenders} contenders: rounds run, {verdict}"),
            unit: "rounds",
            dlock: rounds[0].len() as f64,
            baseline: None,
            target: None,
            others: vec![],
        });
        handover_panels.push((
            format!("{contenders} contenders"),
            rounds
                .iter()
                .map(|runs| runs.iter().flat_map(|m| m.handoffs.clone()).collect())
                .collect(),
        ));
        for (panel, pick) in [
            (&mut utilization, (|m| m.utilization) as Pick),
            (&mut fairness, |m| m.spread),
        ] {
            panel.groups.push(format!("{contenders} contenders"));
            for (k, runs) in rounds.iter().enumerate() {
                let values: Vec<f64> = runs.iter().map(pick).collect();
                panel.values[k].push(median(values.clone()));
                panel.runs[k].push(values);
            }
        }
    }
    let charts = Charts::new(c);
    charts.cdf(
        "contention-handover",
        "Release to next grant on a contended lock (hold 1 ms, think 1 ms)",
        "release to next grant at another client (ms, log scale)",
        &labels,
        &handover_panels,
    );
    charts.bars(
        "contention-utilization",
        "Utilization and fairness on a contended lock, median and each round",
        &labels,
        &[utilization, fairness],
    );
}
