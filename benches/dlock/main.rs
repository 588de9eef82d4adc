//! dlock against its baselines, in the same run on the same server, as ratios.
//!
//! `make bench` (or `cargo bench --bench dlock`) starts its own redis-server with the module
//! and measures, in interleaved rounds with medians:
//! - throughput with `redis-benchmark` (50 connections, random keys), unpipelined and
//!   pipelined: DLOCK.ACQUIRE vs SET NX PX, DLOCK.RELEASE vs the EVALSHA compare-and-delete,
//!   DLOCK.EXTEND vs the EVALSHA compare-and-pexpire, GET as the floor; plus the server's
//!   CPU time per operation, which is steadier than throughput on a shared machine;
//! - memory per held lock at 1M locks vs SET NX PX string locks of the same key and owner
//!   sizes, and what is left after all are released;
//! - contended hand-over on one key (16 and 64 contenders holding 1 ms, thinking 1 ms):
//!   utilization, grants/s, release-to-next-grant latency, fairness, against SET NX PX
//!   pollers retrying every 50 ms (redsync's default), every 1 ms, and without pause;
//! - expiry hand-over: how long after a lease ends its waiter gets the lock, with and
//!   without a million unrelated keys carrying TTLs, against a 50 ms poller;
//! - scaling: acquire/release throughput with 1k, 100k and 1M locks held, and hand-over
//!   cost with 1, 100 and 10k waiters queued;
//! - holders: the server's time per command with 1k, 10k and 100k holders of one key, a
//!   RELEASE handing over to 1k and 10k queued readers, and the worst PING while 10k and 50k
//!   SESSION holds of a closed connection end and while 100k keys' leases end together;
//! - clients: the contended hand-over through the Python client (16 processes) next to
//!   python-redis-lock, pottery and redis-py's `Lock`, and through the Rust client next to
//!   the raw commands; the CPU and commands/s of keeping 1,000 leases alive;
//! - quorum: acquire+release cycles of the Rust and Python clients' `QuorumLock` on 3 and 5
//!   servers against pottery's Redlock and node-redlock on the same servers.
//!
//! It prints a table and writes the same figures to `target/bench/latest.json`, and the
//! contention, expiry and throughput sections draw their charts beside it (`*.svg`).
//! `-- --smoke` runs everything on tiny sizes in seconds (CI uses it to keep this working);
//! `-- --only SECTION` runs one section at full size (`--only` alone lists them), `-- --rounds
//! N` takes N rounds where a section takes rounds (3 by default). Each section
//! is announced with what it runs and how long it took last time, and reports its progress
//! every 10 s.

mod charts;
mod clients;
mod cluster;
#[path = "../../tests/common/mod.rs"]
mod common;
mod contention;
mod expiry;
mod holders;
mod instructions;
mod memory;
mod modes;
mod quorum;
mod report;
mod scaling;
mod throughput;

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use common::{Connection, Server, cmd};

/// A fixed 32-byte owner, the size of a generated one.
pub const OWNER: &str = "0123456789abcdef0123456789abcdef";
pub const TTL_MS: i64 = 600_000;

#[derive(Clone, Copy)]
pub struct Sizes {
    pub rounds: usize,
    /// Random keys for the throughput runs.
    pub keyspace: u64,
    pub requests_pipelined: u64,
    pub requests_unpipelined: u64,
    pub memory_locks: u64,
    /// How long each contended run lasts, and with how many contenders.
    pub contention_ms: u64,
    pub contenders: &'static [usize],
    /// At most this many contended rounds; from `rounds` on, they stop once two consecutive
    /// medians agree.
    pub contention_max_rounds: usize,
    /// Unrelated keys with TTLs around the expiry hand-over, and rounds of it.
    pub expiry_filler: u64,
    pub expiry_rounds: usize,
    /// Held locks around the scaling runs, and waiters queued behind a hand-over.
    pub held: &'static [u64],
    pub queued: &'static [usize],
    pub handovers: usize,
    /// Holders of one key, calls of each command measured at each size, readers queued
    /// behind one writer, SESSION holds of one connection, keys whose leases end together.
    pub holders: &'static [usize],
    pub holder_ops: usize,
    pub readers: &'static [usize],
    pub session_holds: &'static [usize],
    pub due_keys: usize,
    /// Contender processes of the Python clients' runs; leases kept alive at once, and their
    /// ttl; whether third-party baselines may be installed (not by the smoke run, which must
    /// not need the network).
    pub python_contenders: usize,
    pub keepalive_leases: usize,
    pub keepalive_ttl_ms: u64,
    pub install_baselines: bool,
    /// Requests a callgrind'ed server serves to warm, then as many to count.
    pub instruction_requests: u64,
    /// Server processes each instruction count is the median of.
    pub instruction_processes: usize,
}

const FULL: Sizes = Sizes {
    rounds: 3,
    keyspace: 1_000_000,
    requests_pipelined: 1_000_000,
    requests_unpipelined: 200_000,
    memory_locks: 1_000_000,
    contention_ms: 3_000,
    contenders: &[16, 64],
    contention_max_rounds: 6,
    expiry_filler: 1_000_000,
    expiry_rounds: 5,
    held: &[1_000, 100_000, 1_000_000],
    queued: &[1, 100, 10_000],
    handovers: 2_000,
    holders: &[1_000, 10_000, 100_000],
    holder_ops: 20_000,
    readers: &[1_000, 10_000],
    session_holds: &[10_000, 50_000],
    due_keys: 100_000,
    python_contenders: 16,
    keepalive_leases: 1_000,
    keepalive_ttl_ms: 10_000,
    install_baselines: true,
    instruction_requests: 20_000,
    instruction_processes: 3,
};

const SMOKE: Sizes = Sizes {
    rounds: 1,
    keyspace: 2_000,
    requests_pipelined: 4_000,
    requests_unpipelined: 1_000,
    memory_locks: 5_000,
    contention_ms: 200,
    contenders: &[4],
    contention_max_rounds: 2,
    expiry_filler: 1_000,
    expiry_rounds: 1,
    held: &[100, 1_000],
    queued: &[1, 10],
    handovers: 50,
    holders: &[100, 1_000],
    holder_ops: 300,
    readers: &[10, 100],
    session_holds: &[200, 1_000],
    due_keys: 1_000,
    python_contenders: 4,
    keepalive_leases: 50,
    keepalive_ttl_ms: 600,
    install_baselines: false,
    instruction_requests: 320,
    instruction_processes: 1,
};

/// Hold `count` locks `{prefix}{i:0width}` the way each side takes them.
pub fn populate(c: &mut Connection, dlock: bool, prefix: &str, width: usize, count: u64) {
    let take = if dlock {
        "redis.call('DLOCK.ACQUIRE', k, ARGV[3], ARGV[4])"
    } else {
        "redis.call('SET', k, ARGV[3], 'NX', 'PX', ARGV[4])"
    };
    for_each_key(c, take, prefix, width, count);
}

/// Run the Lua statement `body` for every key `{prefix}{i:0width}`, i < count, with `k` the
/// key, `ARGV[3]` the owner and `ARGV[4]` the lease, in chunks short enough not to stall the
/// server for long.
pub fn for_each_key(c: &mut Connection, body: &str, prefix: &str, width: usize, count: u64) {
    let script = format!(
        "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do \
           local k = ARGV[5] .. string.format('%0{width}d', i) {body} end"
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
            .expect("script over the keys");
        from = to + 1;
    }
}

/// A server with the module, configured for the benchmark (no AOF, long scripts, and room
/// for the hand-over's 10k waiting connections).
pub fn bench_server() -> Server {
    Server::with_config(&[
        ("appendonly", "no"),
        ("lua-time-limit", "60000"),
        ("maxclients", "15000"),
    ])
}

pub fn flushall(c: &mut Connection) {
    let _: () = cmd("FLUSHALL").arg("SYNC").query(c).expect("FLUSHALL");
}

/// What one section runs, for its announcement and `--only`'s list.
struct Section {
    name: &'static str,
    what: &'static str,
    run: fn(&Server, &mut Connection, &Sizes, &mut Vec<report::Figure>),
}

const SECTIONS: [Section; 11] = [
    Section {
        name: "throughput",
        what: "redis-benchmark: ACQUIRE/RELEASE/EXTEND/GUARD vs SET NX PX and the EVALSHA scripts",
        run: throughput::throughput,
    },
    Section {
        name: "instructions",
        what: "callgrind: instructions and estimated cycles per ACQUIRE, FLOOR.ACQUIRE and SET NX PX request",
        run: |_, _, sizes, figures| instructions::instructions(sizes, figures),
    },
    Section {
        name: "memory",
        what: "bytes per held lock at 1M locks vs SET NX PX strings",
        run: |_, c, sizes, figures| memory::memory(c, sizes, figures),
    },
    Section {
        name: "contention",
        what: "contended hand-over on one key vs SET NX PX pollers",
        run: contention::contention,
    },
    Section {
        name: "expiry",
        what: "how soon a waiter gets a lock whose lease ended vs a poller",
        run: expiry::expiry,
    },
    Section {
        name: "scaling",
        what: "throughput with 1k-1M locks held, hand-over with 1-10k waiters queued",
        run: scaling::scaling,
    },
    Section {
        name: "modes",
        what: "shared locks and semaphores vs Redisson-style Lua",
        run: modes::modes,
    },
    Section {
        name: "holders",
        what: "per-command cost with 1k-100k holders of one key, mass hand-overs, worst PING",
        run: holders::holders,
    },
    Section {
        name: "cluster",
        what: "a local Redis Cluster: commands routed by key",
        run: cluster::cluster,
    },
    Section {
        name: "clients",
        what: "contended hand-over through the Python and Rust clients vs other libraries",
        run: clients::clients,
    },
    Section {
        name: "quorum",
        what: "QuorumLock on 3 and 5 servers vs pottery's Redlock and node-redlock",
        run: quorum::quorum,
    },
];

/// How long each section took in the last full run (`target/bench/durations.txt`, one
/// `name seconds` line each), for the next run's announcements.
fn durations_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/durations.txt")
}

fn last_durations() -> HashMap<String, u64> {
    std::fs::read_to_string(durations_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (name, seconds) = line.split_once(' ')?;
            Some((name.to_string(), seconds.trim().parse().ok()?))
        })
        .collect()
}

/// Run `section`, printing a line of progress every 10 s while it runs; how long it took.
fn timed(
    section: &Section,
    server: &Server,
    c: &mut Connection,
    sizes: &Sizes,
    figures: &mut Vec<report::Figure>,
) -> Duration {
    let started = Instant::now();
    let (done, ticks) = mpsc::channel::<()>();
    let name = section.name;
    let ticker = thread::spawn(move || {
        while let Err(RecvTimeoutError::Timeout) = ticks.recv_timeout(Duration::from_secs(10)) {
            eprintln!("   {name}: {} s so far", started.elapsed().as_secs());
        }
    });
    (section.run)(server, c, sizes, figures);
    drop(done);
    let _ = ticker.join();
    started.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args.get(i + 1).cloned().unwrap_or_default());
    if let Some(name) = only.as_deref()
        && !SECTIONS.iter().any(|s| s.name == name)
    {
        eprintln!("--only takes one of these sections:");
        for section in &SECTIONS {
            eprintln!("  {:<11} {}", section.name, section.what);
        }
        std::process::exit(2);
    }
    let mut sizes = if smoke { SMOKE } else { FULL };
    if let Some(i) = args.iter().position(|a| a == "--rounds") {
        match args.get(i + 1).and_then(|n| n.parse::<usize>().ok()) {
            Some(rounds) if rounds > 0 => sizes.rounds = rounds,
            _ => {
                eprintln!("--rounds takes a number of rounds, 1 or more");
                std::process::exit(2);
            }
        }
    }
    let sizes = &sizes;
    let server = bench_server();
    let mut c = server.client();
    let version = report::redis_version(&mut c);

    let expected = last_durations();
    let mut took = Vec::new();
    let mut figures = vec![];
    let started = Instant::now();
    let chosen = SECTIONS
        .iter()
        .filter(|s| only.as_deref().is_none_or(|o| o == s.name));
    for section in chosen {
        let estimate = match expected.get(section.name) {
            _ if smoke => "smoke sizes: seconds".to_string(),
            Some(seconds) => format!("about {seconds} s, as last time"),
            None => "no estimate yet: this run records one".to_string(),
        };
        eprintln!("== {}: {} ({estimate})", section.name, section.what);
        let elapsed = timed(section, &server, &mut c, sizes, &mut figures);
        eprintln!("   {} done in {:.0} s", section.name, elapsed.as_secs_f64());
        took.push((section.name, elapsed.as_secs_f64().round() as u64));
    }
    eprintln!(
        "all sections done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if !smoke {
        let mut durations = expected;
        durations.extend(took.iter().map(|(name, s)| (name.to_string(), *s)));
        let mut lines: Vec<String> = durations.iter().map(|(n, s)| format!("{n} {s}")).collect();
        lines.sort();
        if let Some(dir) = durations_file().parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(durations_file(), lines.join("\n") + "\n");
    }

    let machine = format!("{}, Redis {version}", report::machine());
    let table = report::print_table(&figures);
    println!(
        "dlock benchmark ({}) on {machine}\n\n{table}",
        if smoke { "smoke" } else { "full" }
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(match (smoke, &only) {
        (true, _) => "smoke.json".to_string(),
        (false, Some(section)) => format!("{section}.json"),
        (false, None) => "latest.json".to_string(),
    });
    std::fs::write(&file, report::to_json(&figures, &machine)).expect("write the JSON results");
    println!("written to {}", file.display());
}
