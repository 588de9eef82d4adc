//! Both clients on a master that a real Sentinel names: locks land on that master, and after
//! a failover new locks land on the promoted replica while a lease held across it is either
//! kept alive there or lost in time.
#![cfg(all(feature = "sentinel", feature = "tokio"))]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dlock_client::Error;
use redis::sentinel::{SentinelClient, SentinelServerType};

const MASTER_NAME: &str = "mymaster";

/// A `redis-server --sentinel` on a free port watching one master, killed when dropped.
struct Sentinel {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Sentinel {
    fn start(master: &Server) -> Sentinel {
        let dir = std::env::temp_dir().join(format!(
            "dlock-client-sentinel-{}-{}",
            std::process::id(),
            master.port
        ));
        // Another process may take the port between our probe and the sentinel's bind: retry.
        for _ in 0..100 {
            std::fs::create_dir_all(&dir).expect("create the sentinel's directory");
            let port = free_port();
            let config = dir.join("sentinel.conf");
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile sentinel.log\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n",
                    dir = dir.display(),
                    master = master.port,
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new(
                std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()),
            )
            .arg(&config)
            .arg("--sentinel")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server --sentinel");
            let mut sentinel = Sentinel {
                port,
                dir: dir.clone(),
                child,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(sentinel.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if sentinel.master_addr().is_some() {
                    return sentinel;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(sentinel);
        }
        panic!("the sentinel did not start; see {}", dir.display());
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn conn(&self) -> Connection {
        let c = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the sentinel");
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        c
    }

    /// A dlock-client's view of it: the master it names, looked up anew for each connection.
    fn client(&self) -> SentinelClient {
        SentinelClient::build(
            vec![self.url()],
            MASTER_NAME.to_string(),
            None,
            SentinelServerType::Master,
        )
        .expect("sentinel client")
    }

    /// The port of the master it names now, if it answers.
    fn master_addr(&self) -> Option<u16> {
        let mut c = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .ok()?;
        let addr: Option<(String, u16)> = cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query(&mut c)
            .ok()?;
        addr.map(|(_, port)| port)
    }

    /// Whether it knows `replica` as a healthy replica (one it could promote).
    fn knows_replica(&self, replica: &Server) -> bool {
        let replicas: Vec<HashMap<String, String>> = cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(MASTER_NAME)
            .query(&mut self.conn())
            .unwrap_or_default();
        replicas.iter().any(|r| {
            r.get("port") == Some(&replica.port.to_string())
                && r.get("flags").map(String::as_str) == Some("slave")
                && r.get("master-link-status").map(String::as_str) == Some("ok")
        })
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master and its replica, both with the module, and a sentinel watching them.
struct Topology {
    master: Server,
    replica: Server,
    sentinel: Sentinel,
}

impl Topology {
    fn start() -> Topology {
        let master = Server::start();
        let replica = Server::start();
        for server in [&master, &replica] {
            let _: () = cmd("CONFIG")
                .arg("SET")
                .arg("repl-diskless-sync-delay")
                .arg(0)
                .query(&mut server.conn())
                .expect("CONFIG SET");
        }
        let _: () = cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(master.port)
            .query(&mut replica.conn())
            .expect("REPLICAOF");
        let mut r = replica.conn();
        wait_until("the replica to sync", Duration::from_secs(20), || {
            role(&mut r).as_deref() == Some("slave") && {
                let info: String = cmd("INFO").arg("replication").query(&mut r).unwrap();
                info.contains("master_link_status:up")
            }
        });
        let sentinel = Sentinel::start(&master);
        assert_eq!(sentinel.master_addr(), Some(master.port));
        wait_until(
            "the sentinel to know the replica",
            Duration::from_secs(30),
            || sentinel.knows_replica(&replica),
        );
        Topology {
            master,
            replica,
            sentinel,
        }
    }

    /// `SENTINEL FAILOVER`, then wait until the sentinel names the replica.
    fn fail_over(&self) {
        let mut s = self.sentinel.conn();
        // The sentinel may refuse while it settles (NOGOODSLAVE, INPROG): retry.
        wait_until(
            "the sentinel to start a failover",
            Duration::from_secs(30),
            || {
                cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg(MASTER_NAME)
                    .query::<()>(&mut s)
                    .is_ok()
            },
        );
        wait_until(
            "the sentinel to name the replica",
            Duration::from_secs(30),
            || self.sentinel.master_addr() == Some(self.replica.port),
        );
    }
}

/// ROLE's first field; `None` when the connection fails, as when a sentinel reconfiguring the
/// server closes its clients' connections under a poll.
fn role(c: &mut Connection) -> Option<String> {
    let reply: Vec<Value> = cmd("ROLE").query(c).ok()?;
    redis::from_redis_value(reply.first()?).ok()
}

/// `DLOCK.INFO`'s `ttl` for `key` (milliseconds left), or None when free.
fn lock_ttl(c: &mut Connection, key: &str) -> Option<i64> {
    let reply: Value = cmd("DLOCK.INFO").arg(key).query(c).expect("DLOCK.INFO");
    let Value::Array(fields) = reply else {
        return None;
    };
    redis::from_redis_value(&fields[5]).ok()
}

#[test]
fn blocking_and_tokio_clients_lock_on_the_master_sentinel_names() {
    let topology = Topology::start();
    let mut m = topology.master.conn();

    let client = dlock_client::Client::sentinel(topology.sentinel.client());
    let lease = dlock_client::Lock::new(&client, "{jobs}:lock")
        .ttl(Duration::from_millis(300))
        .keepalive(true)
        .acquire(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(
        holder(&mut m, "{jobs}:lock").as_deref(),
        Some(lease.owner())
    );
    lease.extend(None).unwrap();
    let _: () = lease.guard(("SET", "{jobs}:data", "v1")).unwrap();
    let data: String = cmd("GET").arg("{jobs}:data").query(&mut m).unwrap();
    assert_eq!(data, "v1");
    // The keepalive's connection asked the sentinel too.
    wait_until("the keepalive to extend", Duration::from_secs(5), || {
        calls(&mut m, "dlock.extend") >= 3
    });
    assert_eq!(clients_named(&mut m, "dlock-keepalive").len(), 1);
    assert!(lease.valid());
    assert!(lease.release().unwrap());
    assert_eq!(holder(&mut m, "{jobs}:lock"), None);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = dlock_client::aio::Client::sentinel(topology.sentinel.client());
        let lease = dlock_client::aio::Lock::new(&client, "{jobs}:lock")
            .ttl(Duration::from_millis(300))
            .keepalive(true)
            .acquire(Some(Duration::from_secs(2)))
            .await
            .unwrap();
        assert_eq!(
            holder(&mut m, "{jobs}:lock").as_deref(),
            Some(lease.owner())
        );
        lease.extend(None).await.unwrap();
        let _: () = lease.guard(("SET", "{jobs}:data", "v2")).await.unwrap();
        let data: String = cmd("GET").arg("{jobs}:data").query(&mut m).unwrap();
        assert_eq!(data, "v2");
        let before = calls(&mut m, "dlock.extend");
        wait_until_async("the keepalive to extend", Duration::from_secs(5), || {
            calls(&mut m, "dlock.extend") >= before + 2
        })
        .await;
        assert!(lease.valid());
        assert!(lease.release().await.unwrap());
        assert_eq!(holder(&mut m, "{jobs}:lock"), None);
        client.close().await;
    });
}

/// What became of a kept-alive lease held across the failover.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The new master holds it and its ttl there went up: an EXTEND reached it.
    ExtendedOnNewMaster,
    /// It was marked lost at this moment.
    Lost(Instant),
}

/// Watch `key` on the new master and the lease's lost signal until one of the outcomes.
fn outcome(new_master: &Server, key: &str, owner: &str, lost: &Mutex<Option<Instant>>) -> Outcome {
    let mut c = new_master.conn();
    let mut lowest: Option<i64> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "neither outcome for {key}");
        if let Some(at) = *lost.lock().unwrap() {
            return Outcome::Lost(at);
        }
        if holder(&mut c, key).as_deref() == Some(owner)
            && let Some(ttl) = lock_ttl(&mut c, key)
        {
            if lowest.is_some_and(|low| ttl > low) {
                return Outcome::ExtendedOnNewMaster;
            }
            lowest = Some(lowest.map_or(ttl, |low| low.min(ttl)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn record_loss() -> (Arc<Mutex<Option<Instant>>>, impl FnOnce() + Send + 'static) {
    let lost = Arc::new(Mutex::new(None));
    let record = Arc::clone(&lost);
    (lost, move || *record.lock().unwrap() = Some(Instant::now()))
}

#[test]
fn after_a_failover_new_locks_go_to_the_new_master() {
    let topology = Topology::start();
    let (old, new) = (&topology.master, &topology.replica);
    let client = dlock_client::Client::sentinel(topology.sentinel.client());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let aclient = dlock_client::aio::Client::sentinel(topology.sentinel.client());

    // Leases held across the failover, renewed every second.
    let ttl = Duration::from_secs(3);
    let held = dlock_client::Lock::new(&client, "held:sync")
        .ttl(ttl)
        .keepalive(true)
        .acquire(Some(Duration::from_secs(2)))
        .unwrap();
    let aheld = runtime.block_on(async {
        dlock_client::aio::Lock::new(&aclient, "held:tokio")
            .ttl(ttl)
            .keepalive(true)
            .acquire(Some(Duration::from_secs(2)))
            .await
            .unwrap()
    });
    let (lost_sync, callback) = record_loss();
    held.on_lost(callback);
    let (lost_tokio, callback) = record_loss();
    aheld.on_lost(callback);
    let mut o = old.conn();
    assert_eq!(holder(&mut o, "held:sync").as_deref(), Some(held.owner()));
    assert_eq!(holder(&mut o, "held:tokio").as_deref(), Some(aheld.owner()));
    let mut n = new.conn();
    wait_until(
        "the holds to reach the replica",
        Duration::from_secs(5),
        || holder(&mut n, "held:sync").is_some() && holder(&mut n, "held:tokio").is_some(),
    );

    let started = Instant::now();
    topology.fail_over();
    println!(
        "the sentinel named the replica after {:.0} ms",
        ms(started.elapsed())
    );
    // The promotion closed the replica's client connections.
    let mut n = new.conn();
    // Until the sentinel turns the old master into a replica (some 10 s after the switch, once
    // it reported itself master for a while), it still serves, and the connections made before
    // the failover still reach it; the sentinel then closes them.
    wait_until(
        "the old master to be demoted",
        Duration::from_secs(60),
        || {
            old.redis()
                .get_connection()
                .is_ok_and(|mut c| role(&mut c).as_deref() == Some("slave"))
        },
    );
    println!("old master demoted after {:.0} ms", ms(started.elapsed()));

    // The blocking client's idle connection to the old master was closed under it: its first
    // command fails, as after any connection loss; the next connection asks the sentinel.
    let closed = dlock_client::Lock::new(&client, "after:sync")
        .ttl(Duration::from_secs(10))
        .try_acquire();
    assert!(
        matches!(&closed, Err(Error::Redis(e)) if e.is_io_error()),
        "{closed:?}"
    );
    let after = dlock_client::Lock::new(&client, "after:sync")
        .ttl(Duration::from_secs(10))
        .try_acquire()
        .unwrap()
        .unwrap();
    assert_eq!(holder(&mut n, "after:sync").as_deref(), Some(after.owner()));
    // The tokio client's command connection is made now, through the sentinel.
    let aafter = runtime.block_on(async {
        dlock_client::aio::Lock::new(&aclient, "after:tokio")
            .ttl(Duration::from_secs(10))
            .try_acquire()
            .await
            .unwrap()
            .unwrap()
    });
    assert_eq!(
        holder(&mut n, "after:tokio").as_deref(),
        Some(aafter.owner())
    );

    // Each held lease either is kept alive on the new master or was lost by its deadline.
    let blocking = outcome(new, "held:sync", held.owner(), &lost_sync);
    judge(
        "blocking",
        blocking,
        held.deadline(),
        held.is_lost(),
        held.valid(),
    );
    let tokio = outcome(new, "held:tokio", aheld.owner(), &lost_tokio);
    judge(
        "tokio",
        tokio,
        aheld.deadline(),
        aheld.is_lost(),
        aheld.valid(),
    );

    assert!(after.release().unwrap());
    drop(held);
    runtime.block_on(async {
        assert!(aafter.release().await.unwrap());
        let _ = aheld.release().await;
        aclient.close().await;
    });
}

/// Assert what `outcome` implies of the lease, and say which one it was.
fn judge(client: &str, outcome: Outcome, deadline: Instant, lost: bool, valid: bool) {
    match outcome {
        Outcome::ExtendedOnNewMaster => {
            assert!(
                !lost && valid,
                "{client}: extended on the new master, yet lost"
            );
            println!("{client}: the held lease is kept alive on the new master");
        }
        Outcome::Lost(at) => {
            assert!(lost && !valid, "{client}: lost, yet valid");
            assert!(at <= deadline, "{client}: lost after its deadline");
            println!(
                "{client}: the held lease was lost {:.0} ms before its deadline",
                ms(deadline - at)
            );
        }
    }
}
