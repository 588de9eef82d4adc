//! Instructions per request, counted by callgrind: what a request costs the server, the
//! same from run to run up to what a server process draws at start, where throughput on a
//! shared machine moves by several percent between runs and more between server processes.
//! `ACQUIRE`, the floor module and `SET NX PX` each serve the throughput section's pipelined
//! requests (50 connections, 32 deep, an owner per request) under `valgrind
//! --tool=callgrind`: N requests to warm the server, then its counts zeroed, N more, and its
//! counts dumped (`callgrind_control`), so that one process counts exactly the measured
//! requests. Each cost is the median over several server processes: Redis seeds its hash
//! functions at random when it starts, and how far down its command table's buckets a
//! command's name lands moves the cost of looking it up, once per request and again in
//! `RedisModule_Replicate`, by hundreds of instructions from one process to the next.
//!
//! Instructions alone miss what a request's code costs in the instruction cache: callgrind
//! also simulates the caches (the host's sizes), and the section gives the cycles it
//! estimates from them as KCachegrind does — one per instruction, 10 per first-level miss,
//! 100 per last-level miss — which follow the throughput ratios more closely.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{Connection, cmd, free_port, module_path};
use super::report::Figure;
use super::throughput::{CLIENT_OWNER, RANDOM_KEY, floor_module_path, run_redis_benchmark};
use super::{Sizes, TTL_MS};

/// The pipeline depth of the throughput section; request counts are multiples of it, so that
/// redis-benchmark sends exactly as many as asked.
const PIPELINE: u64 = 32;

/// The key a one-key run draws every time (`RANDOM_KEY` with a keyspace of 1).
const ONE_KEY: &str = "lock:000000000000";

/// A redis-server running under callgrind; `count` writes what it ran to `out`.1.
struct Counted {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Counted {
    fn start(dir: &Path, name: &str, floor: Option<&Path>) -> Counted {
        let port = free_port();
        let out = dir.join(format!("callgrind.{name}.out"));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(out.with_extension("out.1"));
        let server = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg("--cache-sim=yes")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // Fewer cron runs: the server's periodic work, which takes longer under valgrind,
            // would otherwise land on the requests' counts.
            .args(["--hz", "1"])
            .arg("--dir")
            .arg(dir)
            .arg("--loadmodule")
            .arg(module_path());
        if let Some(floor) = floor {
            command.arg("--loadmodule").arg(floor);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run valgrind");
        let counted = Counted { child, port, out };
        let deadline = Instant::now() + Duration::from_secs(120);
        while counted.client().is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server under valgrind did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        counted
    }

    fn client(&self) -> redis::RedisResult<Connection> {
        let mut c =
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?.get_connection()?;
        let _: String = cmd("PING").query(&mut c)?;
        Ok(c)
    }

    /// Zero the server's counts, run `requests` of `words`, and read what the server ran
    /// for them.
    fn count(&self, keyspace: u64, requests: u64, words: &[&str]) -> Cost {
        self.control("-z");
        run_redis_benchmark(self.port, false, keyspace, PIPELINE as u32, requests, words);
        self.control("-d");
        let dump = self.out.with_extension("out.1");
        let counts = std::fs::read_to_string(&dump).unwrap_or_default();
        Cost::parse(&counts).unwrap_or_else(|| panic!("no totals in {}", dump.display()))
    }

    /// Send callgrind a command (`-z` zero, `-d` dump) and wait for it to be done.
    fn control(&self, command: &str) {
        let status = Command::new("callgrind_control")
            .arg(command)
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .status()
            .expect("run callgrind_control (it comes with valgrind)");
        assert!(status.success(), "callgrind_control {command} failed");
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Ok(mut c) = self.client() {
            let _: redis::RedisResult<()> = cmd("SHUTDOWN").arg("NOSAVE").query(&mut c);
        }
        let _ = self.child.wait();
    }
}

/// What a run (or, as a difference, a request) cost.
#[derive(Clone, Copy, Default)]
struct Cost {
    instructions: f64,
    /// Instructions, plus 10 cycles per first-level cache miss and 100 per last-level miss.
    cycles: f64,
}

impl Cost {
    /// The totals of a callgrind output file, by the names on its `events:` line.
    fn parse(counts: &str) -> Option<Cost> {
        let events: Vec<&str> = counts
            .lines()
            .find_map(|line| line.strip_prefix("events:"))?
            .split_whitespace()
            .collect();
        let totals: Vec<f64> = counts
            .lines()
            .find_map(|line| {
                line.strip_prefix("summary:")
                    .or_else(|| line.strip_prefix("totals:"))
            })?
            .split_whitespace()
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        let event = |name: &str| {
            events
                .iter()
                .position(|e| *e == name)
                .and_then(|i| totals.get(i).copied())
        };
        let sum = |names: &[&str]| names.iter().map(|n| event(n)).sum::<Option<f64>>();
        let instructions = event("Ir")?;
        let first_level = sum(&["I1mr", "D1mr", "D1mw"])?;
        let last_level = sum(&["ILmr", "DLmr", "DLmw"])?;
        Some(Cost {
            instructions,
            cycles: instructions + 10.0 * first_level + 100.0 * last_level,
        })
    }

    /// Per request, of `requests`.
    fn per_request(self, requests: u64) -> Cost {
        let n = requests as f64;
        Cost {
            instructions: self.instructions / n,
            cycles: self.cycles / n,
        }
    }

    /// The median of each figure.
    fn median(costs: &[Cost]) -> Cost {
        let middle = |of: fn(&Cost) -> f64| {
            let mut values: Vec<f64> = costs.iter().map(of).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or_default()
        };
        Cost {
            instructions: middle(|c| c.instructions),
            cycles: middle(|c| c.cycles),
        }
    }

    fn mix(new: f64, fresh: Cost, held: Cost) -> Cost {
        Cost {
            instructions: new * fresh.instructions + (1.0 - new) * held.instructions,
            cycles: new * fresh.cycles + (1.0 - new) * held.cycles,
        }
    }
}

/// The cost of one request of `words` over `keyspace` random keys, the median over
/// `processes` servers; `held_by` takes the one key of a one-key run first, as another owner.
fn per_request(
    dir: &Path,
    floor: Option<&Path>,
    words: &[&str],
    keyspace: u64,
    requests: u64,
    processes: usize,
    held_by: Option<&str>,
) -> Cost {
    let costs: Vec<Cost> = (0..processes)
        .map(|process| {
            let server = Counted::start(dir, &format!("{}.{process}", words[0]), floor);
            if let Some(owner) = held_by {
                let mut c = server.client().expect("connect to the counted server");
                let first: Vec<&str> = words
                    .iter()
                    .map(|w| match *w {
                        RANDOM_KEY => ONE_KEY,
                        CLIENT_OWNER => owner,
                        w => w,
                    })
                    .collect();
                let _: redis::Value = cmd(first[0])
                    .arg(&first[1..])
                    .query(&mut c)
                    .expect("take the key");
            }
            run_redis_benchmark(
                server.port,
                false,
                keyspace,
                PIPELINE as u32,
                requests,
                words,
            );
            server
                .count(keyspace, requests, words)
                .per_request(requests)
        })
        .collect();
    Cost::median(&costs)
}

pub fn instructions(sizes: &Sizes, figures: &mut Vec<Figure>) {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("   no valgrind (apt-get install valgrind): skipping the instruction counts");
        return;
    }
    let floor = floor_module_path();
    let dir = std::env::temp_dir().join(format!("dlock-bench-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the callgrind directory");
    let requests = sizes.instruction_requests.div_ceil(PIPELINE) * PIPELINE;
    let ttl = TTL_MS.to_string();
    let key = RANDOM_KEY;
    let commands = [
        vec!["SET", key, CLIENT_OWNER, "NX", "PX", &ttl],
        vec!["FLOOR.ACQUIRE", key, CLIENT_OWNER, &ttl],
        vec!["DLOCK.ACQUIRE", key, CLIENT_OWNER, &ttl],
    ];
    // A new key: a keyspace so large that no key is drawn twice. A held key: the one key of a
    // keyspace of 1, taken first by another owner, so that every request is refused.
    let runs = [(100_000_000_000, None), (1, Some("another-owner"))];
    let mut cost = [[None; 3]; 2];
    for (costs, (keyspace, held_by)) in cost.iter_mut().zip(runs) {
        for (cost, words) in costs.iter_mut().zip(&commands) {
            if words[0] == "FLOOR.ACQUIRE" && floor.is_none() {
                continue;
            }
            let floor = floor.as_deref();
            *cost = Some(per_request(
                &dir,
                floor,
                words,
                keyspace,
                requests,
                sizes.instruction_processes,
                held_by,
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The throughput section's requests: as many as its keyspace has keys, drawn at random, so
    // that some find their key taken.
    let (k, n) = (sizes.keyspace as f64, sizes.requests_pipelined as f64);
    let new = k / n * (1.0 - (-n / k).exp());
    let [fresh, held] = cost;
    let mix = [0, 1, 2].map(|i| Some(Cost::mix(new, fresh[i]?, held[i]?)));
    let cases = [
        ("a new key".to_string(), fresh),
        ("a key another owner holds".to_string(), held),
        (
            format!("the throughput mix, {:.0}% new keys", new * 100.0),
            mix,
        ),
    ];
    for (case, [set, floor, acquire]) in cases {
        let (Some(set), Some(acquire)) = (set, acquire) else {
            continue;
        };
        for (unit, of) in [
            (
                "instructions/request",
                (|c: Cost| c.instructions) as fn(Cost) -> f64,
            ),
            ("estimated cycles/request", |c: Cost| c.cycles),
        ] {
            let figure = |name: &str, baseline: f64, others| Figure {
                name: format!("{name}, {case} ({unit})"),
                unit,
                dlock: of(acquire).round(),
                baseline: Some(baseline.round()),
                target: None,
                others,
            };
            let with_floor = floor.map(|f| vec![("FLOOR.ACQUIRE".to_string(), of(f).round())]);
            figures.push(figure(
                "ACQUIRE vs SET NX PX",
                of(set),
                with_floor.unwrap_or_default(),
            ));
            if let Some(floor) = floor {
                figures.push(figure(
                    "ACQUIRE vs FLOOR.ACQUIRE (floor module)",
                    of(floor),
                    vec![],
                ));
            }
        }
    }
}
