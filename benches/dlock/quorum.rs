//! Quorum locks (issue 19): acquire + release cycles of a lock held on a majority of N = 3 and
//! N = 5 independent servers with the module, against Redlock implementations on the same
//! servers in the same run:
//! - the Rust client's `QuorumLock` (blocking), in this process;
//! - the Python client's `QuorumLock` and pottery's `Redlock` (benches/quorum/driver.py);
//! - node-redlock v5 on ioredis (benches/quorum/driver.cjs).
//!
//! Uncontended: one client, a key of its own, one attempt per acquire. Contended: 4 loops on
//! one key, acquire → hold 1 ms → release → think 1 ms, each library retrying with its own
//! backoff. Leases of 10 s, never renewed; the servers keep an AOF (`appendfsync everysec`),
//! as a quorum lock's servers should. pottery and node-redlock are installed under
//! target/bench/ when missing (never in `--smoke`, which skips them then).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dlock_client::{Client, Error, QuorumLock};

use super::Sizes;
use super::common::{Connection, Server};
use super::report::{Figure, median};

const TTL: Duration = Duration::from_secs(10);
const HOLD: Duration = Duration::from_millis(1);
const THINK: Duration = Duration::from_millis(1);
const CONTENDERS: usize = 4;
const QUORUMS: [usize; 2] = [3, 5];

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Runner {
    Rust,
    Python,
    Pottery,
    Node,
}

impl Runner {
    fn label(self) -> &'static str {
        match self {
            Runner::Rust => "Rust QuorumLock",
            Runner::Python => "Python QuorumLock",
            Runner::Pottery => "pottery Redlock",
            Runner::Node => "node-redlock",
        }
    }
}

/// A figure of a run: its name, unit, and how to read it.
type Metric = (&'static str, &'static str, fn(&Run) -> f64);

const METRICS: [Metric; 5] = [
    ("cycles/s", "cycles/s", |r| r.per_s),
    ("acquire p50 (ms)", "ms", |r| r.acquire.0),
    ("acquire p99 (ms)", "ms", |r| r.acquire.1),
    ("release p50 (ms)", "ms", |r| r.release.0),
    ("release p99 (ms)", "ms", |r| r.release.1),
];

/// One run's figures: cycles (granted acquires) per second, p50 and p99 of the acquire and of
/// the release, in ms.
#[derive(Clone, Copy)]
struct Run {
    per_s: f64,
    acquire: (f64, f64),
    release: (f64, f64),
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pottery_dir() -> PathBuf {
    repo().join("target/bench/python")
}

fn node_dir() -> PathBuf {
    repo().join("target/bench/node")
}

fn python_path() -> String {
    format!(
        "{}:{}",
        repo().join("clients/python/src").display(),
        pottery_dir().display()
    )
}

fn node_path() -> PathBuf {
    node_dir().join("node_modules")
}

/// Whether `command` runs and succeeds, quietly.
fn works(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn pottery_installed() -> bool {
    works(
        Command::new("python3")
            .args(["-c", "import pottery"])
            .env("PYTHONPATH", python_path()),
    )
}

fn install_pottery() -> bool {
    works(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(pottery_dir())
            .args(["pottery==3.0.1", "mmh3", "typing_extensions"]),
    )
}

fn node_redlock_installed() -> bool {
    works(
        Command::new("node")
            .args(["-e", "require('redlock'); require('ioredis')"])
            .env("NODE_PATH", node_path()),
    )
}

fn install_node_redlock() -> bool {
    works(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(node_dir())
            .args(["redlock@5.0.0-beta.2", "ioredis@5"]),
    )
}

/// Whether a third-party baseline can run: installed already, or installed now (not in a
/// smoke run, which must not need the network).
fn baseline(
    name: &str,
    whither: &Path,
    installed: fn() -> bool,
    install: fn() -> bool,
    smoke: bool,
) -> bool {
    if installed() {
        return true;
    }
    if smoke {
        eprintln!(
            "   quorum: {name} is not installed in {}: skipped (a full run installs it)",
            whither.display()
        );
        return false;
    }
    eprintln!("   quorum: installing {name} into {}", whither.display());
    if install() && installed() {
        return true;
    }
    eprintln!("   quorum: {name} could not be installed: skipped");
    false
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 * p) as usize).min(values.len().saturating_sub(1));
    values.get(at).copied().unwrap_or(f64::NAN)
}

/// The Rust client's cycles: `contenders` threads, each with its own lock object (on one key
/// when contended, otherwise a key each).
fn rust_run(clients: &[Client], key: &str, contenders: usize, length: Duration) -> Run {
    let contended = contenders > 1;
    let locks: Vec<QuorumLock> = (0..contenders)
        .map(|n| {
            let key = if contended {
                key.to_string()
            } else {
                format!("{key}:{n}")
            };
            QuorumLock::new(clients, &key).ttl(TTL).keepalive(false)
        })
        .collect();
    // Connections and node ids before the clock starts.
    for lock in if contended { &locks[..1] } else { &locks[..] } {
        let lease = lock
            .try_acquire()
            .expect("warm-up quorum acquire")
            .expect("an uncontended quorum lock is granted");
        lease.release().expect("warm-up quorum release");
    }
    let times = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let start = Instant::now();
    let end = start + length;
    let workers: Vec<_> = locks
        .into_iter()
        .map(|lock| {
            let times = Arc::clone(&times);
            thread::spawn(move || {
                while Instant::now() < end {
                    let asked = Instant::now();
                    let lease = if contended {
                        match lock.acquire(Some(end.saturating_duration_since(asked))) {
                            Ok(lease) => Some(lease),
                            Err(Error::NotAcquired { .. }) => None,
                            Err(e) => panic!("quorum acquire: {e}"),
                        }
                    } else {
                        lock.try_acquire().expect("quorum acquire")
                    };
                    let Some(lease) = lease else { continue };
                    let granted = Instant::now();
                    if contended {
                        thread::sleep(HOLD);
                    }
                    let releasing = Instant::now();
                    lease.release().expect("quorum release");
                    let released = Instant::now();
                    {
                        let mut times = times.lock().expect("the times' lock");
                        times.0.push((granted - asked).as_secs_f64() * 1e3);
                        times.1.push((released - releasing).as_secs_f64() * 1e3);
                    }
                    if contended {
                        thread::sleep(THINK);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a quorum worker thread");
    }
    let took = start.elapsed().as_secs_f64();
    let (mut acquires, mut releases) = std::mem::take(&mut *times.lock().expect("the times"));
    Run {
        per_s: acquires.len() as f64 / took,
        acquire: (
            percentile(&mut acquires, 0.5),
            percentile(&mut acquires, 0.99),
        ),
        release: (
            percentile(&mut releases, 0.5),
            percentile(&mut releases, 0.99),
        ),
    }
}

/// A number of the driver's one-line JSON: `"name": value`.
fn json_number(json: &str, name: &str) -> f64 {
    let pattern = format!("\"{name}\":");
    let at = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {name} in the driver's output: {json}"));
    json[at + pattern.len()..]
        .trim_start()
        .split([',', '}'])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// A driver script's run (driver.py for Python and pottery, driver.cjs for node-redlock).
fn driver_run(runner: Runner, ports: &[u16], contenders: usize, length: Duration) -> Run {
    let drivers = repo().join("benches/quorum");
    let mut command = match runner {
        Runner::Node => {
            let mut c = Command::new("node");
            c.arg(drivers.join("driver.cjs"))
                .env("NODE_PATH", node_path());
            c
        }
        _ => {
            let mut c = Command::new("python3");
            c.arg(drivers.join("driver.py"))
                .args([
                    "--client",
                    if runner == Runner::Pottery {
                        "pottery"
                    } else {
                        "dlock"
                    },
                ])
                .env("PYTHONPATH", python_path())
                // No __pycache__ in the source tree.
                .env("PYTHONDONTWRITEBYTECODE", "1");
            c
        }
    };
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let output = command
        .args(["--ports", &ports.join(",")])
        .args(["--seconds", &length.as_secs_f64().to_string()])
        .args(["--contenders", &contenders.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run the {} driver: {e}", runner.label()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the {} driver failed ({}): {stdout}",
        runner.label(),
        output.status
    );
    let json = stdout.lines().last().unwrap_or_default();
    Run {
        per_s: json_number(json, "cycles_per_s"),
        acquire: (
            json_number(json, "acquire_p50_ms"),
            json_number(json, "acquire_p99_ms"),
        ),
        release: (
            json_number(json, "release_p50_ms"),
            json_number(json, "release_p99_ms"),
        ),
    }
}

/// The median of each figure over the rounds.
fn medians(runs: &[Run]) -> Run {
    let of = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    Run {
        per_s: of(|r| r.per_s),
        acquire: (of(|r| r.acquire.0), of(|r| r.acquire.1)),
        release: (of(|r| r.release.0), of(|r| r.release.1)),
    }
}

pub fn quorum(_: &Server, _: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let smoke = std::env::args().any(|a| a == "--smoke");
    // The smoke run only keeps this working: N = 3 is the same code as N = 5.
    let quorums = if smoke { &QUORUMS[..1] } else { &QUORUMS[..] };
    let length = Duration::from_millis(sizes.contention_ms);
    let most = quorums.iter().copied().max().unwrap_or(QUORUMS[0]);
    let servers: Vec<Server> = (1..=most)
        .map(|n| {
            Server::with_module_args(
                &["node-id", &n.to_string()],
                &[("appendonly", "yes"), ("appendfsync", "everysec")],
            )
        })
        .collect();
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let clients: Vec<Client> = ports
        .iter()
        .map(|p| Client::open(&format!("redis://127.0.0.1:{p}/")).expect("a client of a server"))
        .collect();
    let mut runners = vec![Runner::Rust, Runner::Python];
    if baseline(
        "pottery",
        &pottery_dir(),
        pottery_installed,
        install_pottery,
        smoke,
    ) {
        runners.push(Runner::Pottery);
    }
    if baseline(
        "node-redlock",
        &node_dir(),
        node_redlock_installed,
        install_node_redlock,
        smoke,
    ) {
        runners.push(Runner::Node);
    }

    // One run per round for each (contended, N, client); the clients take turns in a round.
    let mut runs: HashMap<(bool, usize, Runner), Vec<Run>> = HashMap::new();
    for round in 0..sizes.rounds {
        for contended in [false, true] {
            for &n in quorums {
                for &runner in &runners {
                    let contenders = if contended { CONTENDERS } else { 1 };
                    let run = match runner {
                        Runner::Rust => rust_run(
                            &clients[..n],
                            &format!("bench:rust:{round}:{contended}:{n}"),
                            contenders,
                            length,
                        ),
                        _ => driver_run(runner, &ports[..n], contenders, length),
                    };
                    runs.entry((contended, n, runner)).or_default().push(run);
                }
            }
        }
    }
    let result = |contended: bool, n: usize, runner: Runner| -> Option<Run> {
        runs.get(&(contended, n, runner)).map(|list| medians(list))
    };

    println!(
        "\nQuorum locks, acquire + release cycles on N independent servers (AOF everysec), \
         median of {} round(s) of {:.1} s; contended: {CONTENDERS} loops on one key, each \
         holding 1 ms and thinking 1 ms\n",
        sizes.rounds,
        length.as_secs_f64()
    );
    println!(
        "| client | N | cycles/s | vs pottery | acquire p50 / p99 (ms) | release p50 / p99 (ms) \
         | contended grants/s | contended acquire p50 / p99 (ms) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &n in quorums {
        for &runner in &runners {
            let (Some(alone), Some(busy)) = (result(false, n, runner), result(true, n, runner))
            else {
                continue;
            };
            let vs = result(false, n, Runner::Pottery)
                .map(|p| format!("{:.2}x", alone.per_s / p.per_s))
                .unwrap_or_default();
            println!(
                "| {} | {n} | {:.0} | {vs} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {:.2} / {:.1} |",
                runner.label(),
                alone.per_s,
                alone.acquire.0,
                alone.acquire.1,
                alone.release.0,
                alone.release.1,
                busy.per_s,
                busy.acquire.0,
                busy.acquire.1
            );
        }
    }
    println!();

    for contended in [false, true] {
        for &n in quorums {
            for runner in [Runner::Rust, Runner::Python] {
                let Some(mine) = result(contended, n, runner) else {
                    continue;
                };
                let pottery = result(contended, n, Runner::Pottery);
                let node = result(contended, n, Runner::Node);
                let what = if contended {
                    format!("{CONTENDERS} contenders on one key")
                } else {
                    "uncontended".to_string()
                };
                // A contended release costs what an uncontended one does.
                let shown = if contended { 3 } else { METRICS.len() };
                for &(metric, unit, value) in METRICS.iter().take(shown) {
                    figures.push(Figure {
                        name: format!(
                            "quorum N={n}, {what}: {} {metric}, vs pottery Redlock",
                            runner.label()
                        ),
                        unit,
                        dlock: value(&mine),
                        baseline: pottery.as_ref().map(value),
                        target: None,
                        others: node
                            .as_ref()
                            .map(|r| ("node-redlock".to_string(), value(r)))
                            .into_iter()
                            .collect(),
                    });
                }
            }
        }
    }
}
