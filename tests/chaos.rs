//! The lifecycle chaos test: clients lock at random while Redis's own operations happen to
//! the servers — pauses, FAILOVER and back, CLIENT UNBLOCK and KILL on waiters, DEBUG SLEEP,
//! SWAPDB, FLUSHALL ASYNC, MOVE, RENAME, PERSIST/PEXPIRE on locks, eviction, replica link cuts,
//! split brain, boundary ttls and timeouts, crowds of waiters beyond those Redis blocks on the
//! key (parked) — and after every step the rules are checked:
//!
//! - both servers answer;
//! - at most one exclusive holder per key (no other owner beside it), never more permits than
//!   a semaphore's limit;
//! - every blocked command gets exactly one reply (the next command on its connection gets
//!   its own), and a waiter told it was not granted holds nothing;
//! - no waiter stays blocked on a free lock, and once every hold is released (every 200
//!   steps) every waiter gets its answer;
//! - once the replica has caught up, its `DEBUG DIGEST` equals the master's;
//! - no token is handed to two owners, on either server, and fresh tokens only grow (until a
//!   split brain, after which two masters grant side by side).
//!
//! `make test` runs a short, seeded run; `make torture` (DLOCK_TORTURE=1) runs 200,000 steps.
//! DLOCK_CHAOS_SEED replays a run.

mod common;

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const KEYS: [&str; 4] = ["{c}k0", "{c}k1", "{c}k2", "{c}k3"];
const OWNERS: [&str; 4] = ["o0", "o1", "o2", "o3"];
const LIMIT: i64 = 3;
const MAX_MS: i64 = 1 << 40;
/// Waiters of one key that Redis blocks on the key itself; a crowd is larger.
const KEYED_WAITERS: i64 = 32;
const CROWD: u64 = KEYED_WAITERS.unsigned_abs() + 4;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Exclusive,
    Shared,
    Semaphore(i64),
}

impl Mode {
    fn args(self, command: &mut redis::Cmd) {
        match self {
            Mode::Exclusive => {}
            Mode::Shared => {
                command.arg("SHARED");
            }
            Mode::Semaphore(permits) => {
                command
                    .arg("SEMAPHORE")
                    .arg(LIMIT)
                    .arg("PERMITS")
                    .arg(permits);
            }
        }
    }
}

/// A client blocked in `ACQUIRE ... WAIT`: its thread reads the one reply, then checks that
/// the connection answers the next command with its own reply.
struct Waiter {
    key: String,
    owner: String,
    since: Instant,
    /// The highest token seen when it was sent: its grant comes later.
    floor: i64,
    done: Receiver<Outcome>,
}

#[derive(Debug)]
enum Outcome {
    Granted(i64),
    NotGranted,
    /// An error reply (UNBLOCKED after a failover, WRONGTYPE, ...).
    Refused(String),
    /// The connection was killed or closed.
    Gone,
    /// A second reply, or none: the bug this test exists for.
    Broken(String),
}

struct Chaos {
    rng: Rng,
    servers: [Server; 2],
    master: usize,
    clients: Vec<Connection>,
    waiters: Vec<Waiter>,
    next_waiter: u64,
    /// Every token seen granted, and to whom (key, owner).
    tokens: HashMap<i64, String>,
    highest: i64,
    split_brain: bool,
    paused_until: Option<Instant>,
    counts: HashMap<&'static str, u64>,
}

fn token_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(t) => Some(*t),
        Value::Array(items) => items.first().and_then(token_of),
        _ => None,
    }
}

impl Chaos {
    fn new(seed: u64) -> Chaos {
        let config = [
            ("appendonly", "yes"),
            ("repl-diskless-sync-delay", "0"),
            ("repl-timeout", "60"),
        ];
        let servers = [
            Server::with_module_args(&["node-id", "1"], &config),
            Server::with_module_args(&["node-id", "2"], &config),
        ];
        replicate_from(&servers[1], &servers[0]);
        let mut chaos = Chaos {
            rng: Rng::new(seed),
            servers,
            master: 0,
            clients: Vec::new(),
            waiters: Vec::new(),
            next_waiter: 0,
            tokens: HashMap::new(),
            highest: 0,
            split_brain: false,
            paused_until: None,
            counts: HashMap::new(),
        };
        chaos.reconnect();
        chaos
    }

    fn master(&self) -> &Server {
        &self.servers[self.master]
    }

    fn replica(&self) -> &Server {
        &self.servers[1 - self.master]
    }

    fn reconnect(&mut self) {
        self.clients = (0..4).map(|_| self.master().client()).collect();
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    /// Record a granted token: never another owner's, and a fresh token above every token
    /// seen before the request was sent (`floor`) — during a split brain two masters grant side
    /// by side, and only uniqueness holds.
    fn granted(&mut self, key: &str, owner: &str, token: i64) {
        self.granted_above(key, owner, token, self.highest);
    }

    fn granted_above(&mut self, key: &str, owner: &str, token: i64, floor: i64) {
        let who = format!("{key} {owner}");
        match self.tokens.get(&token) {
            Some(previous) => {
                // Re-entry: the same owner, on the same lock (which may have been renamed).
                let same_owner = previous.split(' ').nth(1) == Some(owner);
                assert!(same_owner, "token {token} granted to {previous} and {who}");
            }
            None => {
                assert!(
                    self.split_brain || token > floor,
                    "fresh token {token} for {who} is not above {floor}"
                );
                self.highest = self.highest.max(token);
                self.tokens.insert(token, who);
            }
        }
    }

    fn paused(&self) -> bool {
        self.paused_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Paused now or a moment ago (held clients are still being let go).
    fn recently_paused(&self) -> bool {
        self.paused_until
            .is_some_and(|until| Instant::now() < until + Duration::from_millis(200))
    }

    fn acquire(&mut self) {
        let key = *self.rng.pick(&KEYS);
        let owner = *self.rng.pick(&OWNERS);
        let mode = self.mode();
        let ttl = self.ttl();
        let mut command = cmd("DLOCK.ACQUIRE");
        command.arg(key).arg(owner).arg(ttl);
        mode.args(&mut command);
        let session = self.rng.chance(20);
        if session {
            command.arg("SESSION");
        }
        let client = self.rng.below(self.clients.len() as u64) as usize;
        let how = self.rng.below(10);
        let reply: RedisResult<Value> = match how {
            0 => {
                self.count("acquire in MULTI");
                redis::pipe()
                    .atomic()
                    .add_command(command)
                    .query::<Vec<Value>>(&mut self.clients[client])
                    .map(|mut v| v.pop().unwrap_or(Value::Nil))
            }
            1 if !session => {
                self.count("acquire in Lua");
                let mut lua = cmd("EVAL");
                lua.arg("return redis.call('DLOCK.ACQUIRE', KEYS[1], unpack(ARGV))")
                    .arg(1)
                    .arg(key)
                    .arg(owner)
                    .arg(ttl);
                mode.args(&mut lua);
                lua.query(&mut self.clients[client])
            }
            _ => {
                self.count("acquire");
                command.query(&mut self.clients[client])
            }
        };
        if let Some(token) = reply.as_ref().ok().and_then(token_of) {
            self.granted(key, owner, token);
        }
    }

    fn mode(&mut self) -> Mode {
        match self.rng.below(3) {
            0 => Mode::Exclusive,
            1 => Mode::Shared,
            _ => Mode::Semaphore(1 + self.rng.below(2) as i64),
        }
    }

    fn ttl(&mut self) -> i64 {
        *self
            .rng
            .pick(&[1, 30, 100, 300, 1_000, 5_000, 60_000, MAX_MS])
    }

    fn wait(&mut self) {
        self.count("acquire WAIT");
        let key = self.rng.pick(&KEYS).to_string();
        let ttl = self.ttl();
        let timeout = *self.rng.pick(&[0, 0, 20, 200, 2_000, MAX_MS]);
        let mode = self.mode();
        self.wait_on(key, mode, ttl, timeout);
    }

    /// More waiters on one key than Redis blocks on the key itself (dlock's first 32): the
    /// rest are parked, and dlock alone grants them, times them out and turns them away, under
    /// whatever the servers go through next. Short leases and timeouts let the crowd drain.
    fn crowd(&mut self) {
        self.count("crowd of waiters");
        let key = *self.rng.pick(&KEYS);
        let owner = *self.rng.pick(&OWNERS);
        let mut c = self.master().client();
        // The crowd asks for what the key is (a waiter of the wrong type is refused at once),
        // behind a hold of all of it.
        let semaphore = info_fields(&mut c, key)
            .is_some_and(|fields| fields.iter().any(|(n, v)| n == "mode" && v == "semaphore"));
        let (hold, modes) = if semaphore {
            (
                Mode::Semaphore(LIMIT),
                [Mode::Semaphore(1), Mode::Semaphore(2)],
            )
        } else {
            (Mode::Exclusive, [Mode::Exclusive, Mode::Shared])
        };
        let mut command = cmd("DLOCK.ACQUIRE");
        command.arg(key).arg(owner).arg(1_000);
        hold.args(&mut command);
        let held: RedisResult<Value> = command.query(&mut c);
        if let Some(token) = held.as_ref().ok().and_then(token_of) {
            self.granted(key, owner, token);
        }
        for _ in 0..CROWD + self.rng.below(8) {
            let mode = *self.rng.pick(&modes);
            let ttl = *self.rng.pick(&[1, 30, 100]);
            let timeout = *self.rng.pick(&[0, 20, 200, 2_000]);
            self.wait_on(key.to_string(), mode, ttl, timeout);
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if waiters(&mut c, key) > KEYED_WAITERS {
                self.count("crowd parked");
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// `ACQUIRE key ... WAIT timeout` on a connection of its own, whose thread reads the reply.
    fn wait_on(&mut self, key: String, mode: Mode, ttl: i64, timeout: i64) {
        self.next_waiter += 1;
        let owner = format!("w{}", self.next_waiter);
        let mut command = cmd("DLOCK.ACQUIRE");
        command.arg(&key).arg(&owner).arg(ttl);
        mode.args(&mut command);
        command.arg("WAIT").arg(timeout);
        if self.rng.chance(20) {
            command.arg("SESSION");
        }
        let mut c = self.master().client();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let outcome = match command.query::<Value>(&mut c) {
                Ok(Value::Nil) => Outcome::NotGranted,
                Ok(reply) => match token_of(&reply) {
                    Some(t) => Outcome::Granted(t),
                    None => Outcome::Broken(format!("unexpected reply {reply:?}")),
                },
                Err(e) if e.kind() == redis::ErrorKind::IoError => Outcome::Gone,
                Err(e) => Outcome::Refused(e.to_string()),
            };
            // Exactly one reply: the next command gets its own answer.
            let outcome = match (outcome, cmd("ECHO").arg("next").query::<String>(&mut c)) {
                (outcome @ Outcome::Gone, _) => outcome,
                (outcome, Ok(echo)) if echo == "next" => outcome,
                (_, Err(e)) if e.kind() == redis::ErrorKind::IoError => Outcome::Gone,
                (_, other) => Outcome::Broken(format!("a second reply: {other:?}")),
            };
            let _ = tx.send(outcome);
            // Keep the connection (and any SESSION hold) a little longer, then close it.
            thread::sleep(Duration::from_millis(50));
        });
        self.waiters.push(Waiter {
            key,
            owner,
            since: Instant::now(),
            floor: self.highest,
            done: rx,
        });
    }

    fn release_or_extend(&mut self) {
        let key = *self.rng.pick(&KEYS);
        // Mostly the test's own owners; sometimes whoever holds the key (a waiter, say).
        let owner = if self.rng.chance(15) {
            let all = holders(&mut self.clients[0], key);
            match all.first() {
                Some(holder) => holder.owner.clone(),
                None => return,
            }
        } else {
            self.rng.pick(&OWNERS).to_string()
        };
        let client = self.rng.below(self.clients.len() as u64) as usize;
        let fence = self.rng.chance(10);
        let command = if fence {
            // A quorum client's raise: somewhat above the highest token seen.
            let token = self
                .highest
                .max(1)
                .saturating_add(self.rng.below(1 << 20) as i64);
            cmd("DLOCK.FENCE").arg(key).arg(&owner).arg(token).clone()
        } else if self.rng.chance(60) {
            cmd("DLOCK.RELEASE").arg(key).arg(&owner).clone()
        } else {
            let ttl = self.ttl();
            cmd("DLOCK.EXTEND").arg(key).arg(&owner).arg(ttl).clone()
        };
        let reply = command.query(&mut self.clients[client]);
        if let (true, Ok(Value::Int(token))) = (fence, reply) {
            // The hold carries the raised token from now on (re-entry replies it), and every
            // later grant must be above it.
            self.tokens
                .entry(token)
                .or_insert_with(|| format!("{key} {owner}"));
            self.highest = self.highest.max(token);
        }
        self.count("release/extend/fence");
    }

    fn guard(&mut self) {
        self.count("guard");
        let key = *self.rng.pick(&KEYS);
        let token = self.rng.pick(&[1, self.highest]).to_owned();
        let _: RedisResult<Value> = cmd("DLOCK.GUARD")
            .arg(key)
            .arg(token.max(1))
            .arg("SET")
            .arg(format!("{key}:data"))
            .arg("v")
            .query(&mut self.clients[0]);
    }

    fn admin(&mut self, command: &redis::Cmd) -> RedisResult<Value> {
        command.query(&mut self.master().client())
    }

    /// One operation Redis itself performs, chosen at random.
    fn server_operation(&mut self) {
        let key = *self.rng.pick(&KEYS);
        let other = *self.rng.pick(&KEYS);
        match self.rng.below(15) {
            0 => {
                self.count("CLIENT PAUSE WRITE/ALL");
                let ms = 20 + self.rng.below(150);
                let mode = *self.rng.pick(&["WRITE", "ALL"]);
                let _ = self.admin(cmd("CLIENT").arg("PAUSE").arg(ms).arg(mode));
                self.paused_until = Some(Instant::now() + Duration::from_millis(ms));
            }
            1 => {
                self.count("CLIENT UNPAUSE");
                let _ = self.admin(cmd("CLIENT").arg("UNPAUSE"));
                self.paused_until = self.paused_until.map(|_| Instant::now());
            }
            2 => {
                self.count("DEBUG SLEEP");
                let _ = self.admin(cmd("DEBUG").arg("SLEEP").arg(0.02));
            }
            // Never while clients may still be held by a pause: CLIENT UNBLOCK on a client
            // postponed by CLIENT PAUSE crashes Redis 7.0-7.4 and Valkey 8.0 themselves
            // ("Unknown btype in replyToBlockedClientTimedOut()"), with or without dlock.
            3 if !self.recently_paused() => {
                self.count("CLIENT UNBLOCK");
                let how = *self.rng.pick(&["TIMEOUT", "ERROR"]);
                for id in self.blocked_ids() {
                    let unblocked: i64 = self
                        .admin(cmd("CLIENT").arg("UNBLOCK").arg(id).arg(how))
                        .ok()
                        .and_then(|v| redis::from_redis_value(&v).ok())
                        .unwrap_or(0);
                    assert_eq!(unblocked, 0, "a dlock waiter was unblockable");
                }
            }
            4 => {
                self.count("CLIENT KILL");
                if let Some(id) = self.blocked_ids().first() {
                    let _ = self.admin(cmd("CLIENT").arg("KILL").arg("ID").arg(*id));
                }
            }
            5 if self.rng.chance(30) => {
                self.count("SWAPDB");
                let _ = self.admin(cmd("SWAPDB").arg(0).arg(1));
                let _ = self.admin(cmd("SWAPDB").arg(0).arg(1));
            }
            6 if self.rng.chance(10) => {
                self.count("FLUSHALL ASYNC");
                let _ = self.admin(cmd("FLUSHALL").arg("ASYNC"));
            }
            7 => {
                self.count("MOVE");
                let _ = self.admin(cmd("MOVE").arg(key).arg(1));
            }
            8 => {
                self.count("RENAME");
                let _ = self.admin(cmd("RENAME").arg(key).arg(other));
            }
            9 => {
                self.count("PERSIST/PEXPIRE");
                let _ = self.admin(cmd("PERSIST").arg(key));
                if self.rng.chance(50) {
                    let _ = self.admin(cmd("PEXPIRE").arg(other).arg(5));
                }
            }
            10 if self.rng.chance(20) => self.evict(),
            11 if self.rng.chance(20) => {
                self.count("replica link cut");
                let _ = self.admin(cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica"));
            }
            12 if self.rng.chance(10) => self.failover(),
            13 if self.rng.chance(3) => self.split_brain(),
            _ => {}
        }
    }

    fn blocked_ids(&mut self) -> Vec<i64> {
        let list: String = self
            .admin(cmd("CLIENT").arg("LIST"))
            .ok()
            .and_then(|v| redis::from_redis_value(&v).ok())
            .unwrap_or_default();
        list.lines()
            .filter(|l| l.contains("cmd=dlock.acquire") && l.contains("flags=b"))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .filter_map(|id| id.parse().ok())
            .collect()
    }

    fn evict(&mut self) {
        self.count("eviction");
        let mut c = self.master().client();
        let used = used_memory(&mut c);
        let _: RedisResult<()> = cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("volatile-lru")
            .query(&mut c);
        let _: RedisResult<()> = cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(used.saturating_sub(2_000).max(1))
            .query(&mut c);
        let _ = cmd("SET").arg("{c}filler").arg("x").query::<Value>(&mut c);
        let _: RedisResult<()> = cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(0)
            .query(&mut c);
    }

    fn failover(&mut self) {
        if self.paused() || self.split_brain {
            return;
        }
        self.count("FAILOVER");
        let mut m = self.master().client();
        let started: RedisResult<()> = cmd("FAILOVER").arg("TIMEOUT").arg(5_000).query(&mut m);
        if started.is_err() {
            return;
        }
        let new_master = 1 - self.master;
        let mut r = self.servers[new_master].client();
        let mut switched = false;
        wait_until_within("the failover to end", Duration::from_secs(30), || {
            let role = |c: &mut Connection| -> String {
                let info: String = cmd("INFO").arg("replication").query(c).unwrap();
                let role = if info.contains("role:master") {
                    "master"
                } else {
                    "replica"
                };
                let settled = info.contains("master_failover_state:no-failover")
                    && (role == "master" || info.contains("master_link_status:up"));
                format!("{role}{}", if settled { "" } else { " (settling)" })
            };
            // Done either way, once both servers agree: switched (and following), or given up
            // (TIMEOUT) with the old master still in charge.
            match (role(&mut m).as_str(), role(&mut r).as_str()) {
                ("replica", "master") => {
                    switched = true;
                    true
                }
                ("master", "replica") => true,
                _ => false,
            }
        });
        if switched {
            self.master = new_master;
        }
        self.reconnect();
    }

    /// The replica is cut off and promoted while the old master still serves; both grant the
    /// same keys for a while (distinct node ids keep their tokens apart), then the old master
    /// follows the new one again (its divergent writes are dropped in the full sync).
    fn split_brain(&mut self) {
        if self.paused() || self.split_brain {
            return;
        }
        self.count("split brain");
        self.split_brain = true;
        let mut r = self.replica().client();
        let _: () = cmd("REPLICAOF").arg("NO").arg("ONE").query(&mut r).unwrap();
        let mut m = self.master().client();
        for i in 0..20 {
            for (server, c) in [(0, &mut m), (1, &mut r)] {
                let key = KEYS[i % KEYS.len()];
                let owner = format!("split{server}");
                let reply: RedisResult<Value> = cmd("DLOCK.ACQUIRE")
                    .arg(key)
                    .arg(&owner)
                    .arg(1_000)
                    .arg("SHARED")
                    .query(c);
                if let Some(t) = reply.as_ref().ok().and_then(token_of) {
                    self.granted(key, &owner, t);
                }
            }
        }
        let new_master = 1 - self.master;
        replicate_from(&self.servers[self.master], &self.servers[new_master]);
        self.master = new_master;
        self.reconnect();
        // The old master's grants in the split are gone; fresh tokens from here on must be
        // above everything the surviving master has seen.
        let last: String = cmd("INFO")
            .arg("dlock")
            .query(&mut self.clients[0])
            .unwrap();
        self.highest = last
            .lines()
            .find_map(|l| l.strip_prefix("dlock_last_token:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        self.split_brain = false;
    }

    /// Collect finished waiters and check what they were told.
    fn settle_waiters(&mut self) {
        let mut still = Vec::new();
        for waiter in std::mem::take(&mut self.waiters) {
            match waiter.done.try_recv() {
                Ok(Outcome::Broken(why)) => {
                    panic!("waiter {} on {}: {why}", waiter.owner, waiter.key)
                }
                Ok(Outcome::Granted(token)) => {
                    self.count("waiter granted");
                    self.granted_above(&waiter.key, &waiter.owner, token, waiter.floor);
                }
                Ok(Outcome::NotGranted) => {
                    self.count("waiter not granted");
                    self.holds_nothing(&waiter);
                }
                Ok(Outcome::Refused(why)) => {
                    // A failover answers its waiters with Redis's own UNBLOCKED error.
                    if why.contains("UNBLOCKED") {
                        self.count("waiter unblocked by a failover");
                    } else {
                        self.count("waiter refused");
                    }
                    self.holds_nothing(&waiter);
                }
                Ok(Outcome::Gone) => self.count("waiter gone"),
                Err(mpsc::TryRecvError::Empty) => still.push(waiter),
                Err(mpsc::TryRecvError::Disconnected) => panic!("waiter thread died"),
            }
        }
        self.waiters = still;
    }

    /// A waiter told it was not granted holds nothing, on any key.
    fn holds_nothing(&mut self, waiter: &Waiter) {
        let mut c = self.master().client();
        for key in KEYS {
            let held = holders(&mut c, key).iter().any(|h| h.owner == waiter.owner);
            assert!(!held, "{} was told no, yet holds {key}", waiter.owner);
        }
    }

    fn check_locks(&mut self) {
        let mut c = self.master().client();
        for key in KEYS {
            let Some(fields) = info_fields(&mut c, key) else {
                continue;
            };
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let all = holders(&mut c, key);
            let exclusive: Vec<&Holder> = all.iter().filter(|h| h.mode == "exclusive").collect();
            if let Some(writer) = exclusive.first() {
                assert!(
                    all.iter().all(|h| h.owner == writer.owner),
                    "{key}: an exclusive holder beside others: {all:?}"
                );
            }
            if field("mode") == "semaphore" {
                let permits: i64 = all.iter().map(|h| h.holds).sum();
                let limit: i64 = field("limit").parse().unwrap();
                assert!(
                    permits <= limit,
                    "{key}: {permits} permits of {limit}: {all:?}"
                );
            }
        }
    }

    /// No waiter stays blocked on a free lock: give the server a moment (its timers) first.
    fn check_waiters_progress(&mut self) {
        if self.paused() {
            return;
        }
        let mut c = self.master().client();
        let stuck: Vec<(String, String)> = self
            .waiters
            .iter()
            .filter(|w| w.since.elapsed() > Duration::from_millis(300))
            .map(|w| (w.key.clone(), w.owner.clone()))
            .collect();
        for (key, owner) in stuck {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                self.settle_waiters();
                let waiting = self.waiters.iter().any(|w| w.owner == owner);
                if !waiting || info(&mut c, &key).is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{owner} still waits for {key}, which is free"
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Once nothing is held, every waiter gets its answer — the parked ones too, which only
    /// dlock grants: release every hold (the waiters' own as they are granted) until nobody
    /// waits.
    fn drain_waiters(&mut self) {
        let _ = self.admin(cmd("CLIENT").arg("UNPAUSE"));
        self.paused_until = None;
        let mut c = self.master().client();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.settle_waiters();
            if self.waiters.is_empty() {
                return;
            }
            let waiting: Vec<(&str, &str)> = self
                .waiters
                .iter()
                .map(|w| (w.key.as_str(), w.owner.as_str()))
                .collect();
            assert!(
                Instant::now() < deadline,
                "with every hold released, these still wait: {waiting:?}\n{}",
                dataset(&mut c)
            );
            for key in KEYS {
                for holder in holders(&mut c, key) {
                    release(&mut c, key, &holder.owner);
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn check_replica(&mut self) {
        if self.paused() {
            let _ = self.admin(cmd("CLIENT").arg("UNPAUSE"));
            self.paused_until = None;
        }
        let mut m = self.master().client();
        let mut r = self.replica().client();
        replicate_from_if_needed(self.replica(), self.master());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let _: RedisResult<i64> = cmd("WAIT").arg(1).arg(1_000).query(&mut m);
            if digest(&mut m) == digest(&mut r) {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the replica's dataset differs from the master's:\nmaster:\n{}\nreplica:\n{}",
                    dataset(&mut m),
                    dataset(&mut r)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&mut self) {
        for server in &self.servers {
            let pong: String = cmd("PING").query(&mut server.client()).unwrap();
            assert_eq!(pong, "PONG");
        }
    }

    fn step(&mut self, i: u64) {
        match self.rng.below(100) {
            0..=39 => self.acquire(),
            40..=49 if self.waiters.len() < 16 && self.rng.chance(10) => self.crowd(),
            40..=49 if self.waiters.len() < 16 => self.wait(),
            40..=49 => self.acquire(),
            50..=79 => self.release_or_extend(),
            80..=84 => self.guard(),
            _ => self.server_operation(),
        }
        self.settle_waiters();
        self.check_locks();
        if i.is_multiple_of(20) {
            self.alive();
            self.check_waiters_progress();
        }
        if i.is_multiple_of(200) {
            self.drain_waiters();
            self.check_replica();
        }
    }
}

/// Every key of the first databases with its type, expiry and value digest, for a failure
/// message.
fn dataset(c: &mut Connection) -> String {
    let keyspace: String = cmd("INFO").arg("keyspace").query(c).unwrap();
    let mut out = format!("{}\n", keyspace.trim());
    for db in 0..3 {
        let _: () = cmd("SELECT").arg(db).query(c).unwrap();
        let (_, mut keys): (i64, Vec<String>) = cmd("SCAN")
            .arg(0)
            .arg("COUNT")
            .arg(10_000)
            .query(c)
            .unwrap();
        keys.sort();
        let size: i64 = cmd("DBSIZE").query(c).unwrap();
        out += &format!(" db{db}: {size} keys\n");
        for key in keys {
            let kind: String = cmd("TYPE").arg(&key).query(c).unwrap();
            let pttl: i64 = cmd("PTTL").arg(&key).query(c).unwrap();
            let value: Vec<String> = cmd("DEBUG").arg("DIGEST-VALUE").arg(&key).query(c).unwrap();
            let holders = if kind == "dlocklock" {
                format!("{:?}", holders(c, &key))
            } else {
                String::new()
            };
            out += &format!("  db{db} {key} {kind} pttl={pttl} {value:?} {holders}\n");
        }
    }
    let _: () = cmd("SELECT").arg(0).query(c).unwrap();
    out
}

/// Make sure `replica` follows `master` (a cut link reconnects by itself).
fn replicate_from_if_needed(replica: &Server, master: &Server) {
    let mut r = replica.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = cmd("INFO").arg("replication").query(&mut r).unwrap();
        if info.contains("master_link_status:up") {
            return;
        }
        let tail = |log: String| log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
        let mut m = master.client();
        let master_info: String = cmd("INFO").arg("replication").query(&mut m).unwrap();
        assert!(
            Instant::now() < deadline,
            "the replica link stays down.\nreplica:\n{info}\n{}\nmaster:\n{master_info}\n{}",
            tail(replica.log()),
            tail(master.log())
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn locks_stay_safe_while_redis_operations_happen_to_the_servers() {
    let long = std::env::var_os("DLOCK_TORTURE").is_some();
    let steps = if long { 200_000 } else { 2_000 };
    let seed = std::env::var("DLOCK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_d10c);
    let mut chaos = Chaos::new(seed);
    let start = Instant::now();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for i in 1..=steps {
            chaos.step(i);
        }
    }));
    if let Err(failure) = run {
        // What the servers said last, before their folders go.
        for (i, server) in chaos.servers.iter().enumerate() {
            let log = server.log();
            let lines: Vec<&str> = log.lines().collect();
            // A crash report from its start (the assertion and the stack), else the tail.
            let from = lines
                .iter()
                .position(|l| l.contains("BUG REPORT START"))
                .map_or(lines.len().saturating_sub(40), |i| i.saturating_sub(5));
            let shown = &lines[from..lines.len().min(from + 70)];
            eprintln!(
                "server {i} (running: {}), log:\n{}",
                server.is_running(),
                shown.join("\n")
            );
        }
        std::panic::resume_unwind(failure);
    }
    chaos.drain_waiters();
    chaos.check_replica();
    chaos.alive();
    let mut counts: Vec<_> = chaos.counts.iter().collect();
    counts.sort();
    println!(
        "chaos: {steps} steps (seed {seed:#x}) in {:.1} s, {} tokens checked: {counts:?}",
        start.elapsed().as_secs_f64(),
        chaos.tokens.len()
    );
}
