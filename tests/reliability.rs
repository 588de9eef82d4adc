//! The reliability suite: a safety checker under contention with paused clients, crashes
//! under load, a fuzzer of malformed commands, churn of waiters and cycles.
//!
//! `make test` runs the short version. `make torture` (DLOCK_TORTURE=1) runs the long one and
//! prints its figures (`-- --nocapture`).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const EPOCH_MS: i64 = 1_735_689_600_000;

fn torture() -> bool {
    std::env::var_os("DLOCK_TORTURE").is_some()
}

/// Where the safety checker's clients write with their tokens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fence {
    /// An in-process resource that refuses tokens below the highest it accepted (the
    /// external-resource pattern).
    Resource,
    /// `DLOCK.GUARD key token RPUSH log:key token`: Redis itself refuses any token that is not
    /// the live hold's.
    Guard,
}

/// The fenced resource: remembers the highest token it accepted per key and refuses lower
/// ones. In-process, so every write's outcome is recorded exactly.
#[derive(Default)]
struct Resource {
    highest: HashMap<String, i64>,
    /// Every accepted write's token per key, in the order the resource accepted them.
    log: HashMap<String, Vec<i64>>,
    accepted: u64,
    rejected: u64,
}

impl Resource {
    fn write(&mut self, key: &str, token: i64) -> bool {
        let highest = self.highest.entry(key.to_string()).or_default();
        if token < *highest {
            self.rejected += 1;
            return false;
        }
        *highest = token;
        self.log.entry(key.to_string()).or_default().push(token);
        self.accepted += 1;
        true
    }

    /// Count a write Redis decided on (it keeps the log itself).
    fn count(&mut self, accepted: bool) {
        if accepted {
            self.accepted += 1;
        } else {
            self.rejected += 1;
        }
    }
}

/// A write through `DLOCK.GUARD`: whether Redis accepted it.
fn guarded_write(c: &mut Connection, key: &str, token: i64) -> bool {
    let reply: RedisResult<i64> = cmd("DLOCK.GUARD")
        .arg(key)
        .arg(token)
        .arg("RPUSH")
        .arg(format!("log:{key}"))
        .arg(token)
        .query(c);
    match reply {
        Ok(_) => true,
        Err(e) => {
            let text = format!("{} {}", e.code().unwrap_or(""), e.detail().unwrap_or(""));
            assert!(
                text.starts_with("ERR fenced write refused:"),
                "guarded write: {text}"
            );
            false
        }
    }
}

#[derive(Clone)]
struct Grant {
    key: String,
    client: usize,
    token: i64,
    ttl: i64,
    sent: Instant,
    received: Instant,
    release_sent: Instant,
}

/// The server millisecond a token was issued at (8192 ticks per ms while the wall clock
/// leads, which these runs never outpace).
fn issued_ms(token: i64) -> i64 {
    token / 8192 + EPOCH_MS
}

/// A grant one contender got, before it holds and releases the lock.
struct Taken<T> {
    client: usize,
    owner: String,
    key: String,
    ttl: i64,
    token: i64,
    sent: Instant,
    received: Instant,
    /// What the request asked for besides the key (its mode, say).
    asked: T,
}

/// `clients` contenders take `grants` grants between them: half block with `WAIT`, half
/// retry after a short sleep, every lease 20–50 ms. `ask` picks the key, the ACQUIRE words
/// after the lease, and what to remember of the request; `hold` works while the lock is held,
/// releases it (`release_now`) and returns the grant's record. Every contender must finish
/// within the deadline: no lost wake-up, no stuck waiter.
fn contend<T: 'static, R: Send + 'static>(
    server: &Server,
    clients: usize,
    grants: usize,
    seed: u64,
    ask: impl Fn(&mut Rng) -> (String, Vec<String>, T) + Send + Sync + 'static,
    hold: impl Fn(&mut Connection, &mut Rng, Taken<T>) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let (ask, hold) = (Arc::new(ask), Arc::new(hold));
    let records = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(if torture() { 600 } else { 60 });
    let per_client = grants.div_ceil(clients);
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let mut c = server.client();
            let (ask, hold, records) = (Arc::clone(&ask), Arc::clone(&hold), Arc::clone(&records));
            thread::spawn(move || {
                let mut rng = Rng::new(client as u64 + seed);
                let owner = format!("client-{client}");
                let blocking = client % 2 == 0;
                let mut done = 0;
                while done < per_client {
                    assert!(Instant::now() < deadline, "client {client} is stuck");
                    let (key, words, asked) = ask(&mut rng);
                    let ttl = 20 + rng.below(30) as i64;
                    let mut command = cmd("DLOCK.ACQUIRE");
                    command.arg(&key).arg(&owner).arg(ttl).arg(&words);
                    if blocking {
                        command.arg("WAIT").arg(2_000);
                    }
                    let sent = Instant::now();
                    let reply: Value = command.query(&mut c).expect("acquire");
                    let received = Instant::now();
                    let Value::Int(token) = reply else {
                        if !blocking {
                            thread::sleep(Duration::from_micros(200 + rng.below(800)));
                        }
                        continue;
                    };
                    let taken = Taken {
                        client,
                        owner: owner.clone(),
                        key,
                        ttl,
                        token,
                        sent,
                        received,
                        asked,
                    };
                    let record = hold(&mut c, &mut rng, taken);
                    records.lock().unwrap().push(record);
                    done += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join()
            .expect("every client finishes (no lost wake-up, no stuck waiter)");
    }
    std::mem::take(&mut *records.lock().unwrap())
}

/// Give back `key`; when the release was sent.
fn release_now(c: &mut Connection, key: &str, owner: &str) -> Instant {
    let sent = Instant::now();
    let _: i64 = cmd("DLOCK.RELEASE")
        .arg(key)
        .arg(owner)
        .query(c)
        .expect("release");
    sent
}

#[test]
fn safety_checker_finds_no_violation_under_contention_and_pauses() {
    safety_checker(Fence::Resource);
}

#[test]
fn guarded_writes_accept_no_stale_token_under_contention_and_pauses() {
    safety_checker(Fence::Guard);
}

fn safety_checker(fence: Fence) {
    let (clients, keys, grants_target): (usize, u64, usize) = if torture() {
        (48, 4, 100_000)
    } else {
        (32, 3, 1_500)
    };
    let server = Server::start();
    let resource = Arc::new(Mutex::new(Resource::default()));
    let ask = move |rng: &mut Rng| (format!("safety:{}", rng.below(keys)), vec![], ());
    let shared = Arc::clone(&resource);
    let hold = move |c: &mut Connection, rng: &mut Rng, taken: Taken<()>| {
        let (key, token) = (&taken.key, taken.token);
        // Claim the resource, then maybe stall past the lease (a GC pause), then write
        // again: that write must be refused if someone else got the lock.
        let write = |c: &mut Connection| match fence {
            Fence::Resource => shared.lock().unwrap().write(key, token),
            Fence::Guard => {
                let accepted = guarded_write(c, key, token);
                shared.lock().unwrap().count(accepted);
                accepted
            }
        };
        write(c);
        if rng.chance(10) {
            thread::sleep(Duration::from_millis(taken.ttl as u64 + 15));
            let accepted = write(c);
            // Through GUARD an ended lease alone refuses the write.
            assert!(
                fence == Fence::Resource || !accepted,
                "guarded write accepted after the lease ended"
            );
        } else {
            thread::sleep(Duration::from_micros(rng.below(300)));
            write(c);
        }
        Grant {
            release_sent: release_now(c, key, &taken.owner),
            key: taken.key,
            client: taken.client,
            token,
            ttl: taken.ttl,
            sent: taken.sent,
            received: taken.received,
        }
    };
    let history = contend(&server, clients, grants_target, 1, ask, hold);
    let mut resource = resource.lock().unwrap();
    if fence == Fence::Guard {
        // Redis's own log of accepted writes, in the order it ran them.
        let mut c = server.client();
        for key in 0..keys {
            let key = format!("safety:{key}");
            let log: Vec<i64> = cmd("LRANGE")
                .arg(format!("log:{key}"))
                .arg(0)
                .arg(-1)
                .query(&mut c)
                .unwrap();
            resource.log.insert(key, log);
        }
        let logged: usize = resource.log.values().map(Vec::len).sum();
        assert_eq!(logged as u64, resource.accepted);
    }

    // The resource never accepted a stale token: accepted tokens never go down.
    for (key, tokens) in &resource.log {
        assert!(
            tokens.windows(2).all(|w| w[0] <= w[1]),
            "stale write accepted on {key}"
        );
    }
    // Tokens never repeat.
    let mut seen = HashSet::new();
    for g in &history {
        assert!(seen.insert(g.token), "token {} issued twice", g.token);
    }
    let mut by_key: HashMap<&str, Vec<&Grant>> = HashMap::new();
    for g in &history {
        by_key.entry(&g.key).or_default().push(g);
    }
    let mut checked_pairs = 0u64;
    for grants in by_key.values_mut() {
        grants.sort_by_key(|g| g.token);
        for pair in grants.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            // Tokens increase in grant order: a grant asked for after another was received
            // carries a higher token.
            assert!(
                a.sent <= b.received,
                "token order disagrees with causality: {} after {}",
                a.token,
                b.token
            );
            // Mutual exclusion on the server's clock: if b was granted before a even sent its
            // release, a's lease had ended by then.
            let released_after = b.received < a.release_sent;
            if released_after {
                let lease_end = issued_ms(a.token) + a.ttl;
                assert!(
                    issued_ms(b.token) >= lease_end,
                    "{} granted to client {} at {} ms while client {}'s lease ran to {} ms",
                    b.key,
                    b.client,
                    issued_ms(b.token),
                    a.client,
                    lease_end
                );
            }
            checked_pairs += 1;
        }
    }
    let mode = match fence {
        Fence::Resource => "in-process resource",
        Fence::Guard => "DLOCK.GUARD",
    };
    println!(
        "safety ({mode}): {} grants on {} locks by {clients} clients, {checked_pairs} successive pairs checked, \
         0 violations; fenced writes accepted {} / refused {}",
        history.len(),
        by_key.len(),
        resource.accepted,
        resource.rejected
    );
    assert!(history.len() >= grants_target);
}

/// One grant in the shared-mode safety checker.
#[derive(Clone)]
struct ModeGrant {
    key: String,
    token: i64,
    ttl: i64,
    exclusive: bool,
    permits: i64,
    sent: Instant,
    received: Instant,
    release_sent: Instant,
}

/// Whether `g` still held its lock on the server when `h` was granted: `g` was granted before
/// `h` was asked for, released only after `h` was granted, and its lease had not ended when
/// `h`'s token was issued.
fn held_at_grant_of(g: &ModeGrant, h: &ModeGrant) -> bool {
    g.received < h.sent
        && g.release_sent > h.received
        && issued_ms(g.token) + g.ttl > issued_ms(h.token)
}

#[test]
fn safety_checker_for_shared_locks_and_semaphores() {
    let (clients, grants_target): (usize, usize) =
        if torture() { (32, 40_000) } else { (24, 1_500) };
    const LIMIT: i64 = 3;
    let server = Server::start();
    // Half the grants on two read-write locks, half on two semaphores.
    let ask = |rng: &mut Rng| {
        let semaphore = rng.chance(50);
        let key = format!("{}:{}", if semaphore { "sem" } else { "rw" }, rng.below(2));
        if semaphore {
            let n = 1 + rng.below(2) as i64;
            let words = ["SEMAPHORE", &LIMIT.to_string(), "PERMITS", &n.to_string()]
                .map(String::from)
                .to_vec();
            (key, words, (false, n))
        } else if rng.chance(30) {
            (key, vec![], (true, 1))
        } else {
            (key, vec!["SHARED".to_string()], (false, 1))
        }
    };
    let hold = |c: &mut Connection, rng: &mut Rng, taken: Taken<(bool, i64)>| {
        if rng.chance(10) {
            thread::sleep(Duration::from_millis(taken.ttl as u64 + 15));
        } else {
            thread::sleep(Duration::from_micros(rng.below(500)));
        }
        let (exclusive, permits) = taken.asked;
        ModeGrant {
            release_sent: release_now(c, &taken.key, &taken.owner),
            key: taken.key,
            token: taken.token,
            ttl: taken.ttl,
            exclusive,
            permits,
            sent: taken.sent,
            received: taken.received,
        }
    };
    let mut history = contend(&server, clients, grants_target, 101, ask, hold);
    history.sort_by_key(|g| g.received);
    let mut seen = HashSet::new();
    let (mut pairs, mut overlaps, mut peak) = (0u64, 0u64, 0i64);
    for (i, h) in history.iter().enumerate() {
        assert!(seen.insert(h.token), "token {} issued twice", h.token);
        // Grants received before h was even asked for, and recent enough to matter.
        let earlier = history[..i]
            .iter()
            .rev()
            .take_while(|g| g.received + Duration::from_secs(5) > h.sent)
            .filter(|g| g.key == h.key && held_at_grant_of(g, h));
        let mut in_use = h.permits;
        for g in earlier {
            pairs += 1;
            overlaps += 1;
            if h.key.starts_with("rw") {
                assert!(
                    !g.exclusive && !h.exclusive,
                    "{}: {} granted token {} while token {} was held ({} and {})",
                    h.key,
                    if h.exclusive { "exclusive" } else { "shared" },
                    h.token,
                    g.token,
                    if g.exclusive { "exclusive" } else { "shared" },
                    issued_ms(g.token) + g.ttl - issued_ms(h.token)
                );
            } else {
                in_use += g.permits;
            }
        }
        if h.key.starts_with("sem") {
            assert!(
                in_use <= LIMIT,
                "{}: {in_use} permits held at token {}",
                h.key,
                h.token
            );
            peak = peak.max(in_use);
        }
    }
    let shared = history
        .iter()
        .filter(|g| g.key.starts_with("rw") && !g.exclusive)
        .count();
    println!(
        "safety (shared and semaphore): {} grants ({shared} shared reads), {pairs} concurrent \
         pairs checked, 0 violations; semaphore peak {peak} of {LIMIT} permits",
        history.len()
    );
    assert!(history.len() >= grants_target);
    assert!(
        overlaps > 0,
        "no holds ever overlapped: the check checked nothing"
    );
}

#[test]
fn crashes_under_load_lose_no_acknowledged_grant_and_never_reissue_a_token() {
    let restarts = if torture() { 20 } else { 3 };
    let mut server = Server::with_config(&[("appendonly", "yes"), ("appendfsync", "always")]);
    let mut rng = Rng::new(7);
    let mut highest_acked = 0i64;
    for round in 0..restarts {
        // Writers grant long leases concurrently while the server is killed at a random moment.
        let acked: Arc<Mutex<Vec<(String, String, i64)>>> = Arc::new(Mutex::new(vec![]));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let mut c = server.client();
                let acked = Arc::clone(&acked);
                thread::spawn(move || {
                    for i in 0.. {
                        let key = format!("crash:{round}:{w}:{i}");
                        let owner = format!("w{w}");
                        let reply: RedisResult<i64> = cmd("DLOCK.ACQUIRE")
                            .arg(&key)
                            .arg(&owner)
                            .arg(600_000)
                            .query(&mut c);
                        match reply {
                            Ok(token) => acked.lock().unwrap().push((key, owner, token)),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(20 + rng.below(200)));
        server.kill9();
        for w in writers {
            w.join().unwrap();
        }
        server.restart();
        let mut c = server.client();
        let acked = acked.lock().unwrap();
        for (key, owner, token) in acked.iter() {
            assert_eq!(
                info(&mut c, key).map(|i| (i.0, i.1)),
                Some((owner.clone(), *token)),
                "acknowledged grant of {key} lost in round {round}"
            );
            highest_acked = highest_acked.max(*token);
        }
        let fresh = grant(&mut c, &format!("fresh:{round}"), "probe", 600_000);
        assert!(
            fresh > highest_acked,
            "token {fresh} not above acknowledged {highest_acked}"
        );
        highest_acked = fresh;
        println!(
            "crash round {round}: {} acknowledged grants all back after kill -9",
            acked.len()
        );
    }
}

#[test]
fn restarts_from_stale_snapshots_never_reissue_tokens() {
    let rounds = if torture() { 20 } else { 3 };
    let mut rng = Rng::new(5);
    let mut server = Server::start();
    let mut highest = 0;
    for round in 0..rounds {
        let mut c = server.client();
        let before = rng.below(100);
        for i in 0..before {
            highest = highest.max(grant(&mut c, &format!("r{round}:{i}"), "w", 60_000));
        }
        let _: () = cmd("SAVE").query(&mut c).unwrap();
        // Grants after the snapshot are lost by the crash; their tokens may be in use.
        for i in 0..1 + rng.below(300) {
            highest = highest.max(grant(&mut c, &format!("lost{round}:{i}"), "w", 60_000));
        }
        drop(c);
        server.kill9();
        server.restart();
        let mut c = server.client();
        let token = grant(&mut c, &format!("after{round}"), "w", 60_000);
        assert!(
            token > highest,
            "round {round}: token {token} not above {highest}"
        );
        highest = token;
    }
}

#[test]
fn replica_promotions_after_missed_writes_never_reissue_tokens() {
    let rounds = if torture() { 20 } else { 3 };
    let mut rng = Rng::new(11);
    for round in 0..rounds {
        let mut master = Server::start();
        let replica = Server::start();
        replicate_from(&replica, &master);
        let mut m = master.client();
        for i in 0..rng.below(50) {
            grant(&mut m, &format!("seen{i}"), "w", 60_000);
        }
        wait_for_replica(&mut m);
        cut_off_replica(&replica, &mut m);
        let mut missed = 0;
        for i in 0..1 + rng.below(300) {
            missed = grant(&mut m, &format!("missed{i}"), "w", 60_000);
        }
        drop(m);
        let mut r = fail_over(&mut master, &replica);
        let token = grant(&mut r, "after", "w", 60_000);
        assert!(
            token > missed,
            "round {round}: token {token} reissued after {missed}"
        );
    }
}

/// Every reply a DLOCK command may give to any input: a result or a documented error.
fn acceptable(reply: &RedisResult<Value>) -> bool {
    const ERRORS: [&str; 26] = [
        "ERR wrong number of arguments for",
        "ERR ttl must be a positive integer in milliseconds",
        "ERR ttl is above the maximum of 1099511627776 ms (2^40)",
        "ERR owner must not be empty",
        "ERR owner is longer than",
        "ERR syntax error",
        "ERR timeout must be a non-negative integer in milliseconds",
        "ERR timeout is above the maximum of 1099511627776 ms (2^40)",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR too many re-entries",
        "ERR DLOCK.APPLY is internal",
        "ERR DLOCK.APPLY arguments are out of range",
        "ERR token must be a positive integer",
        "ERR token leads this server's clock by more than dlock.max-token-lead",
        "ERR count must be a non-negative integer",
        "ERR limit must be an integer from 1 to 4294967294",
        "ERR permits must be a positive integer",
        "ERR permits exceed the semaphore's limit",
        "ERR limit does not match the semaphore's limit",
        "WRONGTYPE the key holds a",
        "ERR cannot upgrade:",
        "ERR fenced write refused:",
        "ERR DLOCK.GUARD cannot run",
        "ERR DLOCK.GUARD could not run the command",
        "EXECABORT",
        // Redis says "calling Redis command", Valkey "calling command".
        "Wrong number of args calling",
    ];
    match reply {
        Ok(_) => true,
        Err(e) => {
            let text = format!("{} {}", e.code().unwrap_or(""), e.detail().unwrap_or(""));
            ERRORS
                .iter()
                .any(|prefix| text.trim_start().starts_with(prefix) || text.contains(prefix))
        }
    }
}

fn fuzz_arg(rng: &mut Rng) -> Vec<u8> {
    const WORDS: [&str; 30] = [
        "0",
        "-0",
        "+1",
        "1",
        "-1",
        "1e3",
        "1.5",
        "",
        "*",
        "WAIT",
        "wait",
        "WaIt",
        "NOWAIT",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "100",
        "30000",
        " 1",
        "1 ",
        "0x10",
        "nan",
        "inf",
        "SHARED",
        "SEMAPHORE",
        "semaphore",
        "PERMITS",
        "3",
        "HOLDERS",
        "AFTER",
    ];
    match rng.below(6) {
        0 => {
            let len = rng.below(40) as usize;
            (0..len).map(|_| rng.below(256) as u8).collect()
        }
        1 => vec![
            b'o';
            if rng.chance(2) {
                1 << 20
            } else {
                200 + rng.below(100) as usize
            }
        ],
        2 => rng.below(1 << 40).to_string().into_bytes(),
        _ => WORDS[rng.below(WORDS.len() as u64) as usize]
            .as_bytes()
            .to_vec(),
    }
}

#[test]
fn fuzzed_commands_get_results_or_documented_errors_and_never_crash() {
    let vectors: u64 = if torture() { 1_000_000 } else { 50_000 };
    let server = Server::start();
    let mut c2 = server.client();
    let mut c3 = server.client_resp3();
    let mut rng = Rng::new(3);
    let commands = [
        "DLOCK.ACQUIRE",
        "DLOCK.RELEASE",
        "DLOCK.EXTEND",
        "DLOCK.FENCE",
        "DLOCK.INFO",
        "DLOCK.APPLY",
        "DLOCK.GUARD",
    ];
    // Commands a guard with the live token runs: whatever they reply is theirs to say.
    let guarded = [
        "SET",
        "GET",
        "INCR",
        "DEL",
        "RPUSH",
        "BLPOP",
        "XREAD",
        "MULTI",
        "EXEC",
        "WATCH",
        "SUBSCRIBE",
        "EVAL",
        "OBJECT",
        "CLIENT",
        "DLOCK.ACQUIRE",
        "DLOCK.RELEASE",
        "DLOCK.FENCE",
        "DLOCK.INFO",
        "DLOCK.APPLY",
        "DLOCK.GUARD",
    ];
    let keys = [
        "f:lock", "f:lock2", "f:string", "f:list", "f:hash", "f:set", "f:zset", "f:stream",
    ];
    let setup = |c: &mut Connection| {
        let _: () = redis::pipe()
            .cmd("SET")
            .arg("f:string")
            .arg("v")
            .ignore()
            .cmd("RPUSH")
            .arg("f:list")
            .arg("v")
            .ignore()
            .cmd("HSET")
            .arg("f:hash")
            .arg("f")
            .arg("v")
            .ignore()
            .cmd("SADD")
            .arg("f:set")
            .arg("v")
            .ignore()
            .cmd("ZADD")
            .arg("f:zset")
            .arg(1)
            .arg("v")
            .ignore()
            .cmd("XADD")
            .arg("f:stream")
            .arg("*")
            .arg("f")
            .arg("v")
            .ignore()
            .query(c)
            .unwrap();
    };
    let guard_token = |c: &mut Connection| grant(c, "f:guard", "fuzzer", 3_600_000);
    setup(&mut c2);
    let mut token = guard_token(&mut c2);
    let mut sent = 0u64;
    while sent < vectors {
        let name = commands[rng.below(commands.len() as u64) as usize];
        let mut command = cmd(name);
        let passthrough = name == "DLOCK.GUARD" && rng.chance(50);
        if passthrough {
            let inner = guarded[rng.below(guarded.len() as u64) as usize];
            command.arg("f:guard").arg(token).arg(inner);
        }
        if rng.below(10) > 0 {
            command.arg(keys[rng.below(keys.len() as u64) as usize]);
        }
        for _ in 0..rng.below(6) {
            command.arg(fuzz_arg(&mut rng));
        }
        let conn = if rng.chance(30) { &mut c3 } else { &mut c2 };
        // A vector with WAIT could block this client for good; such vectors go through
        // MULTI or Lua, where WAIT cannot block.
        let waits = command
            .args_iter()
            .any(|a| matches!(a, redis::Arg::Simple(b) if b.eq_ignore_ascii_case(b"wait")));
        let mode = if waits { rng.below(2) } else { rng.below(10) };
        let replies: Vec<RedisResult<Value>> = match mode {
            0 => {
                let args: Vec<Vec<u8>> = command
                    .args_iter()
                    .map(|a| match a {
                        redis::Arg::Simple(b) => b.to_vec(),
                        redis::Arg::Cursor => vec![],
                    })
                    .collect();
                let mut lua = cmd("EVAL");
                lua.arg("return redis.pcall(unpack(ARGV))").arg(0);
                for a in args {
                    lua.arg(a);
                }
                vec![lua.query(conn)]
            }
            1 => {
                let result: RedisResult<Value> = redis::pipe()
                    .atomic()
                    .add_command(command.clone())
                    .query(conn);
                vec![result]
            }
            _ => vec![command.query(conn)],
        };
        for reply in &replies {
            assert!(
                passthrough || acceptable(reply),
                "{name}: unexpected reply {reply:?}"
            );
        }
        sent += 1;
        if sent.is_multiple_of(10_000) {
            let pong: String = cmd("PING").query(&mut c2).expect("the server is up");
            assert_eq!(pong, "PONG");
            let _: () = cmd("FLUSHALL").query(&mut c2).unwrap();
            setup(&mut c2);
            token = guard_token(&mut c2);
        }
    }
    // The lock state stays consistent: every lock key is of our type and INFO answers.
    let keys: Vec<String> = cmd("KEYS").arg("*").query(&mut c2).unwrap();
    for key in keys {
        let kind: String = cmd("TYPE").arg(&key).query(&mut c2).unwrap();
        if kind == "dlocklock" {
            let _ = info_fields(&mut c2, &key);
        }
    }
    println!("fuzz: {sent} vectors, server up, every reply a result or a documented error");
}

#[test]
fn churn_of_waiters_and_cycles_leaves_no_stuck_waiter_and_no_memory() {
    let (waiters_total, cycles) = if torture() {
        (10_000, 1_000_000)
    } else {
        (2_000, 100_000)
    };
    let server = Server::with_config(&[("hz", "100"), ("maxclients", "15000")]);
    let mut c = server.client();
    let keys = 100;
    // Warm-up round, then the baseline.
    for round in 0..2 {
        for k in 0..keys {
            grant(&mut c, &format!("churn:{k}"), "holder", 600_000);
        }
        let mut conns: Vec<Connection> = (0..waiters_total)
            .map(|i| {
                blocked_connection(
                    &server,
                    &format!("churn:{}", i % keys),
                    &format!("w{i}"),
                    60_000,
                    0,
                )
            })
            .collect();
        let total = |c: &mut Connection| -> i64 {
            (0..keys).map(|k| waiters(c, &format!("churn:{k}"))).sum()
        };
        wait_until("all waiters to queue", || {
            total(&mut c) == waiters_total as i64
        });
        // Half of them go away mid-wait.
        let mut kept = vec![];
        for (i, conn) in conns.drain(..).enumerate() {
            if i % 2 == 0 {
                drop(conn);
            } else {
                kept.push((i, conn));
            }
        }
        wait_until("the killed half to leave", || {
            total(&mut c) == (waiters_total / 2) as i64
        });
        // Release everything: each remaining waiter is granted in turn and releases.
        for k in 0..keys {
            assert_eq!(release(&mut c, &format!("churn:{k}"), "holder"), 1);
        }
        for (i, mut conn) in kept {
            let reply: Value =
                redis::FromRedisValue::from_redis_value(&conn.recv_response().unwrap()).unwrap();
            assert!(matches!(reply, Value::Int(_)), "waiter {i} got {reply:?}");
            let released: i64 = cmd("DLOCK.RELEASE")
                .arg(format!("churn:{}", i % keys))
                .arg(format!("w{i}"))
                .query(&mut conn)
                .unwrap();
            assert_eq!(released, 1);
        }
        let dbsize: i64 = cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(dbsize, 0, "no lock left behind");
        let _ = round;
    }
    let run_cycles = |c: &mut Connection, count: usize| {
        for batch in (0..count).step_by(1_000) {
            let mut pipe = redis::pipe();
            for i in 0..1_000 {
                let key = format!("cycle:{}", (batch + i) % 5_000);
                pipe.cmd("DLOCK.ACQUIRE")
                    .arg(&key)
                    .arg("o")
                    .arg(60_000)
                    .ignore();
                pipe.cmd("DLOCK.EXTEND")
                    .arg(&key)
                    .arg("o")
                    .arg(60_000)
                    .ignore();
                pipe.cmd("DLOCK.RELEASE").arg(&key).arg("o").ignore();
            }
            let _: () = pipe.query(c).unwrap();
        }
    };
    // A short first pass grows what grows once (keyspace tables sized for the 5k keys);
    // a leak shows as growth over the long pass after it.
    run_cycles(&mut c, 10_000);
    let baseline = settled_used_memory(&mut c);
    run_cycles(&mut c, cycles);
    let after = settled_used_memory(&mut c);
    let drift = (after - baseline) as f64 / baseline as f64;
    println!(
        "churn: {waiters_total} waiters (half killed) x2 rounds and {cycles} cycles; used_memory {baseline} -> {after} ({:+.3}%)",
        drift * 100.0
    );
    assert!(
        drift.abs() <= 0.01,
        "used_memory moved {:.3}%",
        drift * 100.0
    );
}
