//! Shared (read-write) locks and counting semaphores: `DLOCK.ACQUIRE ... SHARED` and
//! `... SEMAPHORE limit [PERMITS n]`, each holder with its own lease.

mod common;

use std::time::{Duration, Instant};

use common::*;

const NOT_A_LOCK: &str = "WRONGTYPE the key holds a semaphore, not a lock";
const NOT_A_SEMAPHORE: &str = "WRONGTYPE the key holds a lock, not a semaphore";

fn shared(c: &mut Connection, key: &str, owner: &str, ttl: i64) -> Value {
    cmd("DLOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(ttl)
        .arg("SHARED")
        .query(c)
        .expect("SHARED acquire")
}

fn permits(c: &mut Connection, key: &str, owner: &str, limit: u32, n: u32) -> Value {
    cmd("DLOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(60_000)
        .arg("SEMAPHORE")
        .arg(limit)
        .arg("PERMITS")
        .arg(n)
        .query(c)
        .expect("SEMAPHORE acquire")
}

/// A connection blocked in `DLOCK.ACQUIRE key owner ttl <mode words> WAIT timeout`.
fn waiting_in(server: &Server, key: &str, owner: &str, mode: &[&str]) -> Connection {
    let mut c = server.client();
    let command = cmd("DLOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(60_000)
        .arg(mode)
        .arg("WAIT")
        .arg(10_000)
        .get_packed_command();
    c.send_packed_command(&command).unwrap();
    c
}

/// The reply of a blocked connection, within 5 s.
fn granted(c: &mut Connection) -> i64 {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match c.recv_response().and_then(Value::extract_error) {
        Ok(Value::Int(token)) => token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn field(c: &mut Connection, key: &str, name: &str) -> String {
    info_fields(c, key)
        .and_then(|f| f.into_iter().find(|(n, _)| n == name))
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn token_of(v: Value) -> i64 {
    match v {
        Value::Int(t) => t,
        other => panic!("expected a token, got {other:?}"),
    }
}

#[test]
fn modes_conflict_like_a_read_write_lock_and_waiters_get_in_when_it_frees() {
    let server = Server::start();
    let mut a = server.client();
    let mut b = server.client();
    // Readers share.
    let r1 = token_of(shared(&mut a, "rr", "a", 60_000));
    let r2 = token_of(shared(&mut b, "rr", "b", 60_000));
    assert!(r2 > r1);
    assert_eq!(field(&mut a, "rr", "mode"), "shared");
    assert_eq!(field(&mut a, "rr", "holders"), "2");
    // A writer waits for every reader.
    assert_eq!(acquire(&mut b, "rr", "w", 60_000), Value::Nil);
    let mut writer = waiting_in(&server, "rr", "w", &[]);
    wait_until("the writer to queue", || waiters(&mut a, "rr") == 1);
    assert_eq!(release(&mut a, "rr", "a"), 1);
    // Hand-overs happen inside RELEASE: once it replied, whoever is still queued waits.
    assert_eq!(waiters(&mut a, "rr"), 1);
    assert_eq!(release(&mut b, "rr", "b"), 1);
    let w = granted(&mut writer);
    assert!(w > r2);
    assert_eq!(field(&mut a, "rr", "mode"), "exclusive");
    // Readers wait for the writer.
    assert_eq!(shared(&mut a, "rr", "a", 60_000), Value::Nil);
    let mut reader = waiting_in(&server, "rr", "a", &["SHARED"]);
    wait_until("the reader to queue", || waiters(&mut a, "rr") == 1);
    assert_eq!(release(&mut b, "rr", "w"), 1);
    assert!(granted(&mut reader) > w);

    // Locks and semaphores do not mix.
    let _ = permits(&mut a, "sem", "a", 2, 1);
    for (key, words, error) in [
        ("sem", &["SHARED"][..], NOT_A_LOCK),
        ("sem", &[][..], NOT_A_LOCK),
        ("rr", &["SEMAPHORE", "2"][..], NOT_A_SEMAPHORE),
    ] {
        let err = error_of(
            cmd("DLOCK.ACQUIRE")
                .arg(key)
                .arg("x")
                .arg(1_000)
                .arg(words)
                .query(&mut a),
        );
        assert_eq!(err, error, "{key} {words:?}");
    }
}

#[test]
fn queued_readers_enter_together_and_a_queued_writer_stops_later_readers() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "w1", 60_000);
    let mut r1 = waiting_in(&server, "k", "r1", &["SHARED"]);
    let mut r2 = waiting_in(&server, "k", "r2", &["SHARED"]);
    wait_until("readers to queue", || waiters(&mut c, "k") == 2);
    let mut w2 = waiting_in(&server, "k", "w2", &[]);
    wait_until("the writer to queue", || waiters(&mut c, "k") == 3);
    let mut r3 = waiting_in(&server, "k", "r3", &["SHARED"]);
    wait_until("the late reader to queue", || waiters(&mut c, "k") == 4);

    assert_eq!(release(&mut c, "k", "w1"), 1);
    let (t1, t2) = (granted(&mut r1), granted(&mut r2));
    assert!(t2 > t1);
    assert_eq!(field(&mut c, "k", "holders"), "2");
    assert_eq!(waiters(&mut c, "k"), 2);
    // The queued writer keeps a new reader out too (no writer starvation).
    assert_eq!(shared(&mut c, "k", "r4", 60_000), Value::Nil);

    assert_eq!(release(&mut c, "k", "r1"), 1);
    assert_eq!(release(&mut c, "k", "r2"), 1);
    let tw = granted(&mut w2);
    assert!(tw > t2);
    assert_eq!(waiters(&mut c, "k"), 1);
    assert_eq!(release(&mut c, "k", "w2"), 1);
    assert!(granted(&mut r3) > tw);
}

#[test]
fn semaphore_waiters_are_served_in_order_and_a_large_request_is_not_starved() {
    let server = Server::start();
    let mut c = server.client();
    let first = token_of(permits(&mut c, "pool", "a", 3, 2));
    assert_eq!(field(&mut c, "pool", "mode"), "semaphore");
    assert_eq!(field(&mut c, "pool", "limit"), "3");
    let mut big = waiting_in(&server, "pool", "big", &["SEMAPHORE", "3", "PERMITS", "3"]);
    wait_until("the big request to queue", || waiters(&mut c, "pool") == 1);
    let mut small = waiting_in(&server, "pool", "small", &["SEMAPHORE", "3"]);
    wait_until("the small request to queue", || {
        waiters(&mut c, "pool") == 2
    });
    // One permit is free, but the big request is first in line: nobody overtakes it.
    assert_eq!(waiters(&mut c, "pool"), 2);
    assert_eq!(permits(&mut c, "pool", "other", 3, 1), Value::Nil);
    assert_eq!(release(&mut c, "pool", "a"), 1);
    let b = granted(&mut big);
    assert!(b > first);
    assert_eq!(waiters(&mut c, "pool"), 1);
    assert_eq!(release(&mut c, "pool", "big"), 1);
    assert!(granted(&mut small) > b);
    assert_eq!(
        holders(&mut c, "pool")
            .iter()
            .map(|h| (h.owner.as_str(), h.holds, h.mode.as_str()))
            .collect::<Vec<_>>(),
        [("small", 1, "semaphore")]
    );
}

#[test]
fn every_holder_has_its_own_lease_and_its_end_wakes_waiters_at_once() {
    let server = Server::start();
    let mut c = server.client();
    permits(&mut c, "sem", "long", 2, 1);
    let short: i64 = cmd("DLOCK.ACQUIRE")
        .arg(&["sem", "short", "150", "SEMAPHORE", "2"][..])
        .query(&mut c)
        .unwrap();
    let pttl: i64 = cmd("PTTL").arg("sem").query(&mut c).unwrap();
    assert!(
        pttl > 50_000,
        "the key lives as long as the latest lease: {pttl}"
    );
    let mut waiter = waiting_in(&server, "sem", "next", &["SEMAPHORE", "2"]);
    wait_until("the waiter to queue", || waiters(&mut c, "sem") == 1);
    let token = granted(&mut waiter);
    let lease_end = short / 8192 + 1_735_689_600_000 + 150;
    let granted_at = token / 8192 + 1_735_689_600_000;
    assert!(
        (lease_end..lease_end + 100).contains(&granted_at),
        "granted {} ms after the lease ended",
        granted_at - lease_end
    );
    let owners: Vec<String> = holders(&mut c, "sem")
        .into_iter()
        .map(|h| h.owner)
        .collect();
    assert_eq!(owners, ["long", "next"]);

    // Without waiters too, an ended hold is removed at its lease end (counted and announced
    // then), not when the key is next touched.
    let expired = |c: &mut Connection| -> i64 {
        let info: String = cmd("INFO").arg("dlock").query(c).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("dlock_leases_expired:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let before = expired(&mut c);
    shared(&mut c, "alone", "brief", 100);
    shared(&mut c, "alone", "lasting", 60_000);
    let started = Instant::now();
    wait_until("the brief hold to be removed", || {
        expired(&mut c) == before + 1
    });
    assert!(started.elapsed() < Duration::from_millis(600));
    assert_eq!(field(&mut c, "alone", "holders"), "1");

    // Shared holders too: a writer gets in when the last reader's lease ends.
    shared(&mut c, "rw", "r1", 100);
    shared(&mut c, "rw", "r2", 200);
    let started = Instant::now();
    let mut writer = waiting_in(&server, "rw", "w", &[]);
    granted(&mut writer);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_millis(600),
        "{waited:?}"
    );
}

#[test]
fn reentry_downgrade_and_upgrade_follow_the_rules() {
    let server = Server::start();
    let mut c = server.client();
    // Re-entry in the same mode: same token, one more hold.
    let r = token_of(shared(&mut c, "k", "a", 60_000));
    assert_eq!(token_of(shared(&mut c, "k", "a", 60_000)), r);
    assert_eq!(field(&mut c, "k", "holds"), "2");
    // Upgrade while another owner reads: refused, it would deadlock.
    shared(&mut c, "k", "b", 60_000);
    assert_eq!(
        error_of(
            cmd("DLOCK.ACQUIRE")
                .arg("k")
                .arg("a")
                .arg(1_000)
                .query(&mut c)
        ),
        "ERR cannot upgrade: other owners hold the lock shared, and waiting for them would deadlock"
    );
    assert_eq!(release(&mut c, "k", "b"), 1);
    // Alone, the reader upgrades: a new exclusive hold next to its shared one.
    let w = grant(&mut c, "k", "a", 60_000);
    assert!(w > r);
    assert_eq!(field(&mut c, "k", "mode"), "exclusive");
    assert_eq!(shared(&mut c, "k", "b", 60_000), Value::Nil);
    // RELEASE gives back the exclusive hold first: a downgrade, the reader stays.
    assert_eq!(release(&mut c, "k", "a"), 1);
    assert_eq!(field(&mut c, "k", "mode"), "shared");
    assert_eq!(field(&mut c, "k", "token"), r.to_string());
    assert!(matches!(shared(&mut c, "k", "b", 60_000), Value::Int(_)));

    // Downgrade: a writer takes a shared hold of its own lock.
    let w = grant(&mut c, "d", "a", 60_000);
    let s = token_of(shared(&mut c, "d", "a", 60_000));
    assert!(s > w);
    assert_eq!(release(&mut c, "d", "a"), 1);
    assert_eq!(field(&mut c, "d", "mode"), "shared");
    assert!(matches!(
        shared(&mut c, "d", "other", 60_000),
        Value::Int(_)
    ));

    // A semaphore holder re-entering adds permits if they fit, same token.
    let t = token_of(permits(&mut c, "s", "a", 3, 2));
    assert_eq!(token_of(permits(&mut c, "s", "a", 3, 1)), t);
    assert_eq!(field(&mut c, "s", "holds"), "3");
    assert_eq!(permits(&mut c, "s", "a", 3, 1), Value::Nil);
    // RELEASE gives back all of an owner's permits.
    assert_eq!(release(&mut c, "s", "a"), 1);
    assert_eq!(info(&mut c, "s"), None);
}

#[test]
fn extend_and_info_work_per_holder() {
    let server = Server::start();
    let mut c = server.client();
    let ta = token_of(shared(&mut c, "k", "a", 10_000));
    let tb = token_of(shared(&mut c, "k", "b", 10_000));
    assert_eq!(extend(&mut c, "k", "b", 600_000), 1);
    let all = holders(&mut c, "k");
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].owner.as_str(), all[0].token), ("a", ta));
    assert_eq!((all[1].owner.as_str(), all[1].token), ("b", tb));
    assert!(all[0].ttl <= 10_000 && all[1].ttl > 500_000, "{all:?}");
    assert!(all.iter().all(|h| h.mode == "shared" && h.holds == 1));
    // The fields before `holders` describe the longest-standing holder.
    assert_eq!(field(&mut c, "k", "owner"), "a");
    assert_eq!(extend(&mut c, "k", "nobody", 1_000), 0);
    let pttl: i64 = cmd("PTTL").arg("k").query(&mut c).unwrap();
    assert!(pttl > 500_000);
}

#[test]
fn bad_mode_arguments_get_clear_errors() {
    let server = Server::start();
    let mut c = server.client();
    permits(&mut c, "sem", "a", 3, 1);
    let limit = "ERR limit must be an integer from 1 to 4294967294";
    let permits_err = "ERR permits must be a positive integer";
    for (words, error) in [
        (&["SHARED", "SHARED"][..], "ERR syntax error"),
        (&["SHARED", "SEMAPHORE", "3"][..], "ERR syntax error"),
        (&["PERMITS", "1"][..], "ERR syntax error"),
        (&["SHARED", "PERMITS", "1"][..], "ERR syntax error"),
        (&["SEMAPHORE"][..], "ERR syntax error"),
        (&["SEMAPHORE", "0"][..], limit),
        (&["SEMAPHORE", "-1"][..], limit),
        (&["SEMAPHORE", "abc"][..], limit),
        (&["SEMAPHORE", "4294967295"][..], limit),
        (&["SEMAPHORE", "3", "PERMITS", "0"][..], permits_err),
        (&["SEMAPHORE", "3", "PERMITS", "x"][..], permits_err),
        (
            &["SEMAPHORE", "3", "PERMITS", "4"][..],
            "ERR permits exceed the semaphore's limit",
        ),
        (
            &["SEMAPHORE", "4"][..],
            "ERR limit does not match the semaphore's limit",
        ),
    ] {
        let err = error_of(
            cmd("DLOCK.ACQUIRE")
                .arg("sem")
                .arg("b")
                .arg(1_000)
                .arg(words)
                .query(&mut c),
        );
        assert_eq!(err, error, "{words:?}");
    }
    assert_eq!(field(&mut c, "sem", "holders"), "1");
}

#[test]
fn every_mode_survives_reload_restart_dump_and_replication() {
    let mut master = Server::with_config(&[
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("aof-use-rdb-preamble", "no"),
    ]);
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    shared(&mut m, "rw", "r1", 600_000);
    shared(&mut m, "rw", "r1", 600_000);
    shared(&mut m, "rw", "r2", 500_000);
    grant(&mut m, "down", "a", 600_000);
    shared(&mut m, "down", "a", 600_000);
    permits(&mut m, "sem", "a", 5, 2);
    permits(&mut m, "sem", "b", 5, 3);
    let keys = ["rw", "down", "sem"];
    let state = |c: &mut Connection| holders_without_ttl(c, &keys);
    let before = state(&mut m);
    assert_eq!(before[0].len(), 2);
    assert_eq!(before[1].len(), 2);
    assert_eq!(before[2].iter().map(|h| h.holds).sum::<i64>(), 5);

    wait_for_replica(&mut m);
    let mut r = replica.client();
    assert_eq!(state(&mut r), before);
    assert_eq!(digest(&mut r), digest(&mut m));

    let _: () = cmd("DEBUG").arg("RELOAD").query(&mut m).unwrap();
    assert_eq!(state(&mut m), before);
    for key in keys {
        let dump: Vec<u8> = cmd("DUMP").arg(key).query(&mut m).unwrap();
        let copy = format!("{key}:copy");
        let _: () = cmd("RESTORE")
            .arg(&copy)
            .arg(0)
            .arg(dump)
            .query(&mut m)
            .unwrap();
        let original: Vec<Holder> = holders(&mut m, key)
            .into_iter()
            .map(|h| Holder { ttl: 0, ..h })
            .collect();
        let restored: Vec<Holder> = holders(&mut m, &copy)
            .into_iter()
            .map(|h| Holder { ttl: 0, ..h })
            .collect();
        assert_eq!(restored, original);
    }
    // A rewritten AOF (no RDB preamble) recreates every hold with its mode.
    let _: String = cmd("BGREWRITEAOF").query(&mut m).unwrap();
    wait_until("the AOF rewrite", || {
        let info: String = cmd("INFO").arg("persistence").query(&mut m).unwrap();
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    });
    master.kill9();
    master.restart();
    let mut m = master.client();
    assert_eq!(state(&mut m), before);
}

#[test]
fn an_rdb_from_before_shared_modes_loads_as_exclusive_locks() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dlock-encver1.rdb"
    );
    let mut server = Server::prepare(&[], Some(&[]));
    std::fs::copy(fixture, server.dir.join("dump.rdb")).unwrap();
    assert!(server.try_start(), "{}", server.log());
    let mut c = server.client();
    let all = holders(&mut c, "fixture:lock");
    assert_eq!(all.len(), 1);
    assert_eq!(
        (
            all[0].owner.as_str(),
            all[0].token,
            all[0].holds,
            all[0].mode.as_str()
        ),
        ("fixture-owner", 245_600_489_803_776, 2, "exclusive")
    );
    // The token clock moved past the loaded token.
    assert!(grant(&mut c, "new", "x", 1_000) > 245_600_489_803_776);
}

#[test]
fn session_holds_work_in_every_mode() {
    let server = Server::start();
    let mut c = server.client();
    let mut reader = server.client();
    let _: i64 = cmd("DLOCK.ACQUIRE")
        .arg(&["rw", "r", "600000", "SHARED", "SESSION"][..])
        .query(&mut reader)
        .unwrap();
    let _: i64 = cmd("DLOCK.ACQUIRE")
        .arg(&["sem", "r", "600000", "SEMAPHORE", "1", "SESSION"][..])
        .query(&mut reader)
        .unwrap();
    assert_eq!(holders(&mut c, "rw")[0].session, 1);
    let mut writer = waiting_in(&server, "rw", "w", &[]);
    let mut next = waiting_in(&server, "sem", "n", &["SEMAPHORE", "1"]);
    wait_until("both to queue", || {
        waiters(&mut c, "rw") == 1 && waiters(&mut c, "sem") == 1
    });
    drop(reader);
    granted(&mut writer);
    granted(&mut next);
}

#[test]
fn shared_holders_leave_no_memory_behind() {
    let server = Server::with_config(&[("hz", "100")]);
    let mut c = server.client();
    let round = |c: &mut Connection| {
        let mut pipe = redis::pipe();
        for key in 0..50 {
            for owner in 0..40 {
                pipe.cmd("DLOCK.ACQUIRE")
                    .arg(format!("m:{key}"))
                    .arg(format!("reader-{owner}"))
                    .arg(60_000)
                    .arg("SHARED")
                    .ignore();
            }
        }
        let _: () = pipe.query(c).unwrap();
        assert_eq!(field(c, "m:0", "holders"), "40");
        let mut pipe = redis::pipe();
        for key in 0..50 {
            for owner in 0..40 {
                pipe.cmd("DLOCK.RELEASE")
                    .arg(format!("m:{key}"))
                    .arg(format!("reader-{owner}"))
                    .ignore();
            }
        }
        let _: () = pipe.query(c).unwrap();
        let keys: i64 = cmd("DBSIZE").query(c).unwrap();
        assert_eq!(keys, 0);
    };
    round(&mut c);
    let baseline = settled_used_memory(&mut c);
    for _ in 0..5 {
        round(&mut c);
    }
    let after = settled_used_memory(&mut c);
    assert!(
        (after - baseline).abs() * 100 < baseline,
        "used_memory {baseline} -> {after}"
    );
}

#[test]
fn a_waiter_that_gives_up_lets_the_ones_behind_it_in() {
    let server = Server::start();
    let mut c = server.client();
    shared(&mut c, "k", "reader", 60_000);
    // A writer waits 200 ms for the reader; a second reader queues behind it.
    let mut writer = server.client();
    let command = cmd("DLOCK.ACQUIRE")
        .arg(&["k", "writer", "60000", "WAIT", "200"][..])
        .get_packed_command();
    writer.send_packed_command(&command).unwrap();
    wait_until("the writer to queue", || waiters(&mut c, "k") == 1);
    let mut late = waiting_in(&server, "k", "late", &["SHARED"]);
    wait_until("the late reader to queue", || waiters(&mut c, "k") == 2);
    let started = Instant::now();
    writer
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(writer.recv_response().unwrap(), Value::Nil);
    // Once the writer has given up, nothing keeps the late reader out.
    granted(&mut late);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(field(&mut c, "k", "holders"), "2");
}

#[test]
fn a_downgrading_session_holder_loses_both_holds_when_it_disconnects() {
    let server = Server::start();
    let mut c = server.client();
    let mut holder = server.client();
    for words in [&["SESSION"][..], &["SHARED", "SESSION"][..]] {
        let _: i64 = cmd("DLOCK.ACQUIRE")
            .arg(&["k", "h", "600000"][..])
            .arg(words)
            .query(&mut holder)
            .unwrap();
    }
    let bound: Vec<(String, i64)> = holders(&mut c, "k")
        .into_iter()
        .map(|h| (h.mode, h.session))
        .collect();
    assert_eq!(bound, [("exclusive".into(), 1), ("shared".into(), 1)]);
    drop(holder);
    wait_until("both holds to go", || info(&mut c, "k").is_none());
}

#[test]
fn info_lists_the_first_holders_by_token_and_pages_through_the_rest() {
    let server = Server::start();
    let mut c = server.client();
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.cmd("DLOCK.ACQUIRE")
            .arg("big")
            .arg(format!("r{i}"))
            .arg(600_000)
            .arg("SHARED");
    }
    let tokens: Vec<i64> = pipe.query(&mut c).unwrap();
    let owners =
        |page: &[Holder]| -> Vec<String> { page.iter().map(|h| h.owner.clone()).collect() };
    let expected =
        |from: usize, to: usize| -> Vec<String> { (from..to).map(|i| format!("r{i}")).collect() };
    // By default: the first 16 by token, and how many there are in all.
    let first = holders_page(&mut c, "big", &[]);
    assert_eq!(owners(&first), expected(0, 16));
    assert_eq!(first[0].token, tokens[0]);
    assert_eq!(field(&mut c, "big", "holders_count"), "100");
    let reply: Vec<Value> = cmd("DLOCK.INFO").arg("big").query(&mut c).unwrap();
    assert_eq!(reply.len(), 20);
    assert_eq!(reply[19], Value::Int(100));
    assert_eq!(
        owners(&holders_page(&mut c, "big", &["HOLDERS", "3"])),
        expected(0, 3)
    );
    assert_eq!(owners(&holders(&mut c, "big")), expected(0, 100));
    // Pages of 30 after the last token seen put the whole list back together.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let mut options = vec!["holders".to_string(), "30".to_string()];
        if let Some(token) = after {
            options.extend(["after".to_string(), format!("{token}")]);
        }
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        let page = holders_page(&mut c, "big", &options);
        seen.extend(owners(&page));
        match page.last() {
            Some(last) if page.len() == 30 => after = Some(last.token),
            _ => break,
        }
    }
    assert_eq!(seen, expected(0, 100));
    // A holder that left is not listed, and the page goes on past its token.
    assert_eq!(release(&mut c, "big", "r1"), 1);
    let page = holders_page(
        &mut c,
        "big",
        &["AFTER", &tokens[0].to_string(), "HOLDERS", "2"],
    );
    assert_eq!(owners(&page), ["r2", "r3"]);
    assert_eq!(field(&mut c, "big", "holders_count"), "99");
    let last = tokens[99].to_string();
    assert!(holders_page(&mut c, "big", &["AFTER", &last]).is_empty());
}

#[test]
fn info_lists_a_semaphore_by_token_and_leaves_out_ended_holders() {
    let server = Server::start();
    let mut c = server.client();
    for i in 0..20 {
        let ttl = if i % 2 == 0 { 150 } else { 600_000 };
        let _: i64 = cmd("DLOCK.ACQUIRE")
            .arg("sem")
            .arg(format!("p{i}"))
            .arg(ttl)
            .arg("SEMAPHORE")
            .arg(1_000)
            .query(&mut c)
            .unwrap();
    }
    assert_eq!(field(&mut c, "sem", "holders_count"), "20");
    assert_eq!(holders_page(&mut c, "sem", &[]).len(), 16);
    wait_until("the short leases to end", || {
        field(&mut c, "sem", "holders_count") == "10"
    });
    let page = holders_page(&mut c, "sem", &[]);
    let owners: Vec<&str> = page.iter().map(|h| h.owner.as_str()).collect();
    assert_eq!(
        owners,
        [
            "p1", "p3", "p5", "p7", "p9", "p11", "p13", "p15", "p17", "p19"
        ]
    );
    assert!(
        page.iter()
            .all(|h| h.mode == "semaphore" && h.ttl > 500_000)
    );
    assert_eq!(field(&mut c, "sem", "limit"), "1000");
}

#[test]
fn info_options_are_checked() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "k", "w", 60_000);
    let run = |c: &mut Connection, args: &[&str]| -> String {
        error_of(cmd("DLOCK.INFO").arg("k").arg(args).query::<Value>(c))
    };
    let count = "ERR count must be a non-negative integer";
    for bad in ["-1", "x", "1.5", ""] {
        assert_eq!(run(&mut c, &["HOLDERS", bad]), count, "{bad:?}");
    }
    for bad in ["0", "-3", "y"] {
        assert_eq!(
            run(&mut c, &["AFTER", bad]),
            "ERR token must be a positive integer"
        );
    }
    for bad in [
        &["HOLDERS"][..],
        &["HOLDERS", "1", "HOLDERS", "2"],
        &["AFTER", "1", "AFTER", "2"],
        &["FULL"],
        &["HOLDERS", "1", "x"],
    ] {
        assert_eq!(run(&mut c, bad), "ERR syntax error", "{bad:?}");
    }
    // Options are case-insensitive, and a free key is nil whatever they say.
    let page = holders_page(&mut c, "k", &["holders", "1", "after", "1"]);
    assert_eq!((page.len(), page[0].token), (1, token));
    let free: Value = cmd("DLOCK.INFO")
        .arg("nope")
        .arg("HOLDERS")
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert_eq!(free, Value::Nil);
}
