//! Many holders on one key (issue 20): what each command costs the server with 1k, 10k and
//! 100k holders of one shared lock and of one semaphore, from `INFO commandstats` (the
//! server's own time per call, without the network); what one `RELEASE` costs when it lets
//! 1k or 10k queued readers in; and how long the server stalls — the worst round trip of a
//! client sending `PING` all along — while the holds of a closed `SESSION` connection end,
//! and while the leases of 100k keys end in the same millisecond.
//!
//! Targets: a command at 100k holders costs at most twice what it costs at 1k; handing over
//! to 10x the readers costs at most 10x; no `PING` waits more than 50 ms.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::common::{Connection, Server, Value, cmd, wait_until, wait_until_within};
use super::report::{Figure, Target, median};
use super::{Sizes, TTL_MS, flushall};

/// Commands per pipeline while filling a key and while measuring.
const BATCH: usize = 1_000;
const PIPELINE: usize = 100;
/// Large enough that the semaphore never refuses a permit here.
const SEMAPHORE_LIMIT: u32 = 1_000_000;
const MAX_PING_MS: f64 = 50.0;

pub fn holders(server: &Server, c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let limit = SEMAPHORE_LIMIT.to_string();
    for (kind, mode) in [
        ("shared lock", vec!["SHARED"]),
        ("semaphore", vec!["SEMAPHORE", limit.as_str()]),
    ] {
        per_op(c, sizes, kind, &mode, figures);
    }
    let smallest = sizes.readers.first().copied().unwrap_or(0);
    // Rounds alternate the sizes and the two hand-overs, so a machine that gets busier affects
    // each alike; each figure is the median of its rounds.
    let mut rounds: Vec<[Vec<Handover>; 2]> =
        sizes.readers.iter().map(|_| [vec![], vec![]]).collect();
    for _ in 0..sizes.rounds {
        for (&readers, [dlock, native]) in sizes.readers.iter().zip(rounds.iter_mut()) {
            dlock.push(handover(server, c, readers, Handing::Release));
            native.push(handover(server, c, readers, Handing::Push));
        }
    }
    let mut base = None;
    for (&readers, [dlock, native]) in sizes.readers.iter().zip(&rounds) {
        let (h, n) = (Handover::median(dlock), Handover::median(native));
        let (base, native_base) = *base.get_or_insert((h.cpu_ms, n.cpu_ms));
        figures.push(Figure {
            name: format!(
                "RELEASE of a writer handing over to {readers} queued readers, server CPU ms \
                 (release, grants, replies), vs {smallest} readers"
            ),
            unit: "ms",
            dlock: h.cpu_ms,
            baseline: Some(base),
            // Linear: 10x the readers may cost 10x.
            target: Some(Target::RatioAtMost(readers as f64 / smallest.max(1) as f64)),
            others: vec![
                ("of which in the kernel (about) ms".into(), h.sys_ms),
                ("RELEASE alone us".into(), h.release_us),
                ("wall ms to the last reply".into(), h.wall_ms),
                (
                    format!("Redis's own hand-over to {readers} vs {smallest} clients"),
                    n.cpu_ms / native_base,
                ),
            ],
        });
        figures.push(Figure {
            name: format!(
                "the same hand-over to {readers} readers vs Redis's own: one RPUSH of \
                 {readers} elements to {readers} clients blocked in BLPOP, server CPU ms"
            ),
            unit: "ms",
            dlock: h.cpu_ms,
            baseline: Some(n.cpu_ms),
            target: None,
            others: vec![("of which in the kernel (about) ms".into(), n.sys_ms)],
        });
        figures.push(Figure {
            name: format!("worst PING (ms) while a RELEASE hands over to {readers} queued readers"),
            unit: "ms",
            dlock: h.worst_ping_ms,
            baseline: None,
            target: Some(Target::AtMost(MAX_PING_MS)),
            others: vec![],
        });
    }
    for &holds in sizes.session_holds {
        let (worst, ended_ms) = session_disconnect(server, c, holds);
        figures.push(Figure {
            name: format!(
                "worst PING (ms) while a closed connection's {holds} SESSION holds on one key end"
            ),
            unit: "ms",
            dlock: worst,
            baseline: None,
            target: Some(Target::AtMost(MAX_PING_MS)),
            others: vec![("all ended after ms".into(), ended_ms)],
        });
    }
    for (label, timer) in [
        ("module timer: 2 shared holds, one ending", true),
        ("key expiry: exclusive locks", false),
    ] {
        let keys = sizes.due_keys;
        let (worst, ended_ms) = due_together(server, c, keys, timer);
        figures.push(Figure {
            name: format!("worst PING (ms) while {keys} keys' leases end in the same ms ({label})"),
            unit: "ms",
            dlock: worst,
            baseline: None,
            target: Some(Target::AtMost(MAX_PING_MS)),
            others: vec![("all ended after ms".into(), ended_ms)],
        });
    }
}

/// Server time per call of each command at each size of one key, against the smallest size.
/// Every size has its own key, filled first; then the rounds go over the sizes in turn, so
/// that a busy spell of a shared machine weighs on all of them alike.
fn per_op(c: &mut Connection, sizes: &Sizes, kind: &str, mode: &[&str], figures: &mut Vec<Figure>) {
    let names = ["ACQUIRE", "RELEASE", "EXTEND", "INFO", "GUARD"];
    let smallest = sizes.holders.first().copied().unwrap_or(0);
    flushall(c);
    let keys: Vec<(usize, String, Vec<i64>)> = sizes
        .holders
        .iter()
        .map(|&count| {
            let key = format!("many:{count}");
            let tokens = fill(c, &key, mode, count);
            (count, key, tokens)
        })
        .collect();
    let mut costs: HashMap<(usize, &str), Vec<f64>> = HashMap::new();
    for _ in 0..sizes.rounds {
        for (count, key, tokens) in &keys {
            let round = measure(c, key, mode, tokens, sizes.holder_ops);
            for name in names {
                costs.entry((*count, name)).or_default().push(round[name]);
            }
        }
    }
    let mut base: HashMap<&str, f64> = HashMap::new();
    for (count, key, _) in &keys {
        let (full_us, default_bytes, full_bytes) = full_listing(c, key);
        for name in names {
            let cost = median(costs.remove(&(*count, name)).unwrap_or_default());
            let base = *base.entry(name).or_insert(cost);
            figures.push(Figure {
                name: format!(
                    "{name} server us/call, {count} holders of one {kind}, vs {smallest} holders"
                ),
                unit: "us",
                dlock: cost,
                baseline: Some(base),
                target: Some(Target::RatioAtMost(2.0)),
                others: vec![],
            });
        }
        figures.push(Figure {
            name: format!("INFO reply bytes, {count} holders of one {kind}: default vs HOLDERS 0"),
            unit: "bytes",
            dlock: default_bytes,
            baseline: Some(full_bytes),
            target: None,
            others: vec![("HOLDERS 0 server us/call".into(), full_us)],
        });
    }
    flushall(c);
}

/// `count` holders `h{i}` of `key` in `mode`; their tokens.
fn fill(c: &mut Connection, key: &str, mode: &[&str], count: usize) -> Vec<i64> {
    let mut tokens = Vec::with_capacity(count);
    for from in (0..count).step_by(BATCH) {
        let mut pipe = redis::pipe();
        for i in from..(from + BATCH).min(count) {
            pipe.cmd("DLOCK.ACQUIRE")
                .arg(key)
                .arg(format!("h{i}"))
                .arg(TTL_MS)
                .arg(mode);
        }
        let granted: Vec<i64> = pipe.query(c).expect("fill the key");
        tokens.extend(granted);
    }
    let count_now = info_int(c, key, "holders_count");
    assert_eq!(count_now, count as i64, "holders of {key}");
    tokens
}

/// One round of `ops` calls of each command on a key of many holders, pipelined; the
/// server's microseconds per call of each. The holders stay as many: each ACQUIRE of a new
/// owner is released again, EXTEND and GUARD pick existing holders.
fn measure(
    c: &mut Connection,
    key: &str,
    mode: &[&str],
    tokens: &[i64],
    ops: usize,
) -> HashMap<&'static str, f64> {
    let _: () = cmd("CONFIG").arg("RESETSTAT").query(c).expect("RESETSTAT");
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for from in (0..ops).step_by(PIPELINE / 2) {
        let mut pipe = redis::pipe();
        for j in from..(from + PIPELINE / 2).min(ops) {
            let owner = format!("x{j}");
            pipe.cmd("DLOCK.ACQUIRE")
                .arg(key)
                .arg(&owner)
                .arg(TTL_MS)
                .arg(mode)
                .ignore();
            pipe.cmd("DLOCK.RELEASE").arg(key).arg(&owner).ignore();
        }
        let _: () = pipe.query(c).expect("acquire and release");
    }
    for from in (0..ops).step_by(PIPELINE) {
        let mut pipe = redis::pipe();
        for _ in from..(from + PIPELINE).min(ops) {
            let i = next(tokens.len());
            pipe.cmd("DLOCK.EXTEND")
                .arg(key)
                .arg(format!("h{i}"))
                .arg(TTL_MS)
                .ignore();
        }
        let _: () = pipe.query(c).expect("extend");
    }
    for from in (0..ops).step_by(PIPELINE) {
        let mut pipe = redis::pipe();
        for _ in from..(from + PIPELINE).min(ops) {
            pipe.cmd("DLOCK.INFO").arg(key).ignore();
        }
        let _: () = pipe.query(c).expect("info");
    }
    for from in (0..ops).step_by(PIPELINE) {
        let mut pipe = redis::pipe();
        for _ in from..(from + PIPELINE).min(ops) {
            let token = tokens[next(tokens.len())];
            pipe.cmd("DLOCK.GUARD")
                .arg(key)
                .arg(token)
                .arg("GET")
                .arg("guarded")
                .ignore();
        }
        let _: () = pipe.query(c).expect("guard");
    }
    let stats = commandstats(c);
    let per_call = |command: &str| {
        let (calls, usec) = stats.get(command).copied().unwrap_or((0, 0));
        usec as f64 / calls.max(1) as f64
    };
    HashMap::from([
        ("ACQUIRE", per_call("dlock.acquire")),
        ("RELEASE", per_call("dlock.release")),
        ("EXTEND", per_call("dlock.extend")),
        ("INFO", per_call("dlock.info")),
        ("GUARD", per_call("dlock.guard")),
    ])
}

/// Server microseconds of one `DLOCK.INFO key HOLDERS 0`, and the bytes the default reply
/// and the full one take on the wire.
fn full_listing(c: &mut Connection, key: &str) -> (f64, f64, f64) {
    let default_bytes = reply_bytes(c, &cmd("DLOCK.INFO").arg(key).clone());
    let full = cmd("DLOCK.INFO").arg(key).arg("HOLDERS").arg(0).clone();
    let full_bytes = reply_bytes(c, &full);
    let _: () = cmd("CONFIG").arg("RESETSTAT").query(c).expect("RESETSTAT");
    for _ in 0..3 {
        let _: Value = full.query(c).expect("INFO HOLDERS 0");
    }
    let (calls, usec) = commandstats(c).get("dlock.info").copied().unwrap_or((0, 0));
    (usec as f64 / calls.max(1) as f64, default_bytes, full_bytes)
}

/// Bytes of `command`'s reply, from the server's output counter around it; the counter's own
/// replies (`INFO stats`, of nearly equal sizes) are taken out.
fn reply_bytes(c: &mut Connection, command: &redis::Cmd) -> f64 {
    let out = |c: &mut Connection| -> i64 { info_field(c, "stats", "total_net_output_bytes") };
    let before = out(c);
    let between = out(c);
    let _: Value = command.query(c).expect("the measured command");
    let after = out(c);
    ((after - between) - (between - before)) as f64
}

struct Handover {
    /// The server main thread's CPU time from before the RELEASE until every reader has its
    /// grant: the release, the grants (Redis 7.0 does not count a module's unblocked clients
    /// in `commandstats`) and writing their replies.
    cpu_ms: f64,
    /// About how much of it was in the kernel (sending the replies over loopback TCP): the
    /// kernel's share of INFO's CPU times, which are sampled at the tick.
    sys_ms: f64,
    release_us: f64,
    wall_ms: f64,
    worst_ping_ms: f64,
}

impl Handover {
    fn median(runs: &[Handover]) -> Handover {
        let of = |field: fn(&Handover) -> f64| median(runs.iter().map(field).collect());
        Handover {
            cpu_ms: of(|h| h.cpu_ms),
            sys_ms: of(|h| h.sys_ms),
            release_us: of(|h| h.release_us),
            wall_ms: of(|h| h.wall_ms),
            worst_ping_ms: of(|h| h.worst_ping_ms),
        }
    }
}

/// What ends a hand-over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handing {
    /// A writer holds a key, `readers` connections wait for it in SHARED mode, and its
    /// RELEASE lets them all in at once.
    Release,
    /// Redis's own hand-over, for comparison: `readers` clients blocked in `BLPOP` on one
    /// list, and one `RPUSH` of as many elements.
    Push,
}

/// One hand-over to `readers` waiting connections, open throughout (`maxclients` and the
/// file limit of both processes must allow them: main.rs sets 15000 clients).
fn handover(server: &Server, c: &mut Connection, readers: usize, handing: Handing) -> Handover {
    const KEY: &str = "readers";
    flushall(c);
    if handing == Handing::Release {
        let _: i64 = cmd("DLOCK.ACQUIRE")
            .arg(KEY)
            .arg("writer")
            .arg(TTL_MS)
            .query(c)
            .expect("the writer");
    }
    let waiting = |c: &mut Connection| match handing {
        Handing::Release => info_int(c, KEY, "waiters"),
        Handing::Push => info_field(c, "clients", "blocked_clients"),
    };
    let mut conns: Vec<Connection> = Vec::with_capacity(readers);
    for i in 0..readers {
        let mut r = server.client();
        let wait = match handing {
            Handing::Release => cmd("DLOCK.ACQUIRE")
                .arg(KEY)
                .arg(format!("r{i}"))
                .arg(TTL_MS)
                .arg("SHARED")
                .arg("WAIT")
                .arg(0)
                .get_packed_command(),
            Handing::Push => cmd("BLPOP").arg(KEY).arg(0).get_packed_command(),
        };
        r.send_packed_command(&wait).expect("queue a reader");
        conns.push(r);
        if i % BATCH == BATCH - 1 {
            wait_until("readers to queue", || waiting(c) == i as i64 + 1);
        }
    }
    wait_until("every reader to queue", || waiting(c) == readers as i64);
    // The probe's PINGs add a few microseconds each to the CPU time, well under 1%.
    let probe = Probe::start(server);
    thread::sleep(Duration::from_millis(20));
    let _: () = cmd("CONFIG").arg("RESETSTAT").query(c).expect("RESETSTAT");
    let (user_before, sys_before) = server_cpu(c);
    let cpu_before = server_thread_cpu_ms(server);
    let start = Instant::now();
    let (command, answered) = match handing {
        Handing::Release => {
            let released: i64 = cmd("DLOCK.RELEASE")
                .arg(KEY)
                .arg("writer")
                .query(c)
                .expect("release");
            ("dlock.release", released == 1)
        }
        Handing::Push => {
            let pushed: i64 = cmd("RPUSH")
                .arg(KEY)
                .arg((0..readers).collect::<Vec<_>>())
                .query(c)
                .expect("push");
            ("rpush", pushed == readers as i64)
        }
    };
    assert!(answered, "{command} did not hand over");
    for r in &mut conns {
        let reply = r.recv_response().expect("a reader's reply");
        let granted = match handing {
            Handing::Release => matches!(reply, Value::Int(_)),
            Handing::Push => matches!(&reply, Value::Array(pair) if pair.len() == 2),
        };
        assert!(granted, "a reader got {reply:?}");
    }
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let worst_ping_ms = probe.finish();
    let cpu_ms = server_thread_cpu_ms(server) - cpu_before;
    let (user_after, sys_after) = server_cpu(c);
    let (user, sys) = (user_after - user_before, sys_after - sys_before);
    let sys_ms = cpu_ms * sys / (user + sys).max(f64::EPSILON);
    let release_us = commandstats(c).get(command).map_or(0, |&(_, usec)| usec) as f64;
    match handing {
        Handing::Release => assert_eq!(info_int(c, KEY, "holders_count"), readers as i64),
        Handing::Push => assert_eq!(info_field(c, "clients", "blocked_clients"), 0),
    }
    drop(conns);
    flushall(c);
    Handover {
        cpu_ms,
        sys_ms,
        release_us,
        wall_ms,
        worst_ping_ms,
    }
}

/// One connection takes `holds` SESSION holds of one key and closes. The worst PING while
/// they end, and how long they took to end.
fn session_disconnect(server: &Server, c: &mut Connection, holds: usize) -> (f64, f64) {
    const KEY: &str = "session";
    flushall(c);
    let mut holder = server.client();
    for from in (0..holds).step_by(BATCH) {
        let mut pipe = redis::pipe();
        for i in from..(from + BATCH).min(holds) {
            pipe.cmd("DLOCK.ACQUIRE")
                .arg(KEY)
                .arg(format!("s{i}"))
                .arg(TTL_MS)
                .arg("SHARED")
                .arg("SESSION")
                .ignore();
        }
        let _: () = pipe.query(&mut holder).expect("session holds");
    }
    assert_eq!(info_int(c, KEY, "holders_count"), holds as i64);
    let probe = Probe::start(server);
    thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    drop(holder);
    wait_until_within("the session holds to end", Duration::from_secs(60), || {
        let reply: Value = cmd("DLOCK.INFO").arg(KEY).query(c).expect("INFO");
        reply == Value::Nil
    });
    let ended_ms = start.elapsed().as_secs_f64() * 1e3;
    thread::sleep(Duration::from_millis(50));
    (probe.finish(), ended_ms)
}

/// `keys` keys whose leases all end at one millisecond: with `timer`, each has a second
/// shared hold that lasts, so the module's timer ends the first; otherwise each is an
/// exclusive lock that Redis expires with its key. The worst PING from just before that
/// millisecond until every lease ended, and how long after it they all had.
fn due_together(server: &Server, c: &mut Connection, keys: usize, timer: bool) -> (f64, f64) {
    flushall(c);
    // The leases are set from the server's own clock inside the script, so that each ends at
    // `due` exactly, however long the keys take to create.
    let script = "\
        local due = tonumber(ARGV[3]) \
        for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do \
          local k = 'due:' .. i \
          local t = redis.call('TIME') \
          local ttl = due - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) \
          if ARGV[4] == '1' then \
            redis.call('DLOCK.ACQUIRE', k, 'ends', ttl, 'SHARED') \
            redis.call('DLOCK.ACQUIRE', k, 'stays', 600000, 'SHARED') \
          else \
            redis.call('DLOCK.ACQUIRE', k, 'ends', ttl) \
          end \
        end";
    let lead = 2_000 + keys as i64 / 20;
    let due = unix_ms() + lead;
    for from in (0..keys).step_by(10_000) {
        let to = (from + 10_000).min(keys) - 1;
        let _: () = cmd("EVAL")
            .arg(script)
            .arg(0)
            .arg(from)
            .arg(to)
            .arg(due)
            .arg(if timer { "1" } else { "0" })
            .query(c)
            .expect("keys due together");
    }
    assert!(
        unix_ms() < due - 200,
        "the keys took longer to create than the {lead} ms lead"
    );
    let expired_before = info_field(c, "dlock", "leases_expired");
    thread::sleep(Duration::from_millis((due - unix_ms() - 100).max(0) as u64));
    let probe = Probe::start(server);
    let finished = || -> bool {
        if timer {
            info_field(c, "dlock", "leases_expired") - expired_before >= keys as i64
        } else {
            let size: i64 = cmd("DBSIZE").query(c).expect("DBSIZE");
            size == 0
        }
    };
    wait_until_within("every lease to end", Duration::from_secs(120), finished);
    let ended_ms = (unix_ms() - due) as f64;
    thread::sleep(Duration::from_millis(50));
    let worst = probe.finish();
    flushall(c);
    (worst, ended_ms)
}

/// A client sending PING every millisecond on its own connection; its slowest round trip.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<f64>,
}

impl Probe {
    fn start(server: &Server) -> Probe {
        let mut p = server.client();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut worst = 0.0f64;
            while !stopped.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let _: String = cmd("PING").query(&mut p).expect("PING");
                worst = worst.max(sent.elapsed().as_secs_f64() * 1e3);
                thread::sleep(Duration::from_millis(1));
            }
            worst
        });
        Probe { stop, thread }
    }

    fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the PING probe")
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// (calls, usec) of every command in `INFO commandstats`.
fn commandstats(c: &mut Connection) -> HashMap<String, (u64, u64)> {
    let text: String = cmd("INFO")
        .arg("commandstats")
        .query(c)
        .expect("INFO commandstats");
    text.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| -> Option<u64> {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_string(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// An integer field of an `INFO` section (for `dlock`, whatever prefix the module's fields
/// carry).
fn info_field(c: &mut Connection, section: &str, name: &str) -> i64 {
    let text: String = cmd("INFO").arg(section).query(c).expect("INFO");
    text.lines()
        .find_map(|line| {
            let (field, value) = line.split_once(':')?;
            (field == name || field.ends_with(&format!("_{name}")))
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("INFO {section} has no {name}"))
}

/// An integer field of the default `DLOCK.INFO key` (0 when the key is free).
fn info_int(c: &mut Connection, key: &str, name: &str) -> i64 {
    let reply: Value = cmd("DLOCK.INFO").arg(key).query(c).expect("DLOCK.INFO");
    let Value::Array(fields) = reply else {
        return 0;
    };
    fields
        .chunks(2)
        .find_map(|pair| match pair {
            [Value::BulkString(n), Value::Int(v)] if n == name.as_bytes() => Some(*v),
            _ => None,
        })
        .unwrap_or_else(|| panic!("DLOCK.INFO {key} has no {name}"))
}

/// The server's main thread's time on a CPU so far, in ms, from the scheduler's nanosecond
/// count (`/proc/PID/task/PID/schedstat`): `getrusage`, which INFO reports, samples at the
/// kernel's tick, too coarse for a hand-over that takes 20 ms.
fn server_thread_cpu_ms(server: &Server) -> f64 {
    let pid = server.pid();
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e6)
}

/// Server CPU seconds so far (user + system), as INFO reports them (sampled at the tick).
fn server_cpu(c: &mut Connection) -> (f64, f64) {
    let text: String = cmd("INFO").arg("cpu").query(c).expect("INFO cpu");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field("used_cpu_user:"), field("used_cpu_sys:"))
}
