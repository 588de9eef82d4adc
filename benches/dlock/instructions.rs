//! Instructions per request, counted by callgrind: what a request costs the server, exactly
//! and the same on every run, where throughput on a shared machine moves by several percent
//! between runs and more between server processes. `ACQUIRE`, the floor module and `SET NX
//! PX` each serve the throughput section's pipelined requests (50 connections, 32 deep, an
//! owner per request) under `valgrind --tool=callgrind`, once N requests and once 2N on a
//! server of their own; the difference over N is the cost of one request, start-up and
//! shut-down cancelled out.

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

/// A redis-server running under callgrind, its counts written to `out` when it shuts down.
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
        let server = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
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

    /// Shut the server down and read how many instructions it ran.
    fn total(mut self) -> u64 {
        if let Ok(mut c) = self.client() {
            let _: redis::RedisResult<()> = cmd("SHUTDOWN").arg("NOSAVE").query(&mut c);
        }
        let _ = self.child.wait();
        let counts = std::fs::read_to_string(&self.out).unwrap_or_default();
        counts
            .lines()
            .find_map(|line| {
                line.strip_prefix("summary:")
                    .or_else(|| line.strip_prefix("totals:"))
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no totals in {}", self.out.display()))
    }
}

/// Instructions per request of `words` over `keyspace` random keys; `held_by` takes the
/// one key of a one-key run first, as another owner.
fn per_request(
    dir: &Path,
    floor: Option<&Path>,
    words: &[&str],
    keyspace: u64,
    requests: u64,
    held_by: Option<&str>,
) -> f64 {
    let mut totals = [0u64; 2];
    for (total, n) in totals.iter_mut().zip([requests, 2 * requests]) {
        let server = Counted::start(dir, &format!("{}.{n}", words[0]), floor);
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
        run_redis_benchmark(server.port, false, keyspace, PIPELINE as u32, n, words);
        *total = server.total();
    }
    (totals[1] as f64 - totals[0] as f64) / requests as f64
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
            *cost = Some(per_request(&dir, floor, words, keyspace, requests, held_by));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The throughput section's requests: as many as its keyspace has keys, drawn at random, so
    // that some find their key taken.
    let (k, n) = (sizes.keyspace as f64, sizes.requests_pipelined as f64);
    let new = k / n * (1.0 - (-n / k).exp());
    let [fresh, held] = cost;
    let mix = [0, 1, 2].map(|i| Some(new * fresh[i]? + (1.0 - new) * held[i]?));
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
        let figure = |name: String, baseline: f64, others| Figure {
            name: format!("{name}, {case} (instructions/request)"),
            unit: "instructions/request",
            dlock: acquire.round(),
            baseline: Some(baseline.round()),
            target: None,
            others,
        };
        let with_floor = floor.map(|f| vec![("FLOOR.ACQUIRE".to_string(), f.round())]);
        figures.push(figure(
            "ACQUIRE vs SET NX PX".into(),
            set,
            with_floor.unwrap_or_default(),
        ));
        if let Some(floor) = floor {
            figures.push(figure(
                "ACQUIRE vs FLOOR.ACQUIRE (floor module)".into(),
                floor,
                vec![],
            ));
        }
    }
}
