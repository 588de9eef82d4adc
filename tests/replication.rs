//! Replicas reach the master's exact state, and a promoted replica never reissues a token.

mod common;

use common::*;

#[test]
fn a_replica_mirrors_every_operation() {
    let master = Server::start();
    let replica = Server::start();
    let mut m = master.client();
    // Locks that exist before the replica connects reach it through the full sync (RDB).
    let synced = grant(&mut m, "synced", "w0", 120_000);
    replicate_from(&replica, &master);
    let mut r = replica.client();

    grant(&mut m, "a", "w1", 120_000);
    grant(&mut m, "a", "w1", 100_000);
    grant(&mut m, "b", "w2", 1_000);
    assert_eq!(extend(&mut m, "b", "w2", 150_000), 1);
    grant(&mut m, "c", "w3", 120_000);
    assert_eq!(release(&mut m, "c", "w3"), 1);
    grant(&mut m, "d", "w4", 120_000);
    grant(&mut m, "d", "w4", 120_000);
    assert_eq!(release(&mut m, "d", "w4"), 1);
    let _: (i64, String) = cmd("DLOCK.ACQUIRE")
        .arg("e")
        .arg("*")
        .arg(120_000)
        .query(&mut m)
        .unwrap();
    grant(&mut m, "short", "w5", 30);
    grant(&mut m, "deleted", "w6", 120_000);
    let _: () = cmd("DEL").arg("deleted").query(&mut m).unwrap();
    grant(&mut m, "old-name", "w7", 120_000);
    let _: () = cmd("RENAME")
        .arg("old-name")
        .arg("new-name")
        .query(&mut m)
        .unwrap();
    let _: Value = redis::pipe()
        .atomic()
        .cmd("DLOCK.ACQUIRE")
        .arg("multi")
        .arg("w8")
        .arg(120_000)
        .cmd("DLOCK.EXTEND")
        .arg("multi")
        .arg("w8")
        .arg(130_000)
        .query(&mut m)
        .unwrap();
    let _: i64 = redis::Script::new("return redis.call('DLOCK.ACQUIRE', KEYS[1], 'w9', 120000)")
        .key("lua")
        .invoke(&mut m)
        .unwrap();
    // The master expires the short lease and replicates the deletion.
    wait_until("the short lease to end on the master", || {
        let exists: i64 = cmd("EXISTS").arg("short").query(&mut m).unwrap();
        exists == 0
    });
    wait_for_replica(&mut m);

    assert_eq!(digest(&mut r), digest(&mut m));
    for key in [
        "synced", "a", "b", "c", "d", "e", "short", "deleted", "new-name", "multi", "lua",
    ] {
        let on_master = info(&mut m, key).map(|(o, t, _, h)| (o, t, h));
        let on_replica = info(&mut r, key).map(|(o, t, _, h)| (o, t, h));
        assert_eq!(on_replica, on_master, "{key}");
    }
    assert_eq!(info(&mut r, "synced").map(|i| i.1), Some(synced));
    let mut keys: Vec<String> = cmd("KEYS").arg("*").query(&mut r).unwrap();
    keys.sort();
    assert_eq!(
        keys,
        ["a", "b", "d", "e", "lua", "multi", "new-name", "synced"]
    );

    // A replica refuses writes, including lock commands.
    let err = error_of(cmd("DLOCK.ACQUIRE").arg("x").arg("w").arg(10).query(&mut r));
    assert_eq!(err, "READONLY You can't write against a read only replica.");

    // The replica's token clock followed the master's: promoted, it issues higher tokens.
    let last_on_master = grant(&mut m, "last", "w", 120_000);
    wait_for_replica(&mut m);
    let _: () = cmd("REPLICAOF").arg("NO").arg("ONE").query(&mut r).unwrap();
    assert!(grant(&mut r, "after-promotion", "w", 10_000) > last_on_master);
}

/// Grants in one burst share a millisecond and, with it, their lease ends, which the master
/// replicates as one string it keeps between commands: replicas and the AOF still get each
/// hold's own lease end when the ttls alternate, and exactly the same when they repeat.
#[test]
fn a_burst_of_grants_replicates_each_lease_end_exactly() {
    let mut master = Server::with_config(&[("appendonly", "yes"), ("appendfsync", "always")]);
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    let mut r = replica.client();
    let ttls = [60_000, 60_000, 90_000, 60_000, 1_000_000];
    let mut pipe = redis::pipe();
    for i in 0..300 {
        let ttl = ttls[i % ttls.len()];
        pipe.cmd("DLOCK.ACQUIRE")
            .arg(format!("burst:{i}"))
            .arg(format!("w{i}"))
            .arg(ttl);
        pipe.cmd("DLOCK.ACQUIRE")
            .arg("burst:shared")
            .arg(format!("r{}", i % 7))
            .arg(ttl)
            .arg("SHARED")
            .ignore();
    }
    let tokens: Vec<i64> = pipe.query(&mut m).unwrap();
    assert_eq!(tokens.len(), 300);
    wait_for_replica(&mut m);
    let expiry =
        |c: &mut Connection, key: &str| -> i64 { cmd("PEXPIRETIME").arg(key).query(c).unwrap() };
    let mut lease_ends = std::collections::BTreeSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let key = format!("burst:{i}");
        let on_master = expiry(&mut m, &key);
        assert_eq!(expiry(&mut r, &key), on_master, "{key}");
        assert_eq!(info(&mut r, &key).map(|i| i.1), Some(*token), "{key}");
        lease_ends.insert(on_master - ttls[i % ttls.len()]);
    }
    // The burst took few milliseconds: most grants shared theirs with the one before.
    assert!(lease_ends.len() < 100, "{} milliseconds", lease_ends.len());
    let shared = holders_without_ttl(&mut m, &["burst:shared"]);
    assert_eq!(shared.concat().len(), 7);
    assert_eq!(holders_without_ttl(&mut r, &["burst:shared"]), shared);
    let digest_before = digest(&mut m);
    assert_eq!(digest(&mut r), digest_before);

    drop(m);
    master.kill9();
    master.restart();
    let mut m = master.client();
    assert_eq!(digest(&mut m), digest_before);
}

#[test]
fn a_promoted_replica_that_missed_grants_never_reissues_their_tokens() {
    let mut master = Server::start();
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    grant(&mut m, "seen", "w", 120_000);
    wait_for_replica(&mut m);

    cut_off_replica(&replica, &mut m);
    let mut missed = 0;
    for i in 0..200 {
        missed = grant(&mut m, &format!("missed{i}"), "w", 60_000);
    }
    drop(m);
    let mut r = fail_over(&mut master, &replica);
    assert!(info(&mut r, "seen").is_some());
    assert_eq!(info(&mut r, "missed199"), None);
    let token = grant(&mut r, "after-failover", "w", 10_000);
    assert!(token > missed, "token {token} reissued after {missed}");
}

#[test]
fn apply_from_the_replication_stream_sets_the_exact_state() {
    let master = Server::start();
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    let mut r = replica.client();
    let token = grant(&mut m, "k", "w1", 120_000);
    wait_for_replica(&mut m);
    let pttl_master: i64 = cmd("PTTL").arg("k").query(&mut m).unwrap();
    let pttl_replica: i64 = cmd("PTTL").arg("k").query(&mut r).unwrap();
    assert!((pttl_master - pttl_replica).abs() < 1_000);
    assert_eq!(
        info(&mut r, "k").map(|i| (i.0, i.1, i.3)),
        Some(("w1".into(), token, 1))
    );
    assert_eq!(release(&mut m, "k", "w1"), 1);
    wait_for_replica(&mut m);
    let exists: i64 = cmd("EXISTS").arg("k").query(&mut r).unwrap();
    assert_eq!(exists, 0);
}

#[test]
fn a_replicas_own_aof_records_the_locks_it_received() {
    let master = Server::start();
    let mut replica = Server::with_config(&[
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("aof-use-rdb-preamble", "no"),
    ]);
    replicate_from(&replica, &master);
    // After a full sync the replica rewrites its AOF; wait until it is writing to it again.
    let mut r = replica.client();
    wait_until("the replica's AOF rewrite after the sync", || {
        let info: String = cmd("INFO").arg("persistence").query(&mut r).unwrap();
        info.contains("aof_rewrite_in_progress:0")
            && info.contains("aof_rewrite_scheduled:0")
            && info.contains("aof_enabled:1")
            && !info.contains("aof_last_bgrewrite_status:err")
    });
    let mut m = master.client();
    let token = grant(&mut m, "k", "w1", 120_000);
    grant(&mut m, "k", "w1", 120_000);
    grant(&mut m, "gone", "w2", 120_000);
    assert_eq!(release(&mut m, "gone", "w2"), 1);
    wait_for_replica(&mut m);
    replica.kill9();
    // Restarted alone (no replicaof in its config), the replica rebuilds from its own AOF.
    replica.restart();
    let mut r = replica.client();
    assert_eq!(
        info(&mut r, "k").map(|i| (i.0, i.1, i.3)),
        Some(("w1".into(), token, 2))
    );
    assert_eq!(info(&mut r, "gone"), None);
}
