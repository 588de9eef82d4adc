//! dlock on a real Redis Cluster (3 masters, 3 replicas, on loopback): routing by key, hash
//! tags, cluster clients, resharding with locks held and waiters queued, tokens across
//! shards, failover.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::*;
use redis::cluster::ClusterClient;

fn last_token(c: &mut Connection) -> i64 {
    let info: String = cmd("INFO").arg("dlock").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("dlock_last_token:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("dlock_last_token")
}

/// Another master than `master`.
fn other_master(cluster: &Cluster, master: usize) -> usize {
    (0..3)
        .map(|i| cluster.master_of(i * 6000))
        .find(|m| *m != master)
        .expect("another master")
}

#[test]
fn commands_route_by_key_and_cluster_clients_work() {
    let cluster = Cluster::start();
    let client = ClusterClient::new(cluster.urls()).unwrap();
    let mut c = client.get_connection().unwrap();
    let mut tokens = vec![];
    for i in 0..60 {
        let key = format!("route:{i}");
        let token: i64 = cmd("DLOCK.ACQUIRE")
            .arg(&key)
            .arg("w")
            .arg(60_000)
            .query(&mut c)
            .unwrap();
        tokens.push(token);
        let extended: i64 = cmd("DLOCK.EXTEND")
            .arg(&key)
            .arg("w")
            .arg(60_000)
            .query(&mut c)
            .unwrap();
        assert_eq!(extended, 1);
        let info: Vec<Value> = cmd("DLOCK.INFO").arg(&key).query(&mut c).unwrap();
        assert_eq!(info[3], Value::Int(token));
    }
    // The locks are spread over every master.
    for master in 0..3 {
        let mut m = cluster.nodes[master].client();
        let keys: i64 = cmd("DBSIZE").query(&mut m).unwrap();
        assert!(keys > 0, "master {master} holds no lock");
    }
    // A node that does not serve the key redirects, as for any command.
    let slot = cluster.slot("route:0");
    let wrong = other_master(&cluster, cluster.master_of(slot));
    let mut direct = cluster.nodes[wrong].client();
    let owner_port = cluster.nodes[cluster.master_of(slot)].port;
    assert_eq!(
        error_of(cmd("DLOCK.INFO").arg("route:0").query(&mut direct)),
        format!("MOVED {slot} 127.0.0.1:{owner_port}")
    );

    // Hash tags keep a lock and its data in one slot, so GUARD can fence the write; keys in
    // different slots are refused by Redis itself.
    let token: i64 = cmd("DLOCK.ACQUIRE")
        .arg("{acct:7}:lock")
        .arg("w")
        .arg(60_000)
        .query(&mut c)
        .unwrap();
    let guarded: String = cmd("DLOCK.GUARD")
        .arg("{acct:7}:lock")
        .arg(token)
        .arg("SET")
        .arg("{acct:7}:balance")
        .arg(100)
        .query(&mut c)
        .unwrap();
    assert_eq!(guarded, "OK");
    let lock_node = cluster.master_of(cluster.slot("{acct:7}:lock"));
    let mut direct = cluster.nodes[lock_node].client();
    assert_eq!(
        error_of(
            cmd("DLOCK.GUARD")
                .arg("{acct:7}:lock")
                .arg(token)
                .arg("SET")
                .arg("elsewhere")
                .arg(1)
                .query(&mut direct)
        ),
        "CROSSSLOT Keys in request don't hash to the same slot"
    );

    for i in 0..60 {
        let released: i64 = cmd("DLOCK.RELEASE")
            .arg(format!("route:{i}"))
            .arg("w")
            .query(&mut c)
            .unwrap();
        assert_eq!(released, 1);
    }
}

#[test]
fn the_python_cluster_example_runs() {
    let cluster = Cluster::start();
    assert_eq!(
        run_python("cluster.py", cluster.nodes[0].port),
        [
            "locks on 3 masters",
            "guarded write: OK",
            "stale write refused",
            "released 30 locks",
        ]
    );
}

#[test]
fn resharding_moves_held_locks_and_redirects_their_waiters() {
    let cluster = Cluster::start();
    let key = "moving:lock";
    let slot = cluster.slot(key);
    let from = cluster.master_of(slot);
    let to = other_master(&cluster, from);
    let mut source = cluster.nodes[from].client();
    let token = grant(&mut source, key, "holder", 60_000);
    assert_eq!(grant(&mut source, key, "holder", 60_000), token);
    let mut waiter = blocked_connection(&cluster.nodes[from], key, "waiter", 60_000, 0);
    wait_until("the waiter to queue", || waiters(&mut source, key) == 1);
    // Behind the first 32 waiters (blocked on the key), the rest are parked by the module.
    let mut keyed: Vec<Connection> = (1..32)
        .map(|i| blocked_connection(&cluster.nodes[from], key, &format!("k{i}"), 60_000, 0))
        .collect();
    wait_until("32 waiters to queue", || waiters(&mut source, key) == 32);
    let mut parked = blocked_connection(&cluster.nodes[from], key, "parked", 60_000, 0);
    wait_until("the parked waiter to queue", || {
        waiters(&mut source, key) == 33
    });

    cluster.move_slot(slot, from, to);

    // The waiters are not left hanging: Redis redirects those blocked on the key to the
    // slot's new node, and the module tells the parked one to send its command again.
    let moved = format!("MOVED {slot} 127.0.0.1:{}", cluster.nodes[to].port);
    for c in std::iter::once(&mut waiter).chain(keyed.iter_mut()) {
        assert_eq!(error_of(reply_within(c, Duration::from_secs(5))), moved);
    }
    assert_eq!(
        error_of(reply_within(&mut parked, Duration::from_secs(5))),
        "TRYAGAIN the key's slot moved to another node while the client waited; send the command again"
    );
    // The lock moved whole: owner, token, re-entries, the rest of its lease; nothing is left
    // (or re-created for the waiter) on the old node.
    let mut target = cluster.nodes[to].client();
    let (owner, moved_token, ttl, holds) = info(&mut target, key).expect("the lock moved");
    assert_eq!((owner.as_str(), moved_token, holds), ("holder", token, 2));
    assert!((50_000..=60_000).contains(&ttl), "ttl {ttl}");
    let left: i64 = cmd("DBSIZE").query(&mut source).unwrap();
    assert_eq!(left, 0);
    assert!(last_token(&mut target) >= token);

    // And it works there as before.
    assert_eq!(acquire(&mut target, key, "other", 1_000), Value::Nil);
    assert_eq!(release(&mut target, key, "holder"), 1);
    assert_eq!(release(&mut target, key, "holder"), 1);
    let next = grant(&mut target, key, "next", 1_000);
    assert!(next > token);
}

#[test]
fn a_free_locks_next_token_on_its_new_shard_is_higher() {
    let cluster = Cluster::start();
    let key = "hot:lock";
    let slot = cluster.slot(key);
    let from = cluster.master_of(slot);
    let to = other_master(&cluster, from);
    let mut source = cluster.nodes[from].client();
    // A burst of grants, so the old node's token clock runs ahead of its wall clock.
    let mut pipe = redis::pipe();
    for _ in 0..10_000 {
        pipe.cmd("DLOCK.ACQUIRE").arg(key).arg("w").arg(60_000);
        pipe.cmd("DLOCK.RELEASE").arg(key).arg("w");
    }
    let replies: Vec<i64> = pipe.query(&mut source).unwrap();
    let last = replies.iter().step_by(2).copied().max().unwrap();
    assert_eq!(info(&mut source, key), None);

    // The slot moves with the lock free: no token travels with it.
    cluster.move_slot(slot, from, to);
    let mut target = cluster.nodes[to].client();
    assert!(
        last_token(&mut target) < last,
        "the target never saw these tokens"
    );
    let next = grant(&mut target, key, "w", 60_000);
    assert!(
        next > last,
        "token {next} on the new node is not above {last} from the old one"
    );
}

#[test]
fn failover_keeps_replicated_locks_and_never_reissues_a_token() {
    let mut cluster = Cluster::start();

    // Manual failover: the replica takes over with every lock, and serves waiters.
    let key = "failover:lock";
    let (slot, master, replica) = cluster.serving(key);
    let mut m = cluster.nodes[master].client();
    let token = grant(&mut m, key, "holder", 60_000);
    let acked: i64 = cmd("WAIT").arg(1).arg(5_000).query(&mut m).unwrap();
    assert_eq!(acked, 1);
    let mut waiter = blocked_connection(&cluster.nodes[master], key, "waiter", 60_000, 0);
    wait_until("the waiter to queue", || waiters(&mut m, key) == 1);
    cluster.manual_failover(replica, slot);
    let mut r = cluster.nodes[replica].client();
    // A master turning replica unblocks its blocked clients with Redis's own error.
    assert_eq!(
        error_of(reply_within(&mut waiter, Duration::from_secs(5))),
        "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)"
    );
    assert_eq!(
        info(&mut r, key).map(|i| (i.0, i.1)),
        Some(("holder".into(), token))
    );
    let mut queued = blocked_connection(&cluster.nodes[replica], key, "next", 60_000, 0);
    wait_until("the waiter to queue", || waiters(&mut r, key) == 1);
    assert_eq!(release(&mut r, key, "holder"), 1);
    let Value::Int(next) = reply_within(&mut queued, Duration::from_secs(5)).unwrap() else {
        panic!("the waiter was not granted");
    };
    assert!(next > token);

    // kill -9 of a master: a grant acknowledged by a replica (ACQUIRE then WAIT) survives, and
    // the promoted replica's tokens are above every token the dead master issued.
    let key = "crash:lock";
    let (_, master, replica) = cluster.serving(key);
    let mut m = cluster.nodes[master].client();
    let token = grant(&mut m, key, "holder", 60_000);
    let acked: i64 = cmd("WAIT").arg(1).arg(5_000).query(&mut m).unwrap();
    assert_eq!(acked, 1);
    for i in 0..1_000 {
        grant(&mut m, &format!("{{crash:lock}}:{i}"), "unacked", 60_000);
    }
    let issued = last_token(&mut m);
    cluster.nodes[master].kill9();
    cluster.wait_for_promotion(replica);
    let mut r = cluster.nodes[replica].client();
    assert_eq!(
        info(&mut r, key).map(|i| (i.0, i.1)),
        Some(("holder".into(), token))
    );
    let after = grant(&mut r, "{crash:lock}:new", "w", 60_000);
    assert!(
        after > issued,
        "token {after} after failover is not above {issued}"
    );
}

#[test]
fn redis_cli_reshard_moves_every_held_lock_intact() {
    let cluster = Cluster::start();
    let client = ClusterClient::new(cluster.urls()).unwrap();
    let mut c = client.get_connection().unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("reshard:{i}")).collect();
    let mut before = vec![];
    for (i, key) in keys.iter().enumerate() {
        let token = grant_on(&mut c, key, "holder");
        if i % 3 == 0 {
            assert_eq!(grant_on(&mut c, key, "holder"), token);
        }
        before.push((cluster_info(&mut c, key), Instant::now()));
    }
    let from = cluster.master_of(0);
    let to = other_master(&cluster, from);
    let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
    let output = Command::new(cli)
        .arg("--cluster")
        .arg("reshard")
        .arg(format!("127.0.0.1:{}", cluster.nodes[0].port))
        .args(["--cluster-from", &cluster.node_id(from)])
        .args(["--cluster-to", &cluster.node_id(to)])
        .args(["--cluster-slots", "3000", "--cluster-yes"])
        .output()
        .expect("run redis-cli --cluster reshard");
    assert!(
        output.status.success(),
        "reshard failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.wait_until_ok();
    assert!(cluster.master_of(0) == to);
    let mut moved = 0;
    for (key, ((owner, token, ttl, holds), seen)) in keys.iter().zip(before) {
        let (now_owner, now_token, now_ttl, now_holds) = cluster_info(&mut c, key);
        assert_eq!(
            (now_owner, now_token, now_holds),
            (owner, token, holds),
            "{key}"
        );
        // The lease moved as it was: it only ran down by the time that passed meanwhile.
        let passed = seen.elapsed().as_millis() as i64;
        assert!(
            now_ttl <= ttl && now_ttl >= ttl - passed - 1_000,
            "{key}: ttl {now_ttl}, {ttl} {passed} ms before"
        );
        moved += usize::from(cluster.slot(key) < 3000);
    }
    assert!(moved > 0, "no lock was in the moved slots");
    // Nothing of the moved slots stayed behind.
    let mut source = cluster.nodes[from].client();
    for slot in 0..3000 {
        let count: i64 = cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query(&mut source)
            .unwrap();
        assert_eq!(count, 0, "slot {slot}");
    }
}

#[test]
fn a_grant_no_replica_acknowledged_is_lost_in_failover_but_its_token_is_never_reissued() {
    let mut cluster = Cluster::start();
    let key = "lost:lock";
    let (_, master, replica) = cluster.serving(key);
    let mut m = cluster.nodes[master].client();
    cut_off_replica(&cluster.nodes[replica], &mut m);
    let token = grant(&mut m, key, "holder", 60_000);
    // The durable-grant check fails: no replica has the grant.
    let acked: i64 = cmd("WAIT").arg(1).arg(100).query(&mut m).unwrap();
    assert_eq!(acked, 0);
    cluster.nodes[master].kill9();
    cluster.nodes[replica].signal("CONT");
    cluster.wait_for_promotion(replica);
    let mut r = cluster.nodes[replica].client();
    assert_eq!(info(&mut r, key), None, "the unacknowledged grant is gone");
    let next = grant(&mut r, key, "next", 60_000);
    assert!(next > token, "token {next} reissued at or below {token}");
}

fn grant_on(c: &mut redis::cluster::ClusterConnection, key: &str, owner: &str) -> i64 {
    cmd("DLOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(60_000)
        .query(c)
        .unwrap()
}

/// `DLOCK.INFO` through a cluster connection as (owner, token, ttl, holds).
fn cluster_info(c: &mut redis::cluster::ClusterConnection, key: &str) -> (String, i64, i64, i64) {
    let fields: Vec<Value> = cmd("DLOCK.INFO").arg(key).query(c).unwrap();
    let int = |i: usize| match fields.get(i) {
        Some(Value::Int(v)) => *v,
        other => panic!("{key}: field {i} is {other:?}"),
    };
    let owner: String = redis::from_redis_value(&fields[1]).unwrap();
    (owner, int(3), int(5), int(7))
}
