//! Test harness: a real `redis-server` with the freshly built module on a free loopback port,
//! killed when the test ends. The module is the workspace's `target/release/libdlock.so`
//! (build it first with `cargo build --release` at the root; `make test` does), or
//! `DLOCK_MODULE`; the server binary is `redis-server`, or `REDIS_SERVER`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use redis::{Connection, Value, cmd};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

pub fn module_path() -> PathBuf {
    let path = match std::env::var_os("DLOCK_MODULE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/libdlock.so"),
    };
    assert!(
        path.exists(),
        "the dlock module is not built: {} does not exist. Run `cargo build --release` at the \
         repository root first (`make test` does), or point DLOCK_MODULE at a built libdlock.so",
        path.display()
    );
    path
}

fn server_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

pub struct Server {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// A server with the module loaded.
    pub fn start() -> Server {
        Server::launch(true, false)
    }

    /// A server with the module loaded as `loadmodule PATH node-id ID` (its tokens end in
    /// `id`), for quorum locks.
    pub fn with_node_id(id: u8) -> Server {
        Server::launch_with(true, false, &["node-id", &id.to_string()])
    }

    /// A server without the module.
    pub fn without_module() -> Server {
        Server::launch(false, false)
    }

    /// A cluster node with the module, holding no slots yet.
    pub fn cluster_node() -> Server {
        Server::launch(true, true)
    }

    fn launch(with_module: bool, cluster: bool) -> Server {
        Server::launch_with(with_module, cluster, &[])
    }

    fn launch_with(with_module: bool, cluster: bool, module_args: &[&str]) -> Server {
        let module = with_module.then(module_path);
        let dir = std::env::temp_dir().join(format!(
            "dlock-client-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        // Another process may take the port between our probe and the server's bind: retry.
        for _ in 0..100 {
            let port = free_port();
            // A cluster node also listens on port + 10000 (the cluster bus).
            if cluster
                && (port > 55_535 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err())
            {
                continue;
            }
            let mut command = Command::new(server_binary());
            command
                .current_dir(&dir)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--logfile", "redis.log"]);
            if let Some(module) = &module {
                command.arg("--loadmodule").arg(module).args(module_args);
            }
            if cluster {
                command.args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ]);
            }
            let mut child = command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server (set REDIS_SERVER, or install it: `make deps`)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                let ours = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| cmd("INFO").arg("server").query::<String>(&mut c))
                    .is_ok_and(|info| info.contains(&format!("process_id:{}", child.id())));
                if ours {
                    return Server {
                        port,
                        dir,
                        child: Some(child),
                    };
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start; see {}", dir.display());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn redis(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// A plain connection for the test's own commands.
    pub fn conn(&self) -> Connection {
        let c = self
            .redis()
            .get_connection()
            .expect("connect to the test server");
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// `kill -SIGNAL` the server; with "STOP", the returned guard sends CONT when dropped, so a
    /// failing test does not leave it frozen.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn freeze(&self) -> Frozen<'_> {
        self.signal("STOP");
        Frozen(self)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Three masters (no replicas) sharing the 16384 slots, with the module on each.
pub struct Cluster {
    pub nodes: Vec<Server>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<Server> = (0..3).map(|_| Server::cluster_node()).collect();
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (node, (first, last)) in nodes.iter().zip(ranges) {
            let mut c = node.conn();
            let _: () = cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query(&mut c)
                .expect("CLUSTER ADDSLOTSRANGE");
            let _: () = cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(nodes[0].port)
                .query(&mut c)
                .expect("CLUSTER MEET");
        }
        for node in &nodes {
            let mut c = node.conn();
            wait_until("the cluster to form", Duration::from_secs(20), || {
                let info: String = cmd("CLUSTER").arg("INFO").query(&mut c).unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
        }
        Cluster { nodes }
    }

    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>())
            .expect("cluster client")
    }
}

pub struct Frozen<'a>(&'a Server);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Poll `condition` every few milliseconds until it holds; fail after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The async `wait_until`.
pub async fn wait_until_async(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The owner holding `key` (`DLOCK.INFO`'s `owner`), or None when free.
pub fn holder(c: &mut Connection, key: &str) -> Option<String> {
    let reply: Value = cmd("DLOCK.INFO").arg(key).query(c).expect("DLOCK.INFO");
    let Value::Array(fields) = reply else {
        return None;
    };
    redis::from_redis_value(&fields[1]).ok()
}

/// `DLOCK.INFO`'s `token` for `key`, or None when free.
pub fn token(c: &mut Connection, key: &str) -> Option<i64> {
    let reply: Value = cmd("DLOCK.INFO").arg(key).query(c).expect("DLOCK.INFO");
    let Value::Array(fields) = reply else {
        return None;
    };
    redis::from_redis_value(&fields[3]).ok()
}

/// `DLOCK.INFO`'s `waiters` for `key` (0 when free).
pub fn waiters(c: &mut Connection, key: &str) -> i64 {
    let reply: Value = cmd("DLOCK.INFO").arg(key).query(c).expect("DLOCK.INFO");
    let Value::Array(fields) = reply else {
        return 0;
    };
    redis::from_redis_value(&fields[9]).unwrap_or(0)
}

/// The lines of `CLIENT LIST`.
pub fn client_list(c: &mut Connection) -> Vec<String> {
    let list: String = cmd("CLIENT").arg("LIST").query(c).expect("CLIENT LIST");
    list.lines().map(str::to_string).collect()
}

/// The ids of connections named `name`.
pub fn clients_named(c: &mut Connection, name: &str) -> Vec<i64> {
    client_list(c)
        .iter()
        .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect()
}

/// How many times `command` (lowercase, e.g. `dlock.extend`) ran, from `INFO commandstats`.
pub fn calls(c: &mut Connection, command: &str) -> i64 {
    let info: String = cmd("INFO").arg("commandstats").query(c).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Threads of this process.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .expect("/proc/self/task")
}

/// Milliseconds as a float, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
