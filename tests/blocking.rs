//! `DLOCK.ACQUIRE ... WAIT`: FIFO hand-over, wake-ups on every way a lock is freed, timeouts,
//! disconnects, and replication of grants made on wake-up.

mod common;

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;

const EPOCH_MS: i64 = 1_735_689_600_000;

/// A client blocked in `DLOCK.ACQUIRE key owner ttl WAIT timeout` on its own connection.
fn waiter(
    server: &Server,
    key: &str,
    owner: &str,
    ttl: i64,
    timeout: i64,
) -> JoinHandle<(Value, Duration)> {
    let handle = waiter_result(server, key, owner, ttl, timeout);
    thread::spawn(move || {
        let (reply, elapsed) = handle.join().expect("waiter thread");
        (reply.expect("blocked acquire"), elapsed)
    })
}

fn waiter_result(
    server: &Server,
    key: &str,
    owner: &str,
    ttl: i64,
    timeout: i64,
) -> JoinHandle<(RedisResult<Value>, Duration)> {
    let mut c = server.client();
    let (key, owner) = (key.to_string(), owner.to_string());
    thread::spawn(move || {
        let start = Instant::now();
        let reply = cmd("DLOCK.ACQUIRE")
            .arg(&key)
            .arg(&owner)
            .arg(ttl)
            .arg("WAIT")
            .arg(timeout)
            .query(&mut c);
        (reply, start.elapsed())
    })
}

fn wait_for_waiters(c: &mut Connection, key: &str, n: i64) {
    wait_until(&format!("{n} waiters on {key}"), || waiters(c, key) == n);
}

fn token(reply: &Value) -> i64 {
    match reply {
        Value::Int(t) => *t,
        other => panic!("expected a token, got {other:?}"),
    }
}

/// The server's wall-clock millisecond a token was issued at (8192 ticks per ms).
fn issued_at(token: i64) -> i64 {
    token / 8192 + EPOCH_MS
}

/// How the first waiter of a queue is blocked: the first 32 waiters of a queue are blocked on
/// the key itself ("keyed", Redis calls them when it is signalled) and the rest are parked
/// (the module grants them itself). The tests below run with either at the head.
#[derive(Clone, Copy, Debug)]
enum Head {
    Keyed,
    Parked,
}

const KEYED_WAITERS: i64 = 32;

/// Queue one waiter on `key` (with none queued yet) so that it is first and `head`: a parked
/// one queues behind 32 fillers that then disconnect.
fn first_waiter(
    server: &Server,
    c: &mut Connection,
    key: &str,
    owner: &str,
    (ttl, timeout): (i64, i64),
    head: Head,
) -> JoinHandle<(RedisResult<Value>, Duration)> {
    let fillers: Vec<Connection> = match head {
        Head::Keyed => vec![],
        Head::Parked => (0..KEYED_WAITERS)
            .map(|i| blocked_connection(server, key, &format!("filler{i}"), 60_000, 0))
            .collect(),
    };
    wait_for_waiters(c, key, fillers.len() as i64);
    let handle = waiter_result(server, key, owner, ttl, timeout);
    wait_for_waiters(c, key, fillers.len() as i64 + 1);
    drop(fillers);
    wait_for_waiters(c, key, 1);
    handle
}

fn first_waiter_granted(
    server: &Server,
    c: &mut Connection,
    key: &str,
    owner: &str,
    ttl_timeout: (i64, i64),
    head: Head,
) -> JoinHandle<(Value, Duration)> {
    let handle = first_waiter(server, c, key, owner, ttl_timeout, head);
    thread::spawn(move || {
        let (reply, elapsed) = handle.join().expect("waiter thread");
        (reply.expect("blocked acquire"), elapsed)
    })
}

#[test]
fn grantable_now_replies_at_once() {
    let server = Server::start();
    let mut c = server.client();
    let reply: Value = cmd("DLOCK.ACQUIRE")
        .arg("k")
        .arg("a")
        .arg(10_000)
        .arg("wait")
        .arg(5_000)
        .query(&mut c)
        .unwrap();
    let first = token(&reply);
    // Re-entry by the holder is grantable now too.
    let again: i64 = cmd("DLOCK.ACQUIRE")
        .arg("k")
        .arg("a")
        .arg(10_000)
        .arg("WAIT")
        .arg(5_000)
        .query(&mut c)
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(info(&mut c, "k").map(|i| i.3), Some(2));
}

#[test]
fn release_hands_over_to_waiters_in_arrival_order() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "holder", 60_000);
    let mut waiting = vec![];
    // Keyed, then parked ones: the order holds across the two.
    for i in 0..KEYED_WAITERS + 8 {
        waiting.push(waiter(&server, "k", &format!("w{i}"), 60_000, 0));
        wait_for_waiters(&mut c, "k", i + 1);
    }
    let mut previous = owner_after_release(&mut c, "holder");
    let mut last_token = 0;
    for (i, handle) in waiting.into_iter().enumerate() {
        assert_eq!(previous, format!("w{i}"));
        let (reply, _) = handle.join().unwrap();
        let t = token(&reply);
        assert!(t > last_token);
        last_token = t;
        assert_eq!(info(&mut c, "k").map(|i| i.1), Some(t));
        previous = owner_after_release(&mut c, &format!("w{i}"));
    }
    assert_eq!(previous, "");
    assert_eq!(info(&mut c, "k"), None);
}

/// Release `owner`'s hold on "k" and return who holds it right after ("" when free).
/// Release, then read the holder with the very next command on the same connection: the
/// hand-over happens in between, before any other command.
fn owner_after_release(c: &mut Connection, owner: &str) -> String {
    let (released, info_reply): (i64, Value) = redis::pipe()
        .cmd("DLOCK.RELEASE")
        .arg("k")
        .arg(owner)
        .cmd("DLOCK.INFO")
        .arg("k")
        .query(c)
        .unwrap();
    assert_eq!(released, 1);
    match info_reply {
        Value::Nil => String::new(),
        Value::Array(f) => redis::from_redis_value(&f[1]).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn nobody_barges_past_a_queued_waiter() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "holder", 60_000);
    let queued = waiter(&server, "k", "queued", 60_000, 0);
    wait_for_waiters(&mut c, "k", 1);
    // The release and a competing acquire arrive back to back on one connection.
    let (released, barging): (i64, Value) = redis::pipe()
        .cmd("DLOCK.RELEASE")
        .arg("k")
        .arg("holder")
        .cmd("DLOCK.ACQUIRE")
        .arg("k")
        .arg("barger")
        .arg(60_000)
        .query(&mut c)
        .unwrap();
    assert_eq!((released, barging), (1, Value::Nil));
    let (reply, _) = queued.join().unwrap();
    assert_eq!(
        info(&mut c, "k").map(|i| (i.0, i.1)),
        Some(("queued".into(), token(&reply)))
    );
    // A second waiter blocks; the holder's lease ends: still nobody barges in the gap.
    let second = waiter(&server, "k", "second", 60_000, 0);
    wait_for_waiters(&mut c, "k", 1);
    assert_eq!(acquire(&mut c, "k", "barger", 60_000), Value::Nil);
    assert_eq!(release(&mut c, "k", "queued"), 1);
    assert_eq!(acquire(&mut c, "k", "barger", 60_000), Value::Nil);
    let (reply, _) = second.join().unwrap();
    assert_eq!(
        info(&mut c, "k").map(|i| (i.0, i.1)),
        Some(("second".into(), token(&reply)))
    );
}

#[test]
fn a_waiter_gets_the_lock_within_5ms_of_the_lease_end_among_1m_keys_with_ttls() {
    let server = Server::start();
    let mut c = server.client();
    // Active expiry samples keys with TTLs; with a million of them it can leave an expired
    // key alone for a long time. The hand-over must not depend on it.
    let _: () = cmd("DEBUG")
        .arg("POPULATE")
        .arg(1_000_000)
        .arg("filler")
        .query(&mut c)
        .unwrap();
    let _: () = cmd("EVAL")
        .arg("for i = 0, 999999 do redis.call('PEXPIRE', 'filler:' .. i, 3600000 + i) end")
        .arg(0)
        .query(&mut c)
        .unwrap();
    for round in 0..3 {
        let key = format!("lease{round}");
        let first = grant(&mut c, &key, "holder", 200);
        let waiting = waiter(&server, &key, "next", 10_000, 5_000);
        let (reply, _) = waiting.join().unwrap();
        let lease_end = issued_at(first) + 200;
        let delay = issued_at(token(&reply)) - lease_end;
        assert!(
            (0..=5).contains(&delay),
            "granted {delay} ms after the lease ended"
        );
    }
}

#[test]
fn timeouts_are_honoured_within_10ms() {
    timeouts_are_honoured(Head::Keyed);
}

#[test]
fn timeouts_of_parked_waiters_are_honoured_within_10ms() {
    timeouts_are_honoured(Head::Parked);
}

fn timeouts_are_honoured(head: Head) {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "holder", 60_000);
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let handle = first_waiter_granted(&server, &mut c, "k", "w", (1_000, 200), head);
        let (reply, elapsed) = handle.join().unwrap();
        assert_eq!(reply, Value::Nil);
        assert!(
            elapsed >= Duration::from_millis(200),
            "timed out early: {elapsed:?}"
        );
        best = best.min(elapsed);
    }
    assert!(
        best <= Duration::from_millis(210),
        "timed out late: {best:?}"
    );
    assert_eq!(waiters(&mut c, "k"), 0);
    assert_eq!(info(&mut c, "k").map(|i| i.0), Some("holder".into()));
}

#[test]
fn wait_zero_waits_until_granted() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "holder", 60_000);
    let forever = waiter(&server, "k", "w", 60_000, 0);
    wait_for_waiters(&mut c, "k", 1);
    thread::sleep(Duration::from_millis(300));
    assert!(!forever.is_finished());
    assert_eq!(release(&mut c, "k", "holder"), 1);
    let (reply, elapsed) = forever.join().unwrap();
    assert!(token(&reply) > 0);
    assert!(elapsed >= Duration::from_millis(300));
}

#[test]
fn generated_owners_are_returned_on_wake_up() {
    let server = Server::start();
    let mut c = server.client();
    for head in [Head::Keyed, Head::Parked] {
        grant(&mut c, "k", "holder", 60_000);
        let handle = first_waiter_granted(&server, &mut c, "k", "*", (60_000, 0), head);
        assert_eq!(release(&mut c, "k", "holder"), 1);
        let (reply, _) = handle.join().unwrap();
        let (t, owner): (i64, String) = redis::from_redis_value(&reply).unwrap();
        assert_eq!(owner.len(), 32, "{head:?}");
        assert_eq!(
            info(&mut c, "k").map(|i| (i.0, i.1)),
            Some((owner.clone(), t))
        );
        assert_eq!(release(&mut c, "k", &owner), 1);
    }
}

#[test]
fn every_way_of_freeing_a_lock_wakes_the_first_waiter() {
    every_way_of_freeing_a_lock_wakes(Head::Keyed);
}

#[test]
fn every_way_of_freeing_a_lock_wakes_a_parked_first_waiter() {
    every_way_of_freeing_a_lock_wakes(Head::Parked);
}

fn every_way_of_freeing_a_lock_wakes(head: Head) {
    let server = Server::start();
    let mut c = server.client();
    type Free = fn(&mut Connection, &str);
    let frees: [(&str, Free); 8] = [
        ("del", |c, k| {
            let _: i64 = cmd("DEL").arg(k).query(c).unwrap();
        }),
        ("unlink", |c, k| {
            let _: i64 = cmd("UNLINK").arg(k).query(c).unwrap();
        }),
        ("flushdb", |c, _| {
            let _: () = cmd("FLUSHDB").query(c).unwrap();
        }),
        ("flushall", |c, _| {
            let _: () = cmd("FLUSHALL").query(c).unwrap();
        }),
        ("rename", |c, k| {
            let _: () = cmd("RENAME")
                .arg(k)
                .arg(format!("{k}-moved"))
                .query(c)
                .unwrap();
        }),
        ("move", |c, k| {
            let _: i64 = cmd("MOVE").arg(k).arg(5).query(c).unwrap();
        }),
        ("swapdb", |c, _| {
            let _: () = cmd("SWAPDB").arg(0).arg(7).query(c).unwrap();
        }),
        ("restore", |c, k| {
            // Replace the lock with a copy of a lock whose lease has since ended.
            let _: i64 = grant(c, "template", "old", 50);
            let dump: Vec<u8> = cmd("DUMP").arg("template").query(c).unwrap();
            thread::sleep(Duration::from_millis(60));
            let _: () = cmd("RESTORE")
                .arg(k)
                .arg(0)
                .arg(dump)
                .arg("REPLACE")
                .query(c)
                .unwrap();
        }),
    ];
    for (name, free) in frees {
        let key = format!("free-by-{name}");
        grant(&mut c, &key, "holder", 60_000);
        let handle = first_waiter_granted(&server, &mut c, &key, "next", (60_000, 5_000), head);
        free(&mut c, &key);
        let (reply, elapsed) = handle.join().unwrap();
        assert!(matches!(reply, Value::Int(_)), "{name}: {reply:?}");
        assert!(
            elapsed < Duration::from_millis(1_000),
            "{name}: woke after {elapsed:?}"
        );
        let _: () = cmd("SELECT").arg(0).query(&mut c).unwrap();
        assert_eq!(
            info(&mut c, &key).map(|i| (i.0, i.1)),
            Some(("next".into(), token(&reply))),
            "{name}"
        );
        let _: () = cmd("FLUSHALL").query(&mut c).unwrap();
    }
}

#[test]
fn a_key_overwritten_with_another_type_refuses_its_waiters() {
    let server = Server::start();
    let mut c = server.client();
    for head in [Head::Keyed, Head::Parked] {
        grant(&mut c, "k", "holder", 60_000);
        let handle = first_waiter(&server, &mut c, "k", "next", (60_000, 5_000), head);
        let _: () = cmd("SET").arg("k").arg("string").query(&mut c).unwrap();
        let (reply, elapsed) = handle.join().unwrap();
        assert_eq!(
            error_of(reply),
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "{head:?}"
        );
        assert!(elapsed < Duration::from_secs(1), "{head:?}: {elapsed:?}");
        assert_eq!(stat(&mut c, "dlock_waiters"), 0);
        let _: i64 = cmd("DEL").arg("k").query(&mut c).unwrap();
    }
}

#[test]
fn disconnected_killed_and_unblocked_waiters_leave_the_queue() {
    waiters_leave_the_queue(Head::Keyed);
}

#[test]
fn disconnected_killed_and_unblocked_parked_waiters_leave_the_queue() {
    waiters_leave_the_queue(Head::Parked);
}

fn waiters_leave_the_queue(head: Head) {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "holder", 60_000);

    // Killed: never granted, and gone from the queue.
    let killed = first_waiter(&server, &mut c, "k", "killed", (60_000, 0), head);
    let id = blocked_client_id(&mut c);
    let _: () = cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query(&mut c)
        .unwrap();
    assert!(killed.join().unwrap().0.is_err());
    wait_for_waiters(&mut c, "k", 0);

    // CLIENT UNBLOCK does not apply to dlock waiters (so nothing can race their one reply):
    // it replies 0 and the waiter keeps waiting, until it is granted.
    let unblocked = first_waiter_granted(&server, &mut c, "k", "unblocked", (60_000, 0), head);
    let id = blocked_client_id(&mut c);
    for how in ["TIMEOUT", "ERROR"] {
        let done: i64 = cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(id)
            .arg(how)
            .query(&mut c)
            .unwrap();
        assert_eq!(done, 0);
    }
    assert_eq!(waiters(&mut c, "k"), 1);
    assert_eq!(owner_after_release(&mut c, "holder"), "unblocked");
    let granted = token(&unblocked.join().unwrap().0);
    assert_eq!(info(&mut c, "k").map(|i| i.1), Some(granted));
    assert_eq!(release(&mut c, "k", "unblocked"), 1);
    grant(&mut c, "k", "holder", 60_000);

    // Many clients that block and disconnect leave nothing behind.
    for round in 0..3 {
        let conns: Vec<Connection> = (0..100)
            .map(|i| blocked_connection(&server, "k", &format!("d{round}-{i}"), 60_000, 0))
            .collect();
        wait_for_waiters(&mut c, "k", 100);
        drop(conns);
    }
    wait_for_waiters(&mut c, "k", 0);
    // None of them is ever granted: the holder's release frees the lock.
    assert_eq!(release(&mut c, "k", "holder"), 1);
    assert_eq!(info(&mut c, "k"), None);
}

fn blocked_client_id(c: &mut Connection) -> i64 {
    let list: String = cmd("CLIENT").arg("LIST").query(c).unwrap();
    list.lines()
        .find(|l| l.contains("flags=b"))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .and_then(|id| id.parse().ok())
        .expect("a blocked client")
}

#[test]
fn wait_does_not_block_inside_multi_or_lua() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "holder", 60_000);
    let start = Instant::now();
    let (reply,): (Value,) = redis::pipe()
        .atomic()
        .cmd("DLOCK.ACQUIRE")
        .arg("k")
        .arg("w")
        .arg(1_000)
        .arg("WAIT")
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert_eq!(reply, Value::Nil);
    let lua: Value = cmd("EVAL")
        .arg("return redis.call('DLOCK.ACQUIRE', KEYS[1], 'w', 1000, 'WAIT', 0)")
        .arg(1)
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert_eq!(lua, Value::Nil);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(waiters(&mut c, "k"), 0);
}

#[test]
fn wait_errors_are_exact() {
    let server = Server::start();
    let mut c = server.client();
    let mut run = |extra: &[&str]| {
        let mut command = cmd("DLOCK.ACQUIRE");
        command.arg("k").arg("o").arg(1_000);
        for a in extra {
            command.arg(*a);
        }
        error_of(command.query::<Value>(&mut c))
    };
    let timeout = "ERR timeout must be a non-negative integer in milliseconds";
    assert_eq!(run(&["WAIT", "-1"]), timeout);
    assert_eq!(run(&["WAIT", "abc"]), timeout);
    assert_eq!(run(&["WAIT", "1.5"]), timeout);
    assert_eq!(
        run(&["WAIT", "9223372036854775807"]),
        "ERR timeout is above the maximum of 1099511627776 ms (2^40)"
    );
    assert_eq!(run(&["WAIT"]), "ERR syntax error");
    assert_eq!(run(&["WAIT", "1", "WAIT", "1"]), "ERR syntax error");
    assert_eq!(run(&["NOWAIT", "1"]), "ERR syntax error");
}

#[test]
fn grants_on_wake_up_replicate_exactly() {
    grants_replicate_exactly(Head::Keyed);
}

#[test]
fn grants_to_parked_waiters_replicate_exactly() {
    grants_replicate_exactly(Head::Parked);
}

fn grants_replicate_exactly(head: Head) {
    let master = Server::start();
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut r = replica.client();
    let mut m = master.client();
    grant(&mut m, "released", "holder", 60_000);
    grant(&mut m, "expiring", "holder", 2_000);
    let by_release = first_waiter_granted(&master, &mut m, "released", "w1", (60_000, 5_000), head);
    let by_expiry = first_waiter_granted(&master, &mut m, "expiring", "w2", (60_000, 5_000), head);
    assert_eq!(release(&mut m, "released", "holder"), 1);
    let t1 = token(&by_release.join().unwrap().0);
    let t2 = token(&by_expiry.join().unwrap().0);
    wait_for_replica(&mut m);
    assert_eq!(
        info(&mut r, "released").map(|i| (i.0, i.1)),
        Some(("w1".into(), t1))
    );
    assert_eq!(
        info(&mut r, "expiring").map(|i| (i.0, i.1)),
        Some(("w2".into(), t2))
    );
    assert_eq!(digest(&mut r), digest(&mut m));
}

#[test]
fn waiters_that_come_and_go_leave_no_memory_behind() {
    let server = Server::with_config(&[("hz", "100")]);
    let mut c = server.client();
    grant(&mut c, "k", "holder", 600_000);
    let mut baseline = 0;
    for round in 0..8 {
        let conns: Vec<Connection> = (0..100)
            .map(|i| {
                let timeout = if i % 2 == 0 { 0 } else { 60_000 };
                blocked_connection(&server, "k", &format!("owner-{round}-{i}"), 60_000, timeout)
            })
            .collect();
        wait_for_waiters(&mut c, "k", 100);
        drop(conns);
        wait_for_waiters(&mut c, "k", 0);
        if round == 1 {
            baseline = settled_used_memory(&mut c);
        }
    }
    // 600 waiters came and went since the baseline: a leak of even one small allocation each
    // would show.
    let growth = settled_used_memory(&mut c) - baseline;
    assert!(growth < 8 * 1024, "used_memory grew by {growth} bytes");
    assert_eq!(info(&mut c, "k").map(|i| i.0), Some("holder".into()));
}
