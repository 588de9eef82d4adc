//! Throughput against SET NX PX and the EVALSHA recipes, with redis-benchmark as the driver.

use std::process::Command;

use super::charts::{BarPanel, Charts};
use super::common::{Connection, Server, cmd};
use super::report::{Figure, Target, median};
use super::{OWNER, Sizes, TTL_MS, bench_server, flushall, populate};

const RELEASE_SCRIPT: &str =
    "if redis.call('get',KEYS[1])==ARGV[1] then return redis.call('del',KEYS[1]) else return 0 end";
const EXTEND_SCRIPT: &str = "if redis.call('get',KEYS[1])==ARGV[1] then \
     return redis.call('pexpire',KEYS[1],ARGV[2]) else return 0 end";
/// The Lua fenced write: the lock key holds the token, checked before the SET.
const GUARD_SCRIPT: &str = "if redis.call('get',KEYS[1])==ARGV[1] then \
     return redis.call('set',KEYS[2],ARGV[2]) else return redis.error_reply('stale token') end";
/// Where the token goes in a fenced-write command, once the lock is taken.
const TOKEN: &str = "{token}";
/// The token the Lua baseline's lock key holds.
const LUA_TOKEN: &str = "4242";
/// The owner of an `ACQUIRE` or `SET NX PX` request: each request its own client, as with
/// real lockers, so a key drawn again is held by someone else and both sides refuse it. With
/// one owner for all (`OWNER`), `ACQUIRE` would re-enter every key drawn again (about 37% of
/// the requests over a keyspace as large as the run): a grant, replicated and announced, set
/// against `SET NX` refusing. Substituted, it is as long as `OWNER`: 32 bytes.
pub const CLIENT_OWNER: &str = "owner:__rand_int__:0123456789abc";
/// A lock key drawn at random from the run's keyspace.
pub const RANDOM_KEY: &str = "lock:__rand_int__";

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
pub fn redis_benchmark(
    server: &Server,
    keyspace: u64,
    pipeline: u32,
    requests: u64,
    words: &[&str],
) -> (f64, f64) {
    let before = server_cpu_ticks(server);
    let rps = run_redis_benchmark(server.port, false, keyspace, pipeline, requests, words);
    let cpu_us = (server_cpu_ticks(server) - before) * 10_000.0 / requests as f64;
    (rps, cpu_us)
}

/// Requests per second of one redis-benchmark run against the server (or, with `cluster`,
/// the cluster) at `port`, 50 connections.
pub fn run_redis_benchmark(
    port: u16,
    cluster: bool,
    keyspace: u64,
    pipeline: u32,
    requests: u64,
    words: &[&str],
) -> f64 {
    let binary = std::env::var("REDIS_BENCHMARK").unwrap_or_else(|_| "redis-benchmark".into());
    let mut command = Command::new(binary);
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if cluster {
        command.arg("--cluster");
    }
    let output = command
        .args(["-c", "50", "-n", &requests.to_string()])
        .args(["-r", &keyspace.to_string()])
        .args(["-P", &pipeline.to_string(), "--csv"])
        .args(words)
        .output()
        .expect("run redis-benchmark (is redis-tools installed? run `make deps`)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .last()
        .and_then(|line| line.split(',').nth(1))
        .and_then(|field| field.trim_matches('"').parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no result from redis-benchmark {words:?}: {stdout}"))
}

/// What each side needs in the keyspace before it runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prefill {
    Nothing,
    /// Every key of the keyspace held.
    Locks,
    /// One lock, `guard`, held; its token replaces `{token}` in the command.
    Guard,
}

struct Pair {
    name: &'static str,
    baseline: &'static str,
    prefill: Prefill,
    dlock: Vec<String>,
    base: Vec<String>,
}

/// The floor module's library; `None`, said so, when it is not built.
pub fn floor_module_path() -> Option<std::path::PathBuf> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/libdlock_floor.so");
    if !path.exists() {
        eprintln!(
            "   no floor module at {} (cargo build --release -p dlock-floor): skipping FLOOR.ACQUIRE",
            path.display()
        );
        return None;
    }
    Some(path)
}

/// The floor module (`benches/floor`, built by `make bench` and `make test`): what the
/// module API alone costs for a new lock key, its grant replied and replicated with a token
/// as `ACQUIRE`'s is. Loaded into the bench's server when built.
fn load_floor(c: &mut Connection) -> bool {
    let Some(path) = floor_module_path() else {
        return false;
    };
    let loaded: Result<(), _> = cmd("MODULE")
        .arg("LOAD")
        .arg(path.to_string_lossy().as_ref())
        .query(c);
    if let Err(e) = &loaded {
        eprintln!("   the server refused the floor module ({e}): skipping FLOOR.ACQUIRE");
    }
    loaded.is_ok()
}

/// The recipes' scripts, loaded: the SHAs of release, extend and guard.
fn load_scripts(c: &mut Connection) -> [String; 3] {
    [RELEASE_SCRIPT, EXTEND_SCRIPT, GUARD_SCRIPT].map(|script| {
        cmd("SCRIPT")
            .arg("LOAD")
            .arg(script)
            .query(c)
            .expect("load a script")
    })
}

/// A server for one round, configured as the bench's own, with the scripts (their SHAs do not
/// change) and, when `floor`, the floor module loaded.
fn round_server(floor: bool) -> (Server, Connection) {
    let server = bench_server();
    let mut c = server.client();
    load_scripts(&mut c);
    if floor {
        load_floor(&mut c);
    }
    (server, c)
}

pub fn throughput(server: &Server, c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let floor_module = load_floor(c);
    let [release_sha, extend_sha, guard_sha] = load_scripts(c);
    let key = RANDOM_KEY;
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ttl = TTL_MS.to_string();
    let pairs = [
        Pair {
            name: "ACQUIRE",
            baseline: "SET NX PX",
            prefill: Prefill::Nothing,
            dlock: words(&["DLOCK.ACQUIRE", key, CLIENT_OWNER, &ttl]),
            base: words(&["SET", key, CLIENT_OWNER, "NX", "PX", &ttl]),
        },
        Pair {
            name: "RELEASE",
            baseline: "EVALSHA compare-and-delete",
            prefill: Prefill::Locks,
            dlock: words(&["DLOCK.RELEASE", key, OWNER]),
            base: words(&["EVALSHA", &release_sha, "1", key, OWNER]),
        },
        Pair {
            name: "EXTEND",
            baseline: "EVALSHA compare-and-pexpire",
            prefill: Prefill::Locks,
            dlock: words(&["DLOCK.EXTEND", key, OWNER, &ttl]),
            base: words(&["EVALSHA", &extend_sha, "1", key, OWNER, &ttl]),
        },
        Pair {
            name: "GUARD + SET",
            baseline: "EVALSHA token check + SET",
            prefill: Prefill::Guard,
            dlock: words(&[
                "DLOCK.GUARD",
                "guard",
                TOKEN,
                "SET",
                "data:__rand_int__",
                "v",
            ]),
            base: words(&[
                "EVALSHA",
                &guard_sha,
                "2",
                "guard",
                "data:__rand_int__",
                TOKEN,
                "v",
            ]),
        },
    ];
    let mut chart = BarPanel {
        title: "pipelined x32, 50 connections".into(),
        y_label: "ops/s".into(),
        groups: vec![],
        values: vec![vec![], vec![]],
        runs: vec![],
        reference: None,
    };
    for (pipeline, requests, label) in [
        (1, sizes.requests_unpipelined, "unpipelined"),
        (32, sizes.requests_pipelined, "pipelined x32"),
    ] {
        let mut runs: Vec<[Vec<(f64, f64)>; 2]> = pairs.iter().map(|_| [vec![], vec![]]).collect();
        let mut floor = vec![];
        let mut module_floor = vec![];
        for round in 0..sizes.rounds {
            // Each round after the first runs on a server of its own: where a process's code
            // and data land in memory moves its cost per request by tens of percent (the
            // floor's own, between 3.4 and 5.2 us on 2 shared cores), so the medians are
            // taken over several processes rather than one process's luck.
            let mut fresh = (round > 0).then(|| round_server(floor_module));
            let (server, c): (&Server, &mut Connection) = match fresh.as_mut() {
                Some((fresh_server, fresh_c)) => (fresh_server, fresh_c),
                None => (server, &mut *c),
            };
            if floor_module {
                flushall(c);
                let words = ["FLOOR.ACQUIRE", key, CLIENT_OWNER, &ttl];
                module_floor.push(redis_benchmark(
                    server,
                    sizes.keyspace,
                    pipeline,
                    requests,
                    &words,
                ));
            }
            for (pair, results) in pairs.iter().zip(runs.iter_mut()) {
                for (side, (command, dlock)) in [(&pair.dlock, true), (&pair.base, false)]
                    .into_iter()
                    .enumerate()
                {
                    flushall(c);
                    let token = match pair.prefill {
                        Prefill::Nothing => String::new(),
                        Prefill::Locks => {
                            populate(c, dlock, "lock:", 12, sizes.keyspace);
                            String::new()
                        }
                        Prefill::Guard => hold_guard(c, dlock),
                    };
                    let command: Vec<String> = command
                        .iter()
                        .map(|w| if w == TOKEN { token.clone() } else { w.clone() })
                        .collect();
                    let args: Vec<&str> = command.iter().map(String::as_str).collect();
                    results[side].push(redis_benchmark(
                        server,
                        sizes.keyspace,
                        pipeline,
                        requests,
                        &args,
                    ));
                }
            }
            flushall(c);
            populate(c, false, "lock:", 12, sizes.keyspace);
            floor
                .push(redis_benchmark(server, sizes.keyspace, pipeline, requests, &["GET", key]).0);
        }
        let rps = |r: &Vec<(f64, f64)>| median(r.iter().map(|x| x.0).collect());
        let cpu = |r: &Vec<(f64, f64)>| median(r.iter().map(|x| x.1).collect());
        if floor_module && let Some([acquire, set]) = runs.first() {
            // The floor against SET, and ACQUIRE against the floor: within 5% of it is the
            // target when the floor itself is below 0.9x SET.
            for (name, dlock, baseline, target) in [
                (
                    "FLOOR.ACQUIRE (floor module) vs SET NX PX",
                    &module_floor,
                    set,
                    None,
                ),
                (
                    "ACQUIRE vs FLOOR.ACQUIRE (floor module)",
                    acquire,
                    &module_floor,
                    (pipeline > 1).then_some(Target::RatioAtLeast(0.95)),
                ),
            ] {
                figures.push(Figure {
                    name: format!("{name}, {label} (ops/s)"),
                    unit: "ops/s",
                    dlock: rps(dlock),
                    baseline: Some(rps(baseline)),
                    target,
                    others: vec![("server CPU us/op".into(), cpu(dlock))],
                });
            }
        }
        for (pair, [dlock, base]) in pairs.iter().zip(runs) {
            if pipeline > 1 {
                chart.groups.push(format!(
                    "{}\nvs {}\n{:.2}x",
                    pair.name,
                    pair.baseline,
                    rps(&dlock) / rps(&base)
                ));
                chart.values[0].push(rps(&dlock));
                chart.values[1].push(rps(&base));
            }
            let target = match (pipeline, pair.name) {
                (1, _) | (_, "GUARD + SET") => None,
                (_, "ACQUIRE") => Some(Target::RatioAtLeast(0.9)),
                _ => Some(Target::RatioAtLeast(1.5)),
            };
            figures.push(Figure {
                name: format!("{} vs {}, {label} (ops/s)", pair.name, pair.baseline),
                unit: "ops/s",
                dlock: rps(&dlock),
                baseline: Some(rps(&base)),
                target,
                others: vec![],
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
                others: vec![],
            });
        }
        let floor = median(floor);
        if pipeline > 1 {
            chart.reference = Some((floor, format!("GET, the floor: {floor:.0}")));
        }
        figures.push(Figure {
            name: format!("GET (the floor), {label} (ops/s)"),
            unit: "ops/s",
            dlock: floor,
            baseline: None,
            target: None,
            others: vec![],
        });
    }
    Charts::new(c).bars(
        "throughput-pipelined",
        "Pipelined throughput per command: dlock vs its baseline, median of rounds",
        &["dlock".into(), "baseline".into()],
        &[chart],
    );
}

/// Take the lock `guard` for the fenced-write pair: with DLOCK, or as the Lua recipe's string
/// holding a token. Returns the token.
fn hold_guard(c: &mut Connection, dlock: bool) -> String {
    if dlock {
        let token: i64 = cmd("DLOCK.ACQUIRE")
            .arg("guard")
            .arg(OWNER)
            .arg(TTL_MS)
            .query(c)
            .expect("take the guard lock");
        token.to_string()
    } else {
        let _: () = cmd("SET")
            .arg("guard")
            .arg(LUA_TOKEN)
            .arg("PX")
            .arg(TTL_MS)
            .query(c)
            .expect("take the Lua guard lock");
        LUA_TOKEN.to_string()
    }
}
