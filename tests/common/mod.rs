//! Test harness: a real `redis-server` with the freshly built module, on a free loopback port,
//! in a temporary directory of its own, killed and removed when the test ends.
//!
//! The server binary comes from `REDIS_SERVER` (default `redis-server` on PATH) and the module
//! from `DLOCK_MODULE` (default `target/release/libdlock.so`, built by `make test`).
#![allow(dead_code)]

pub mod cluster;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub use redis::{Connection, RedisResult, Value, cmd};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// Longer than any reply a test waits for (the longest blocking waits are a few seconds, the
/// torture run's big scripts well under a minute).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

pub fn module_path() -> PathBuf {
    match std::env::var_os("DLOCK_MODULE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/libdlock.so"),
    }
}

fn server_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

pub struct Server {
    pub port: u16,
    binary: String,
    pub dir: PathBuf,
    config: Vec<(String, String)>,
    /// `None`: no module; otherwise the `loadmodule` arguments after the path.
    module_args: Option<Vec<String>>,
    child: Option<Child>,
}

impl Server {
    /// A server with the module loaded and no persistence.
    pub fn start() -> Server {
        Server::with_config(&[])
    }

    /// A server with extra `redis.conf` directives, e.g. `[("appendonly", "yes")]`.
    pub fn with_config(config: &[(&str, &str)]) -> Server {
        Server::new(config, Some(&[]))
    }

    /// A server loading the module with `loadmodule PATH args...`.
    pub fn with_module_args(args: &[&str], config: &[(&str, &str)]) -> Server {
        Server::new(config, Some(args))
    }

    /// A server without the module, for `MODULE LOAD`.
    pub fn without_module() -> Server {
        Server::new(&[], None)
    }

    fn new(config: &[(&str, &str)], module_args: Option<&[&str]>) -> Server {
        let mut server = Server::prepare(config, module_args);
        server.launch_on_free_port();
        server
    }

    /// A server that is not started yet; `try_start` tells whether it came up.
    pub fn prepare(config: &[(&str, &str)], module_args: Option<&[&str]>) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "dlock-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = Server {
            port: 0,
            binary: server_binary(),
            dir,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            module_args: module_args.map(|a| a.iter().map(|s| s.to_string()).collect()),
            child: None,
        };
        server.port = free_port();
        server
    }

    /// Start a prepared server; false when it exits or never answers (see `log`).
    pub fn try_start(&mut self) -> bool {
        self.launch()
    }

    fn launch_on_free_port(&mut self) {
        // Another test may take the port between our probe and the server's bind: retry.
        let cluster = self
            .config
            .iter()
            .any(|(k, v)| k == "cluster-enabled" && v == "yes");
        for _ in 0..20 {
            self.port = if cluster {
                free_cluster_port()
            } else {
                free_port()
            };
            if self.launch() {
                return;
            }
        }
        panic!("redis-server did not start; see {}", self.dir.display());
    }

    /// Start the server on `self.port` in `self.dir`; false when it exited or never answered.
    fn launch(&mut self) -> bool {
        let mut command = Command::new(&self.binary);
        command
            .current_dir(&self.dir)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .args(["--logfile", "redis.log"])
            .args(["--save", ""])
            .args(["--enable-debug-command", "yes"])
            .args(["--enable-module-command", "yes"])
            .args(["--repl-diskless-sync-delay", "0"]);
        if let Some(args) = &self.module_args {
            command.arg("--loadmodule").arg(module_path()).args(args);
        }
        for (name, value) in &self.config {
            command.arg(format!("--{name}"));
            // A directive of several words (`rename-command SET PUT`) takes them as arguments.
            if value.contains(' ') {
                command.args(value.split_whitespace());
            } else {
                command.arg(value);
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed? run `make deps`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited {
                self.child = None;
                return false;
            }
            if let Ok(mut c) = self.try_client() {
                // Another test's server may have taken the port first, and then answers in
                // ours' place: only our own process counts.
                let info: RedisResult<String> = cmd("INFO").arg("server").query(&mut c);
                if let Ok(info) = info {
                    let pid = self.child.as_ref().map(Child::id);
                    let answering = info
                        .lines()
                        .find_map(|l| l.strip_prefix("process_id:"))
                        .and_then(|v| v.trim().parse::<u32>().ok());
                    let loaded = cmd("PING").query::<String>(&mut c).is_ok();
                    if answering.is_some() && answering == pid && loaded {
                        return true;
                    }
                }
            }
            sleep(Duration::from_millis(10));
        }
        self.kill9();
        false
    }

    fn try_client(&self) -> RedisResult<Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?.get_connection()
    }

    /// A connection whose reads give up after `REPLY_TIMEOUT`: a stuck server fails the test
    /// instead of hanging the whole run.
    pub fn client(&self) -> Connection {
        let c = self.try_client().expect("connect to the test server");
        c.set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("set a read timeout");
        c
    }

    /// A connection logged in as ACL user `user`.
    pub fn client_as(&self, user: &str, password: &str) -> Connection {
        let url = format!("redis://{user}:{password}@127.0.0.1:{}/", self.port);
        let c = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("connect to the test server as an ACL user");
        c.set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("set a read timeout");
        c
    }

    pub fn client_resp3(&self) -> Connection {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}/?protocol=resp3", self.port))
            .and_then(|c| c.get_connection())
            .expect("connect to the test server with RESP3");
        c.set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("set a read timeout");
        c
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("server is running")
    }

    /// `kill -9` the server: no shutdown save, no AOF flush beyond what fsync already did.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port and directory, loading whatever files are there.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill the server before restarting it");
        assert!(self.launch(), "restart failed; see {}", self.dir.display());
        let mut c = self.client();
        wait_until("the dataset to load", || {
            let info: String = cmd("INFO")
                .arg("persistence")
                .query(&mut c)
                .unwrap_or_default();
            info.contains("loading:0")
        });
    }

    /// Run another server binary from the next restart on (an upgrade).
    pub fn set_binary(&mut self, binary: &str) {
        self.binary = binary.to_string();
    }

    /// Change one directive before the next restart.
    pub fn set_config(&mut self, name: &str, value: &str) {
        self.config.retain(|(k, _)| k != name);
        self.config.push((name.to_string(), value.to_string()));
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows the end of each of its servers' logs with its own output.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines
                .get(lines.len().saturating_sub(40)..)
                .unwrap_or_default();
            eprintln!(
                "--- redis.log of the server on port {} (last {} lines)",
                self.port,
                tail.len()
            );
            for line in tail {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A tiny deterministic generator (xorshift), so a failing run replays from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A field of `INFO dlock` (`dlock_locks`, ...) as a number.
pub fn stat(c: &mut Connection, name: &str) -> i64 {
    let info: String = cmd("INFO").arg("dlock").query(c).expect("INFO dlock");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in INFO dlock"))
}

/// Poll `condition` every few milliseconds until it holds, failing the test after 10 s.
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_within(what, Duration::from_secs(10), condition);
}

/// `wait_until` with another limit, for what a busy machine may slow down a lot (a cluster
/// noticing a dead master and electing its replica).
pub fn wait_until_within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(5));
    }
}

/// The server's `used_memory`.
pub fn used_memory(c: &mut Connection) -> i64 {
    let info: String = cmd("INFO").arg("memory").query(c).expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

/// `used_memory` once it holds still for a while: after the server has freed what closed
/// clients and emptied tables left behind (cron work; run the server with a high `hz`).
pub fn settled_used_memory(c: &mut Connection) -> i64 {
    let mut last = used_memory(c);
    let mut stable = 0;
    while stable < 5 {
        sleep(Duration::from_millis(50));
        let now = used_memory(c);
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
    }
    last
}

/// Stop `replica` (SIGSTOP) and cut its link, so that it really misses what the master does
/// next: bytes already in a stopped replica's socket buffer would still arrive after SIGCONT.
pub fn cut_off_replica(replica: &Server, master: &mut Connection) {
    replica.signal("STOP");
    let killed: i64 = cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(master)
        .expect("CLIENT KILL TYPE replica");
    assert_eq!(killed, 1);
}

/// Kill the master with -9, wake the cut-off replica and promote it.
pub fn fail_over(master: &mut Server, replica: &Server) -> Connection {
    master.kill9();
    replica.signal("CONT");
    let mut r = replica.client();
    let _: () = cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r)
        .expect("REPLICAOF NO ONE");
    r
}

/// `DEBUG DIGEST`: equal on two servers when their datasets are.
pub fn digest(c: &mut Connection) -> String {
    cmd("DEBUG").arg("DIGEST").query(c).expect("DEBUG DIGEST")
}

/// Make `replica` replicate `master` and wait until the link is up.
pub fn replicate_from(replica: &Server, master: &Server) {
    let mut r = replica.client();
    let _: () = cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(master.port)
        .query(&mut r)
        .expect("REPLICAOF");
    wait_until("the replica to sync", || {
        let info: String = cmd("INFO")
            .arg("replication")
            .query(&mut r)
            .unwrap_or_default();
        info.contains("master_link_status:up")
    });
}

/// Wait until the one replica has processed everything the master sent so far.
pub fn wait_for_replica(master: &mut Connection) {
    let acked: i64 = cmd("WAIT").arg(1).arg(5_000).query(master).expect("WAIT");
    assert_eq!(acked, 1);
}

/// A connection that has sent `DLOCK.ACQUIRE key owner ttl WAIT timeout` without reading the
/// reply: a waiter that costs no thread.
pub fn blocked_connection(
    server: &Server,
    key: &str,
    owner: &str,
    ttl: i64,
    timeout: i64,
) -> Connection {
    let mut c = server.client();
    let command = cmd("DLOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(ttl)
        .arg("WAIT")
        .arg(timeout)
        .get_packed_command();
    c.send_packed_command(&command)
        .expect("send a blocking acquire");
    c
}

/// Read the reply a blocked client gets, failing the test if none comes within `within`.
pub fn reply_within(c: &mut Connection, within: Duration) -> RedisResult<Value> {
    c.set_read_timeout(Some(within)).unwrap();
    let reply = c.recv_response();
    if let Err(e) = &reply {
        assert!(!e.is_timeout(), "no reply within {within:?}");
    }
    reply.and_then(Value::extract_error)
}

/// `DLOCK.ACQUIRE key owner ttl`, as the reply value.
pub fn acquire(c: &mut Connection, key: &str, owner: &str, ttl: i64) -> Value {
    cmd("DLOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(ttl)
        .query(c)
        .expect("DLOCK.ACQUIRE")
}

/// `DLOCK.ACQUIRE` that must grant: returns the token.
pub fn grant(c: &mut Connection, key: &str, owner: &str, ttl: i64) -> i64 {
    match acquire(c, key, owner, ttl) {
        Value::Int(token) => token,
        other => panic!("expected a token for {key}/{owner}, got {other:?}"),
    }
}

pub fn release(c: &mut Connection, key: &str, owner: &str) -> i64 {
    cmd("DLOCK.RELEASE")
        .arg(key)
        .arg(owner)
        .query(c)
        .expect("DLOCK.RELEASE")
}

pub fn extend(c: &mut Connection, key: &str, owner: &str, ttl: i64) -> i64 {
    cmd("DLOCK.EXTEND")
        .arg(key)
        .arg(owner)
        .arg(ttl)
        .query(c)
        .expect("DLOCK.EXTEND")
}

/// `DLOCK.INFO` as (owner, token, ttl, holds), or None for a free lock.
pub fn info(c: &mut Connection, key: &str) -> Option<(String, i64, i64, i64)> {
    let fields = info_fields(c, key)?;
    let int = |name: &str| -> i64 {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("DLOCK.INFO {key} has no integer {name}: {fields:?}"))
    };
    let owner = fields
        .iter()
        .find(|(n, _)| n == "owner")
        .map(|(_, v)| v.clone())
        .expect("owner");
    Some((owner, int("token"), int("ttl"), int("holds")))
}

/// The number of clients waiting for `key` (as `DLOCK.INFO` reports it; 0 when free).
pub fn waiters(c: &mut Connection, key: &str) -> i64 {
    info_fields(c, key)
        .and_then(|f| f.into_iter().find(|(n, _)| n == "waiters"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// `DLOCK.INFO key HOLDERS 0` (every holder listed) as (field, value) pairs in reply order,
/// or None for a free lock. The value of `holders` is given as the number of holders listed
/// (see `holders`).
pub fn info_fields(c: &mut Connection, key: &str) -> Option<Vec<(String, String)>> {
    let reply: Value = cmd("DLOCK.INFO")
        .arg(key)
        .arg("HOLDERS")
        .arg(0)
        .query(c)
        .expect("DLOCK.INFO");
    match reply {
        Value::Nil => None,
        Value::Array(fields) => {
            let names = INFO_FIELDS;
            let pairs: Vec<(String, String)> = fields
                .chunks(2)
                .map(|p| {
                    let name: String = redis::from_redis_value(&p[0]).expect("field name");
                    let value = match p.get(1) {
                        Some(Value::Array(holders)) => holders.len().to_string(),
                        Some(v) => redis::from_redis_value::<String>(v).expect("field"),
                        None => String::new(),
                    };
                    (name, value)
                })
                .collect();
            let got: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(got, names, "DLOCK.INFO fields");
            Some(pairs)
        }
        other => panic!("unexpected DLOCK.INFO reply {other:?}"),
    }
}

/// `DLOCK.INFO`'s fields, in their order.
pub const INFO_FIELDS: [&str; 10] = [
    "owner",
    "token",
    "ttl",
    "holds",
    "waiters",
    "session",
    "mode",
    "limit",
    "holders",
    "holders_count",
];

/// The holders of each of `keys`, every field but the ttl (which moves), to compare states.
pub fn holders_without_ttl(c: &mut Connection, keys: &[&str]) -> Vec<Vec<Holder>> {
    keys.iter()
        .map(|k| {
            holders(c, k)
                .into_iter()
                .map(|h| Holder { ttl: 0, ..h })
                .collect()
        })
        .collect()
}

/// One entry of `DLOCK.INFO`'s `holders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    pub token: i64,
    pub ttl: i64,
    pub holds: i64,
    pub session: i64,
    pub mode: String,
}

/// Every live holder of `key` from `DLOCK.INFO key HOLDERS 0`, by token; empty for a free
/// lock.
pub fn holders(c: &mut Connection, key: &str) -> Vec<Holder> {
    holders_page(c, key, &["HOLDERS", "0"])
}

/// The holders `DLOCK.INFO key options...` lists, checking that `holders_count` follows them.
pub fn holders_page(c: &mut Connection, key: &str, options: &[&str]) -> Vec<Holder> {
    let reply: Value = cmd("DLOCK.INFO")
        .arg(key)
        .arg(options)
        .query(c)
        .expect("DLOCK.INFO");
    let Value::Array(fields) = reply else {
        return Vec::new();
    };
    let (Some(Value::Array(entries)), Some(Value::BulkString(count))) =
        (fields.get(17), fields.get(18))
    else {
        panic!("DLOCK.INFO has holders, then holders_count: {fields:?}");
    };
    assert_eq!(count, b"holders_count");
    entries
        .iter()
        .map(|entry| {
            let Value::Array(pairs) = entry else {
                panic!("holder {entry:?}");
            };
            let text = |i: usize| -> String { redis::from_redis_value(&pairs[i]).unwrap() };
            let int = |i: usize| -> i64 { redis::from_redis_value(&pairs[i]).unwrap() };
            let names: Vec<String> = (0..6).map(|i| text(2 * i)).collect();
            assert_eq!(names, ["owner", "token", "ttl", "holds", "session", "mode"]);
            Holder {
                owner: text(1),
                token: int(3),
                ttl: int(5),
                holds: int(7),
                session: int(9),
                mode: text(11),
            }
        })
        .collect()
}

/// Run `examples/python/{name} {port}`; its output lines.
pub fn run_python(name: &str, port: u16) -> Vec<String> {
    let script = format!("{}/examples/python/{name}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .output()
        .expect("run python3 (make deps installs redis-py)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// A key outside a user's ACL patterns, refused as Redis 7.0 and 7.2+ word it.
pub const NOPERM_KEY: [&str; 2] = [
    "NOPERM this user has no permissions to access one of the keys used as arguments",
    "NOPERM No permissions to access a key",
];

/// The error text of a command that must fail.
pub fn error_of(result: RedisResult<Value>) -> String {
    match result {
        Err(e) => {
            let code = e.code().unwrap_or("");
            let detail = e.detail().unwrap_or("");
            format!("{code} {detail}").trim().to_string()
        }
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// `clients/python`, the Python client package.
pub fn python_package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python")
}

/// `python3 -m <module> <args>` in clients/python, with the package's sources on the path and
/// the freshly built module and the server binary its tests start.
pub fn python_client(module: &str, args: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command
        .arg("-m")
        .arg(module)
        .args(args)
        .current_dir(python_package())
        .env("PYTHONPATH", python_package().join("src"))
        .env("DLOCK_MODULE", module_path())
        .env(
            "REDIS_SERVER",
            std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string()),
        );
    command
}

/// Run `command`, failing the test with its output unless it succeeds; its stdout. Its stderr
/// (the Python suites' measured figures) is printed, seen with `--nocapture`.
pub fn succeed(mut command: Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run python3: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}{stderr}",
        output.status
    );
    eprintln!("{stderr}");
    stdout.into_owned()
}
