//! dlock against its baselines, in the same run on the same server, as ratios.
//!
//! `make bench` (or `cargo bench --bench dlock`) starts its own redis-server with the module
//! and measures, in interleaved rounds with medians:
//! - throughput with `redis-benchmark` (50 connections, random keys), unpipelined and
//!   pipelined: DLOCK.ACQUIRE vs SET NX PX, DLOCK.RELEASE vs the EVALSHA compare-and-delete,
//!   DLOCK.EXTEND vs the EVALSHA compare-and-pexpire, GET as the floor; plus the server's
//!   CPU time per operation, which is steadier than throughput on a shared machine;
//! - memory per held lock at 1M locks vs SET NX PX string locks of the same key and owner
//!   sizes, and what is left after all are released.
//!
//! It prints a table and writes the same figures to `target/bench/latest.json`.
//! `-- --smoke` runs everything on tiny sizes in seconds (CI uses it to keep this working).

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::process::Command;

use common::{Connection, Server, cmd};

/// A fixed 32-byte owner, the size of a generated one.
const OWNER: &str = "0123456789abcdef0123456789abcdef";
const TTL_MS: i64 = 600_000;

const RELEASE_SCRIPT: &str =
    "if redis.call('get',KEYS[1])==ARGV[1] then return redis.call('del',KEYS[1]) else return 0 end";
const EXTEND_SCRIPT: &str = "if redis.call('get',KEYS[1])==ARGV[1] then \
     return redis.call('pexpire',KEYS[1],ARGV[2]) else return 0 end";

struct Sizes {
    rounds: usize,
    keyspace: u64,
    requests_pipelined: u64,
    requests_unpipelined: u64,
    memory_locks: u64,
}

const FULL: Sizes = Sizes {
    rounds: 3,
    keyspace: 1_000_000,
    requests_pipelined: 1_000_000,
    requests_unpipelined: 200_000,
    memory_locks: 1_000_000,
};

const SMOKE: Sizes = Sizes {
    rounds: 1,
    keyspace: 2_000,
    requests_pipelined: 4_000,
    requests_unpipelined: 1_000,
    memory_locks: 5_000,
};

#[derive(Clone, Copy)]
enum Target {
    /// dlock / baseline must be at least this.
    RatioAtLeast(f64),
    /// dlock / baseline must be at most this.
    RatioAtMost(f64),
    /// dlock's figure must be at most this.
    AtMost(f64),
}

struct Figure {
    name: String,
    unit: &'static str,
    dlock: f64,
    baseline: Option<f64>,
    target: Option<Target>,
}

impl Figure {
    fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b != 0.0).map(|b| self.dlock / b)
    }

    fn met(&self) -> Option<bool> {
        match self.target? {
            Target::RatioAtLeast(t) => self.ratio().map(|r| r >= t),
            Target::RatioAtMost(t) => self.ratio().map(|r| r <= t),
            Target::AtMost(t) => Some(self.dlock <= t),
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Some(Target::RatioAtLeast(t)) => format!(">= {t}x"),
            Some(Target::RatioAtMost(t)) => format!("<= {t}x"),
            Some(Target::AtMost(t)) => format!("<= {t}"),
            None => String::new(),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The server's user + system CPU time so far, in clock ticks (10 ms).
fn server_cpu_ticks(server: &Server) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    tick(11) + tick(12)
}

/// One redis-benchmark run: (requests per second, server CPU microseconds per request).
fn redis_benchmark(
    server: &Server,
    sizes: &Sizes,
    pipeline: u32,
    requests: u64,
    words: &[&str],
) -> (f64, f64) {
    let binary = std::env::var("REDIS_BENCHMARK").unwrap_or_else(|_| "redis-benchmark".into());
    let before = server_cpu_ticks(server);
    let output = Command::new(binary)
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["-c", "50", "-n", &requests.to_string()])
        .args(["-r", &sizes.keyspace.to_string()])
        .args(["-P", &pipeline.to_string(), "--csv"])
        .args(words)
        .output()
        .expect("run redis-benchmark (is redis-tools installed? run `make deps`)");
    let cpu_us = (server_cpu_ticks(server) - before) * 10_000.0 / requests as f64;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rps = stdout
        .lines()
        .last()
        .and_then(|line| line.split(',').nth(1))
        .and_then(|field| field.trim_matches('"').parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no result from redis-benchmark {words:?}: {stdout}"));
    (rps, cpu_us)
}

/// Hold `count` locks `lock:000000000000` … the way each side takes them, in script chunks.
fn populate(c: &mut Connection, dlock: bool, prefix: &str, width: usize, count: u64) {
    let take = if dlock {
        "redis.call('DLOCK.ACQUIRE', k, ARGV[3], ARGV[4])"
    } else {
        "redis.call('SET', k, ARGV[3], 'NX', 'PX', ARGV[4])"
    };
    let script = format!(
        "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do \
           local k = ARGV[5] .. string.format('%0{width}d', i) {take} end"
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
            .arg(TTL_MS)
            .arg(prefix)
            .query(c)
            .expect("populate");
        from = to + 1;
    }
}

fn flushall(c: &mut Connection) {
    let _: () = cmd("FLUSHALL").arg("SYNC").query(c).expect("FLUSHALL");
}

struct Pair {
    name: &'static str,
    baseline: &'static str,
    /// Whether each side needs the keyspace full of held locks first.
    prefill: bool,
    dlock: Vec<String>,
    base: Vec<String>,
}

fn throughput(server: &Server, c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let release_sha: String = cmd("SCRIPT")
        .arg("LOAD")
        .arg(RELEASE_SCRIPT)
        .query(c)
        .expect("load");
    let extend_sha: String = cmd("SCRIPT")
        .arg("LOAD")
        .arg(EXTEND_SCRIPT)
        .query(c)
        .expect("load");
    let key = "lock:__rand_int__";
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ttl = TTL_MS.to_string();
    let pairs = [
        Pair {
            name: "ACQUIRE",
            baseline: "SET NX PX",
            prefill: false,
            dlock: words(&["DLOCK.ACQUIRE", key, OWNER, &ttl]),
            base: words(&["SET", key, OWNER, "NX", "PX", &ttl]),
        },
        Pair {
            name: "RELEASE",
            baseline: "EVALSHA compare-and-delete",
            prefill: true,
            dlock: words(&["DLOCK.RELEASE", key, OWNER]),
            base: words(&["EVALSHA", &release_sha, "1", key, OWNER]),
        },
        Pair {
            name: "EXTEND",
            baseline: "EVALSHA compare-and-pexpire",
            prefill: true,
            dlock: words(&["DLOCK.EXTEND", key, OWNER, &ttl]),
            base: words(&["EVALSHA", &extend_sha, "1", key, OWNER, &ttl]),
        },
    ];
    for (pipeline, requests, label) in [
        (1, sizes.requests_unpipelined, "unpipelined"),
        (32, sizes.requests_pipelined, "pipelined x32"),
    ] {
        let mut runs: Vec<[Vec<(f64, f64)>; 2]> = pairs.iter().map(|_| [vec![], vec![]]).collect();
        let mut floor = vec![];
        for _ in 0..sizes.rounds {
            for (pair, results) in pairs.iter().zip(runs.iter_mut()) {
                for (side, (command, dlock)) in [(&pair.dlock, true), (&pair.base, false)]
                    .into_iter()
                    .enumerate()
                {
                    flushall(c);
                    if pair.prefill {
                        populate(c, dlock, "lock:", 12, sizes.keyspace);
                    }
                    let args: Vec<&str> = command.iter().map(String::as_str).collect();
                    results[side].push(redis_benchmark(server, sizes, pipeline, requests, &args));
                }
            }
            flushall(c);
            populate(c, false, "lock:", 12, sizes.keyspace);
            floor.push(redis_benchmark(server, sizes, pipeline, requests, &["GET", key]).0);
        }
        for (pair, [dlock, base]) in pairs.iter().zip(runs) {
            let rps = |r: &Vec<(f64, f64)>| median(r.iter().map(|x| x.0).collect());
            let cpu = |r: &Vec<(f64, f64)>| median(r.iter().map(|x| x.1).collect());
            let target = match (pipeline, pair.name) {
                (1, _) => None,
                (_, "ACQUIRE") => Some(Target::RatioAtLeast(0.9)),
                _ => Some(Target::RatioAtLeast(1.5)),
            };
            figures.push(Figure {
                name: format!("{} vs {}, {label} (ops/s)", pair.name, pair.baseline),
                unit: "ops/s",
                dlock: rps(&dlock),
                baseline: Some(rps(&base)),
                target,
            });
            figures.push(Figure {
                name: format!(
                    "{} vs {}, {label} (server CPU us/op)",
                    pair.name, pair.baseline
                ),
                unit: "us/op",
                dlock: cpu(&dlock),
                baseline: Some(cpu(&base)),
                target: None,
            });
        }
        figures.push(Figure {
            name: format!("GET (the floor), {label} (ops/s)"),
            unit: "ops/s",
            dlock: median(floor),
            baseline: None,
            target: None,
        });
    }
}

fn used_memory(c: &mut Connection) -> f64 {
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
fn memory(c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
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
    });
    // The keyspace's hash table shrinks later, in serverCron, on both sides alike.
    figures.push(Figure {
        name: "memory left after releasing every lock (bytes)".into(),
        unit: "bytes",
        dlock: left[0],
        baseline: Some(left[1]),
        target: Some(Target::AtMost(left[1] + 64.0 * 1024.0)),
    });
}

fn print_table(figures: &[Figure]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| figure | dlock | baseline | ratio | target | met |\n|---|---:|---:|---:|---|---|"
    );
    for f in figures {
        let num = |v: f64| {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            f.name,
            num(f.dlock),
            f.baseline.map(num).unwrap_or_default(),
            f.ratio().map(|r| format!("{r:.2}x")).unwrap_or_default(),
            f.target_text(),
            match f.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
    out
}

fn to_json(figures: &[Figure], machine: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let num = |v: Option<f64>| match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".into(),
    };
    let rows: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                "    {{\"figure\": \"{}\", \"unit\": \"{}\", \"dlock\": {}, \"baseline\": {}, \"ratio\": {}, \"target\": \"{}\", \"met\": {}}}",
                esc(&f.name),
                f.unit,
                num(Some(f.dlock)),
                num(f.baseline),
                num(f.ratio()),
                esc(&f.target_text()),
                f.met().map_or("null".into(), |m| m.to_string())
            )
        })
        .collect();
    format!(
        "{{\n  \"machine\": \"{}\",\n  \"figures\": [\n{}\n  ]\n}}\n",
        esc(machine),
        rows.join(",\n")
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let sizes = if smoke { &SMOKE } else { &FULL };
    let server = Server::with_config(&[("appendonly", "no"), ("lua-time-limit", "60000")]);
    let mut c = server.client();
    let version: String = cmd("INFO").arg("server").query(&mut c).expect("INFO");
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();

    let mut figures = vec![];
    throughput(&server, &mut c, sizes, &mut figures);
    memory(&mut c, sizes, &mut figures);

    let machine = format!("{}, Redis {version}", machine());
    let table = print_table(&figures);
    println!(
        "dlock benchmark ({}) on {machine}\n\n{table}",
        if smoke { "smoke" } else { "full" }
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(if smoke { "smoke.json" } else { "latest.json" });
    std::fs::write(&file, to_json(&figures, &machine)).expect("write the JSON results");
    println!("written to {}", file.display());
}
