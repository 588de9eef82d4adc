//! Locks survive DEBUG RELOAD, RDB and AOF restarts exactly, and tokens are never reissued,
//! even after restarts from a snapshot older than the last grants.

mod common;

use common::*;

type Observed = Vec<Option<(String, i64, i64, i64)>>;

/// Everything a client can observe of the locks on `keys`: owner, token, holds, and the
/// absolute lease end (`PEXPIRETIME`, exact: it must not move across a restart).
fn snapshot(c: &mut Connection, keys: &[&str]) -> Observed {
    keys.iter()
        .map(|k| {
            info(c, k).map(|(owner, token, _, holds)| {
                let lease_end: i64 = cmd("PEXPIRETIME").arg(*k).query(c).unwrap();
                (owner, token, holds, lease_end)
            })
        })
        .collect()
}

/// A mix of states: held, re-entered, extended, partly released, released, generated owner.
fn make_locks(c: &mut Connection) -> i64 {
    grant(c, "plain", "w1", 120_000);
    grant(c, "reentered", "w2", 120_000);
    grant(c, "reentered", "w2", 90_000);
    grant(c, "reentered", "w2", 100_000);
    assert_eq!(release(c, "reentered", "w2"), 1);
    grant(c, "extended", "w3", 1_000);
    assert_eq!(extend(c, "extended", "w3", 200_000), 1);
    grant(c, "released", "w4", 120_000);
    assert_eq!(release(c, "released", "w4"), 1);
    let generated: (i64, String) = cmd("DLOCK.ACQUIRE")
        .arg("generated")
        .arg("*")
        .arg(120_000)
        .query(c)
        .unwrap();
    generated.0
}

const KEYS: [&str; 5] = ["plain", "reentered", "extended", "released", "generated"];

fn last_token(c: &mut Connection) -> i64 {
    let t = grant(c, "probe", "p", 60_000);
    assert_eq!(release(c, "probe", "p"), 1);
    t
}

#[test]
fn debug_reload_keeps_every_lock_and_the_token_clock() {
    let server = Server::start();
    let mut c = server.client();
    make_locks(&mut c);
    let last = last_token(&mut c);
    let before = snapshot(&mut c, &KEYS);
    assert_eq!(before[1].as_ref().map(|s| s.2), Some(2));
    let _: () = cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
    assert_eq!(snapshot(&mut c, &KEYS), before);
    assert!(last_token(&mut c) > last);
}

fn aof_restart_keeps_locks(preamble: &str) {
    let mut server = Server::with_config(&[
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("aof-use-rdb-preamble", preamble),
    ]);
    let mut c = server.client();
    grant(&mut c, "before-rewrite", "w0", 120_000);
    grant(&mut c, "before-rewrite", "w0", 120_000);
    let _: String = cmd("BGREWRITEAOF").query(&mut c).unwrap();
    wait_until("the AOF rewrite", || {
        let info: String = cmd("INFO").arg("persistence").query(&mut c).unwrap();
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    });
    make_locks(&mut c);
    let keys = [&KEYS[..], &["before-rewrite"]].concat();
    let last = last_token(&mut c);
    let before = snapshot(&mut c, &keys);
    drop(c);
    server.kill9();
    server.restart();
    let mut c = server.client();
    assert_eq!(snapshot(&mut c, &keys), before);
    assert!(last_token(&mut c) > last);
}

#[test]
fn aof_restart_with_rdb_preamble_keeps_locks() {
    aof_restart_keeps_locks("yes");
}

#[test]
fn aof_restart_without_rdb_preamble_keeps_locks() {
    aof_restart_keeps_locks("no");
}

#[test]
fn rdb_restart_keeps_locks() {
    let mut server = Server::start();
    let mut c = server.client();
    make_locks(&mut c);
    let last = last_token(&mut c);
    let before = snapshot(&mut c, &KEYS);
    let _: () = cmd("SAVE").query(&mut c).unwrap();
    drop(c);
    server.kill9();
    server.restart();
    let mut c = server.client();
    assert_eq!(snapshot(&mut c, &KEYS), before);
    assert!(last_token(&mut c) > last);
}

#[test]
fn restarts_from_a_stale_rdb_never_reissue_a_token() {
    let mut server = Server::start();
    let mut c = server.client();
    let saved = grant(&mut c, "kept", "w1", 120_000);
    let _: () = cmd("SAVE").query(&mut c).unwrap();
    // Grants after the snapshot: lost by the crash, but their tokens may be in use.
    let mut lost = 0;
    for i in 0..200 {
        lost = grant(&mut c, &format!("lost{i}"), "w", 60_000);
    }
    drop(c);
    server.kill9();

    server.restart();
    let mut c = server.client();
    assert_eq!(info(&mut c, "kept").map(|i| i.1), Some(saved));
    assert_eq!(info(&mut c, "lost0"), None);
    let mut lost_again = 0;
    for i in 0..200 {
        let token = grant(&mut c, &format!("again{i}"), "w", 60_000);
        assert!(token > lost, "token {token} reissued after {lost}");
        lost_again = token;
    }
    drop(c);
    server.kill9();

    // The same old snapshot a second time: above both lost generations.
    server.restart();
    let mut c = server.client();
    assert_eq!(info(&mut c, "again0"), None);
    let token = grant(&mut c, "third", "w", 60_000);
    assert!(
        token > lost_again,
        "token {token} reissued after {lost_again}"
    );
}

/// Holders of a big shared lock and a big semaphore, every field (ttl left out: it moves).
fn crowd(c: &mut Connection) -> Vec<Vec<Holder>> {
    holders_without_ttl(c, &["crowd:rw", "crowd:sem", "crowd:one"])
}

/// A rewritten AOF without the RDB preamble recreates each key 64 holds a command: keys of
/// many holders, of several chunks and a remainder, come back exactly.
#[test]
fn a_rewritten_aof_recreates_locks_of_many_holders() {
    let mut server = Server::with_config(&[
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("aof-use-rdb-preamble", "no"),
    ]);
    let mut c = server.client();
    let mut pipe = redis::pipe();
    for i in 0..150 {
        pipe.cmd("DLOCK.ACQUIRE")
            .arg("crowd:rw")
            .arg(format!("r{i}"))
            .arg(120_000 + i)
            .arg("SHARED")
            .ignore();
    }
    for i in 0..70 {
        pipe.cmd("DLOCK.ACQUIRE")
            .arg("crowd:sem")
            .arg(format!("s{i}"))
            .arg(120_000)
            .arg(&["SEMAPHORE", "100", "PERMITS", "1"])
            .ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    grant(&mut c, "crowd:one", "w", 120_000);
    grant(&mut c, "crowd:one", "w", 120_000);
    let _: i64 = cmd("DLOCK.ACQUIRE")
        .arg("crowd:one")
        .arg("w")
        .arg(120_000)
        .arg("SHARED")
        .query(&mut c)
        .unwrap();
    let before = crowd(&mut c);
    assert_eq!(
        before.iter().map(Vec::len).collect::<Vec<_>>(),
        [150, 70, 2]
    );
    let digest_before = digest(&mut c);
    let _: String = cmd("BGREWRITEAOF").query(&mut c).unwrap();
    wait_until("the AOF rewrite", || {
        let info: String = cmd("INFO").arg("persistence").query(&mut c).unwrap();
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    });
    drop(c);
    server.kill9();
    server.restart();
    let mut c = server.client();
    assert_eq!(crowd(&mut c), before);
    assert_eq!(digest(&mut c), digest_before);
}

/// An RDB written by one server with dlock loads in the next (Redis 7.0 → 7.2 → 7.4, and
/// Redis 7.2 → Valkey 8). Needs the server binaries, so it runs from `make compat` with
/// DLOCK_UPGRADE_CHAIN="bin1 bin2 ..." (each must read the previous one's RDB).
#[test]
#[ignore = "needs several server binaries: run through `make compat`"]
fn locks_survive_an_upgrade_chain_through_rdb() {
    let chain = std::env::var("DLOCK_UPGRADE_CHAIN").expect("DLOCK_UPGRADE_CHAIN");
    let binaries: Vec<&str> = chain.split_whitespace().collect();
    assert!(binaries.len() >= 2, "an upgrade needs two servers: {chain}");
    let mut server = Server::prepare(&[], Some(&[]));
    server.set_binary(binaries[0]);
    assert!(server.try_start(), "{} did not start", binaries[0]);
    let mut expected: Vec<(String, String, i64, i64)> = vec![];
    let mut expected_holders: Vec<(String, Vec<Holder>)> = vec![];
    let mut last_token = 0;
    for (step, binary) in binaries.iter().enumerate() {
        let mut c = server.client();
        for (key, owner, token, holds) in &expected {
            assert_eq!(
                info(&mut c, key.as_str()).map(|i| (i.0, i.1, i.3)),
                Some((owner.clone(), *token, *holds)),
                "{key} after loading into {binary}"
            );
        }
        for (key, holders_before) in &expected_holders {
            let now: Vec<Holder> = holders(&mut c, key)
                .into_iter()
                .map(|h| Holder { ttl: 0, ..h })
                .collect();
            assert_eq!(&now, holders_before, "{key} after loading into {binary}");
        }
        // Shared holders and semaphore permits ride along too.
        for (suffix, words) in [
            ("rw", &["SHARED"][..]),
            ("sem", &["SEMAPHORE", "5", "PERMITS", "2"][..]),
        ] {
            let key = format!("step{step}:{suffix}");
            for reader in ["r1", "r2"] {
                let _: i64 = cmd("DLOCK.ACQUIRE")
                    .arg(&key)
                    .arg(reader)
                    .arg(3_600_000)
                    .arg(words)
                    .query(&mut c)
                    .unwrap();
            }
            let now: Vec<Holder> = holders(&mut c, &key)
                .into_iter()
                .map(|h| Holder { ttl: 0, ..h })
                .collect();
            expected_holders.push((key, now));
        }
        let key = format!("step{step}");
        let token = grant(&mut c, &key, &format!("owner{step}"), 3_600_000);
        grant(&mut c, &key, &format!("owner{step}"), 3_600_000);
        assert!(token > last_token, "{binary} reissued a token");
        last_token = token;
        expected.push((key, format!("owner{step}"), token, 2));
        let _: () = cmd("SAVE").query(&mut c).unwrap();
        drop(c);
        server.kill9();
        if let Some(next) = binaries.get(step + 1) {
            server.set_binary(next);
            server.restart();
        }
    }
}

/// The server's version as (major, minor), from `INFO server` (Valkey 8 reports a Redis-compatible
/// `redis_version` of 7.2.4).
fn server_version(c: &mut Connection) -> (u32, u32) {
    let info: String = cmd("INFO").arg("server").query(c).unwrap();
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap()
        .trim()
        .to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// An RDB written by a server whose token clock is still 0 loads without the module on Redis
/// 7.2+ (dlock leaves its aux field out); 7.0 writes the field anyway, and a server without the
/// module refuses the file with Redis's own message (README, "RDB files and the module").
#[test]
fn an_rdb_without_tokens_needs_the_module_only_on_redis_7_0() {
    let server = Server::start();
    let mut c = server.client();
    let _: () = cmd("SET").arg("plain").arg("value").query(&mut c).unwrap();
    let _: () = cmd("SAVE").query(&mut c).unwrap();
    let newer = server_version(&mut c) >= (7, 2);
    let mut plain = Server::prepare(&[], None);
    std::fs::copy(server.dir.join("dump.rdb"), plain.dir.join("dump.rdb")).unwrap();
    let started = plain.try_start();
    if newer {
        assert!(started, "{}", plain.log());
        let value: String = cmd("GET").arg("plain").query(&mut plain.client()).unwrap();
        assert_eq!(value, "value");
    } else {
        assert!(!started);
        assert!(
            plain.log().contains(
                "The RDB file contains AUX module data I can't load: no matching module 'dlocklock'"
            ),
            "{}",
            plain.log()
        );
    }
}
