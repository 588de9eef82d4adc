//! A real Redis Cluster on loopback: 3 masters and 3 replicas, the module loaded on every
//! node, created with `redis-cli --cluster create`, torn down with the test.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Connection, Server, cmd, wait_until_within};

/// Nodes agree on failures within about this long (and replicas take over after it).
const NODE_TIMEOUT_MS: &str = "1000";
/// How long a cluster may take to settle (formation, failover) on a busy machine.
pub const SLOW: Duration = Duration::from_secs(30);

pub struct Cluster {
    /// Masters first, then replicas, as `--cluster create` pairs them.
    pub nodes: Vec<Server>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let config = [
            ("cluster-enabled", "yes"),
            ("cluster-config-file", "nodes.conf"),
            ("cluster-node-timeout", NODE_TIMEOUT_MS),
            // A replica cut off for a moment may still take over.
            ("cluster-replica-validity-factor", "0"),
        ];
        let nodes: Vec<Server> = (0..6).map(|_| Server::with_config(&config)).collect();
        let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let output = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create (make deps installs redis-tools)");
        assert!(
            output.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Cluster { nodes };
        cluster.wait_until_ok();
        cluster
    }

    /// Wait until every running node sees the cluster as ok with every slot served, and every
    /// replica is linked to its master.
    pub fn wait_until_ok(&self) {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let mut c = node.client();
            wait_until_within("the cluster to be ok on every node", SLOW, || {
                let info: String = cmd("CLUSTER").arg("INFO").query(&mut c).unwrap_or_default();
                let replication: String = cmd("INFO")
                    .arg("replication")
                    .query(&mut c)
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
        }
        // "ok" comes before every node has heard which node replicates which: a master that
        // does not yet know its replica ignores that replica's manual failover request.
        wait_until_within("every node to agree on the topology", SLOW, || {
            let views: Vec<BTreeSet<(String, String)>> = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .map(|n| {
                    let nodes: String = cmd("CLUSTER")
                        .arg("NODES")
                        .query(&mut n.client())
                        .unwrap_or_default();
                    topology(&nodes)
                })
                .collect();
            views.windows(2).all(|pair| pair[0] == pair[1])
        });
    }

    /// A manual `CLUSTER FAILOVER` of `replica` for the master serving `slot`, repeated while
    /// it has not happened: Redis gives a manual failover 5 s and then drops it, which a busy
    /// machine can exceed.
    pub fn manual_failover(&self, replica: usize, slot: u16) {
        let deadline = Instant::now() + SLOW;
        let mut r = self.nodes[replica].client();
        loop {
            let info: String = cmd("INFO")
                .arg("replication")
                .query(&mut r)
                .expect("INFO replication");
            // A node that turned master since the last attempt would refuse another request.
            if info.contains("role:slave") {
                let _: () = cmd("CLUSTER")
                    .arg("FAILOVER")
                    .query(&mut r)
                    .expect("CLUSTER FAILOVER");
            }
            let attempt = Instant::now() + Duration::from_secs(8);
            while Instant::now() < attempt {
                if self.master_of(slot) == replica {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                Instant::now() < deadline,
                "the replica never took over: {}",
                self.nodes[replica].log()
            );
        }
    }

    /// Wait until the replica at `replica` has taken over from its failed master and the
    /// cluster is ok again.
    pub fn wait_for_promotion(&self, replica: usize) {
        let mut r = self.nodes[replica].client();
        wait_until_within("the replica to be promoted", SLOW, || {
            let role: String = cmd("INFO")
                .arg("replication")
                .query(&mut r)
                .unwrap_or_default();
            role.contains("role:master")
        });
        self.wait_until_ok();
    }

    /// The cluster's address for cluster clients.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    pub fn slot(&self, key: &str) -> u16 {
        let mut c = self.any();
        cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("CLUSTER KEYSLOT")
    }

    /// A connection to some running node.
    pub fn any(&self) -> Connection {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node")
            .client()
    }

    /// The index of the running master serving `slot`, as the running nodes see it.
    pub fn master_of(&self, slot: u16) -> usize {
        let mut c = self.any();
        let slots: Vec<redis::Value> = cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut c)
            .expect("CLUSTER SLOTS");
        for range in slots {
            let redis::Value::Array(fields) = range else {
                continue;
            };
            let (Some(redis::Value::Int(from)), Some(redis::Value::Int(to)), Some(master)) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            if (*from..=*to).contains(&i64::from(slot)) {
                let port: u16 = match master {
                    redis::Value::Array(node) => match node.get(1) {
                        Some(redis::Value::Int(port)) => *port as u16,
                        _ => 0,
                    },
                    _ => 0,
                };
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("the master is one of ours");
            }
        }
        panic!("slot {slot} is not served");
    }

    /// `key`'s slot, the master serving it, and a replica of that master.
    pub fn serving(&self, key: &str) -> (u16, usize, usize) {
        let slot = self.slot(key);
        let master = self.master_of(slot);
        (slot, master, self.replica_of(master))
    }

    /// The index of a running replica of the master at `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let id = self.node_id(master);
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| *i != master && n.is_running())
            .find(|(_, n)| {
                let mut c = n.client();
                let info: String = cmd("CLUSTER").arg("INFO").query(&mut c).unwrap_or_default();
                let nodes: String = cmd("CLUSTER")
                    .arg("NODES")
                    .query(&mut c)
                    .unwrap_or_default();
                info.contains("cluster_state")
                    && nodes
                        .lines()
                        .any(|l| l.contains("myself,slave") && l.contains(&id))
            })
            .map(|(i, _)| i)
            .expect("the master has a replica")
    }

    pub fn node_id(&self, node: usize) -> String {
        let mut c = self.nodes[node].client();
        cmd("CLUSTER")
            .arg("MYID")
            .query(&mut c)
            .expect("CLUSTER MYID")
    }

    /// Move `slot` from node `from` to node `to` the way `redis-cli --cluster reshard` does:
    /// mark it importing and migrating, `MIGRATE` its keys, then give it to `to` everywhere.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let mut source = self.nodes[from].client();
        let mut target = self.nodes[to].client();
        let _: () = cmd("CLUSTER")
            .arg(&["SETSLOT", &slot.to_string(), "IMPORTING", &from_id][..])
            .query(&mut target)
            .expect("SETSLOT IMPORTING");
        let _: () = cmd("CLUSTER")
            .arg(&["SETSLOT", &slot.to_string(), "MIGRATING", &to_id][..])
            .query(&mut source)
            .expect("SETSLOT MIGRATING");
        loop {
            let keys: Vec<String> = cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut source)
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: () = cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(5_000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut source)
                .expect("MIGRATE");
        }
        for node in [to, from] {
            let mut c = self.nodes[node].client();
            let _: () = cmd("CLUSTER")
                .arg(&["SETSLOT", &slot.to_string(), "NODE", &to_id][..])
                .query(&mut c)
                .expect("SETSLOT NODE");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.master_of(slot) != to {
            assert!(Instant::now() < deadline, "slot {slot} never moved");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `(node id, master id or "-")` pairs of a `CLUSTER NODES` reply, for the nodes not
/// marked failing: what one node believes the cluster's shape is.
fn topology(nodes: &str) -> BTreeSet<(String, String)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (id, flags, master) = (fields.first()?, fields.get(2)?, fields.get(3)?);
            let settled = !["fail", "handshake", "noaddr"]
                .iter()
                .any(|f| flags.contains(f));
            settled.then(|| (id.to_string(), master.to_string()))
        })
        .collect()
}
