//! Fencing tokens carry the issuing server's node id: two servers never return the same
//! token, even after split brain, and a promoted replica issues above its old master.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;

/// Ticks per wall-clock millisecond; the low 4 bits of a token are its node id.
const TICKS_PER_MS: i64 = 1 << 13;

fn node_of(token: i64) -> i64 {
    token & 0xf
}

fn config_get(c: &mut Connection, name: &str) -> String {
    let reply: Vec<String> = cmd("CONFIG").arg("GET").arg(name).query(c).unwrap();
    assert_eq!(reply.len(), 2, "{name}: {reply:?}");
    reply[1].clone()
}

fn config_set(c: &mut Connection, name: &str, value: &str) -> RedisResult<Value> {
    cmd("CONFIG").arg("SET").arg(name).arg(value).query(c)
}

/// Grant and release `key` on `server` as fast as pipelining allows, for `run`; every token.
fn hammer(server: &Server, key: &str, run: Duration) -> Vec<i64> {
    let mut c = server.client();
    let mut tokens = Vec::new();
    let end = Instant::now() + run;
    while Instant::now() < end {
        let mut pipe = redis::pipe();
        for _ in 0..50 {
            pipe.cmd("DLOCK.ACQUIRE").arg(key).arg("w").arg(60_000);
            pipe.cmd("DLOCK.RELEASE").arg(key).arg("w");
        }
        let replies: Vec<i64> = pipe.query(&mut c).unwrap();
        tokens.extend(replies.iter().step_by(2));
    }
    tokens
}

/// Both servers grant the same key at once; the tokens of each.
fn hammer_both(a: &Server, b: &Server, key: &str) -> (Vec<i64>, Vec<i64>) {
    std::thread::scope(|s| {
        let one = s.spawn(|| hammer(a, key, Duration::from_millis(400)));
        let two = s.spawn(|| hammer(b, key, Duration::from_millis(400)));
        (one.join().unwrap(), two.join().unwrap())
    })
}

/// The two servers' tokens never meet, each carries its server's id, and the run really did
/// grant in the same millisecond and sequence on both (where tokens used to be equal).
fn assert_apart(one: &[i64], one_id: i64, two: &[i64], two_id: i64) {
    assert!(one.iter().all(|t| node_of(*t) == one_id), "{one:?}");
    assert!(two.iter().all(|t| node_of(*t) == two_id), "{two:?}");
    let mut seen = HashSet::new();
    for token in one.iter().chain(two) {
        assert!(seen.insert(*token), "token {token} issued twice");
    }
    let slots: HashSet<i64> = one.iter().map(|t| t >> 4).collect();
    let same_slot = two.iter().filter(|t| slots.contains(&(*t >> 4))).count();
    assert!(
        same_slot > 0,
        "no grant shared a millisecond and sequence with the other server"
    );
}

#[test]
fn servers_with_distinct_node_ids_never_issue_equal_tokens() {
    let a = Server::with_module_args(&["node-id", "1"], &[]);
    let b = Server::with_module_args(&["node-id", "2"], &[]);
    let (one, two) = hammer_both(&a, &b, "job");
    assert!(one.len() > 1_000 && two.len() > 1_000);
    assert_apart(&one, 1, &two, 2);
    for tokens in [&one, &two] {
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens rise");
    }
}

#[test]
fn tokens_count_from_the_wall_clock_in_the_new_layout() {
    let server = Server::with_module_args(&["node-id", "5"], &[]);
    let mut c = server.client();
    let epoch_ms: i64 = 1_735_689_600_000;
    let now_ms = || {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    };
    let before = now_ms();
    let token = grant(&mut c, "k", "w", 1_000);
    let after = now_ms();
    let issued = token / TICKS_PER_MS + epoch_ms;
    assert!(
        (before..=after).contains(&issued),
        "{before} {issued} {after}"
    );
    assert_eq!(node_of(token), 5);
    // A token of the first format (4096 per ms, no node id) from this very millisecond is
    // far below.
    assert!((after - epoch_ms) * 4096 + 4095 < token);
    // Resources in Lua and JavaScript compare tokens as doubles: they must be exact there.
    assert!(token < 1 << 53);
    assert_ne!(token as f64, (token - 1) as f64);
}

#[test]
fn node_id_is_set_by_config_set_redis_conf_and_loadmodule() {
    let server = Server::start();
    let mut c = server.client();
    assert_eq!(config_get(&mut c, "dlock.node-id"), "-1");
    let random = node_of(grant(&mut c, "k", "w", 60_000));
    assert_eq!(release(&mut c, "k", "w"), 1);
    assert_eq!(
        config_set(&mut c, "dlock.node-id", "7").unwrap(),
        Value::Okay
    );
    assert_eq!(config_get(&mut c, "dlock.node-id"), "7");
    let token = grant(&mut c, "k", "w", 60_000);
    assert_eq!(node_of(token), 7);
    assert_eq!(release(&mut c, "k", "w"), 1);
    // Back to "random": the id drawn when the module loaded.
    config_set(&mut c, "dlock.node-id", "-1").unwrap();
    let next = grant(&mut c, "k", "w", 60_000);
    assert_eq!(node_of(next), random);
    assert!(next > token);

    for bad in ["16", "-2", "256", "x"] {
        let err = error_of(config_set(&mut c, "dlock.node-id", bad));
        assert!(
            err.starts_with("ERR CONFIG SET failed (possibly related to argument 'dlock.node-id')"),
            "{bad}: {err}"
        );
        if bad != "x" {
            assert!(err.contains("between -1 and 15"), "{bad}: {err}");
        }
    }
    assert_eq!(config_get(&mut c, "dlock.node-id"), "-1");

    let conf = Server::with_config(&[("dlock.node-id", "9")]);
    let mut c = conf.client();
    assert_eq!(config_get(&mut c, "dlock.node-id"), "9");
    assert_eq!(node_of(grant(&mut c, "k", "w", 1_000)), 9);

    let args = Server::with_module_args(&["dlock.node-id", "15"], &[]);
    let mut c = args.client();
    assert_eq!(config_get(&mut c, "dlock.node-id"), "15");
    assert_eq!(node_of(grant(&mut c, "k", "w", 1_000)), 15);
}

#[test]
fn random_node_ids_differ_between_servers_often_enough() {
    // With 16 ids two servers agree 1 time in 16: eight all agreeing is one in 268 million.
    let servers: Vec<Server> = (0..8).map(|_| Server::start()).collect();
    let ids: HashSet<i64> = servers
        .iter()
        .map(|s| node_of(grant(&mut s.client(), "k", "w", 1_000)))
        .collect();
    assert!(ids.len() > 1, "{ids:?}");
}

#[test]
fn a_bad_node_id_or_lead_refuses_to_load() {
    for (args, line) in [
        (
            &["node-id", "16"][..],
            "dlock: cannot load: node-id must be an integer from -1 to 15, not '16'",
        ),
        (
            &["max-token-lead", "-1"][..],
            "dlock: cannot load: max-token-lead must be an integer from 0 to 9223372036854775807, not '-1'",
        ),
    ] {
        let mut server = Server::prepare(&[], Some(args));
        assert!(!server.try_start(), "started with {args:?}");
        let log = server.log();
        assert!(log.contains(line), "{args:?}: {log}");
    }
    let mut server = Server::prepare(&[("dlock.node-id", "300")], Some(&[]));
    assert!(!server.try_start(), "started with dlock.node-id 300");
}

#[test]
fn max_token_lead_has_a_default_and_a_range() {
    let server = Server::start();
    let mut c = server.client();
    assert_eq!(config_get(&mut c, "dlock.max-token-lead"), "3600000");
    assert_eq!(
        config_set(&mut c, "dlock.max-token-lead", "0").unwrap(),
        Value::Okay
    );
    assert_eq!(config_get(&mut c, "dlock.max-token-lead"), "0");
    config_set(&mut c, "dlock.max-token-lead", "60000").unwrap();
    assert_eq!(config_get(&mut c, "dlock.max-token-lead"), "60000");
    let err = error_of(config_set(&mut c, "dlock.max-token-lead", "-1"));
    assert!(
        err.starts_with(
            "ERR CONFIG SET failed (possibly related to argument 'dlock.max-token-lead')"
        ),
        "{err}"
    );
    let with_arg = Server::with_module_args(&["max-token-lead", "120000"], &[]);
    assert_eq!(
        config_get(&mut with_arg.client(), "dlock.max-token-lead"),
        "120000"
    );
}

#[test]
fn a_promoted_replica_issues_above_its_old_master_and_apart_from_it() {
    let master = Server::with_module_args(&["node-id", "1"], &[]);
    let replica = Server::with_module_args(&["node-id", "2"], &[]);
    replicate_from(&replica, &master);
    let mut m = master.client();
    let mut before = HashMap::new();
    for i in 0..2_000 {
        let key = format!("k{}", i % 20);
        before.insert(key.clone(), grant(&mut m, &key, "w", 60_000));
        assert_eq!(release(&mut m, &key, "w"), 1);
    }
    let highest = *before.values().max().unwrap();
    assert!(before.values().all(|t| node_of(*t) == 1));
    wait_for_replica(&mut m);

    // Split brain: the replica is promoted while the old master still serves.
    let mut r = replica.client();
    let _: () = cmd("REPLICAOF").arg("NO").arg("ONE").query(&mut r).unwrap();
    let first = grant(&mut r, "k0", "w", 60_000);
    assert!(first > highest, "{first} after promotion, {highest} before");
    assert_eq!(node_of(first), 2);
    assert_eq!(release(&mut r, "k0", "w"), 1);

    let (old, new) = hammer_both(&master, &replica, "k1");
    assert_apart(&old, 1, &new, 2);
    assert!(new.iter().all(|t| *t > highest));
}
