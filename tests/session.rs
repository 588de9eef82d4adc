//! `DLOCK.ACQUIRE ... SESSION`: holds that end when their connection does.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn session_flag(c: &mut Connection, key: &str) -> Option<String> {
    info_fields(c, key).and_then(|f| f.into_iter().find(|(n, _)| n == "session").map(|(_, v)| v))
}

fn session_grant(c: &mut Connection, key: &str, owner: &str, ttl: i64) -> i64 {
    cmd("DLOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(ttl)
        .arg("SESSION")
        .query(c)
        .expect("SESSION grant")
}

#[test]
fn a_closed_connection_frees_its_session_locks_at_once_and_hands_them_over() {
    let server = Server::start();
    let mut c = server.client();
    let mut holder = server.client();
    let token = session_grant(&mut holder, "k", "h", 600_000);
    grant(&mut c, "plain", "h2", 600_000);
    assert_eq!(session_flag(&mut c, "k"), Some("1".into()));
    assert_eq!(session_flag(&mut c, "plain"), Some("0".into()));
    let waiter = blocked_connection(&server, "k", "next", 60_000, 0);
    wait_until("the waiter to queue", || waiters(&mut c, "k") == 1);
    let closed = Instant::now();
    drop(holder);
    wait_until("the hand-over", || {
        info(&mut c, "k").map(|i| i.0) == Some("next".into())
    });
    assert!(closed.elapsed() < Duration::from_millis(500));
    let (_, next_token, _, _) = info(&mut c, "k").unwrap();
    assert!(next_token > token);
    // Not bound: the waiter asked without SESSION.
    assert_eq!(session_flag(&mut c, "k"), Some("0".into()));
    drop(waiter);
}

#[test]
fn client_kill_and_idle_timeout_free_session_locks() {
    let server = Server::start();
    let mut c = server.client();
    let mut killed = server.client();
    session_grant(&mut killed, "killed", "a", 600_000);
    let id: i64 = cmd("CLIENT").arg("ID").query(&mut killed).unwrap();
    let _: () = cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query(&mut c)
        .unwrap();
    wait_until("the killed client's lock to go", || {
        info(&mut c, "killed").is_none()
    });

    // The server closes connections idle for a second (this one keeps polling, so it stays).
    let _: () = cmd("CONFIG")
        .arg("SET")
        .arg("timeout")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let mut idle = server.client();
    session_grant(&mut idle, "idle", "b", 600_000);
    wait_until("the idle client's lock to go", || {
        info(&mut c, "idle").is_none()
    });
}

#[test]
fn released_or_plain_holds_are_not_touched_by_a_disconnect() {
    let server = Server::start();
    let mut c = server.client();
    let mut s = server.client();
    session_grant(&mut s, "k", "same", 600_000);
    assert_eq!(release(&mut s, "k", "same"), 1);
    // The same owner takes it again without SESSION from another connection.
    let token = grant(&mut c, "k", "same", 600_000);
    // Re-entry keeps the binding of a session hold, and a plain one stays plain.
    session_grant(&mut s, "r", "owner", 600_000);
    grant(&mut s, "r", "owner", 600_000);
    assert_eq!(info(&mut c, "r").map(|i| i.3), Some(2));
    drop(s);
    wait_until("the session hold to go", || info(&mut c, "r").is_none());
    assert_eq!(
        info(&mut c, "k").map(|i| (i.0, i.1)),
        Some(("same".into(), token))
    );
}

#[test]
fn ten_thousand_session_locks_go_with_their_connection() {
    let server = Server::start();
    let mut c = server.client();
    let mut s = server.client();
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("DLOCK.ACQUIRE")
            .arg(format!("many:{i}"))
            .arg("o")
            .arg(600_000)
            .arg("SESSION")
            .ignore();
    }
    let _: () = pipe.query(&mut s).unwrap();
    let dbsize: i64 = cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(dbsize, 10_000);
    drop(s);
    wait_until("every session lock to go", || {
        let dbsize: i64 = cmd("DBSIZE").query(&mut c).unwrap();
        dbsize == 0
    });
}

#[test]
fn session_releases_reach_the_replica_and_a_reload_keeps_the_hold() {
    let master = Server::start();
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    let mut s = master.client();
    session_grant(&mut s, "gone", "a", 600_000);
    let kept = session_grant(&mut s, "kept", "b", 600_000);
    // DEBUG RELOAD is not a restart: the hold and its binding stay.
    let _: () = cmd("DEBUG").arg("RELOAD").query(&mut m).unwrap();
    assert_eq!(info(&mut m, "kept").map(|i| i.1), Some(kept));
    assert_eq!(session_flag(&mut m, "kept"), Some("1".into()));
    drop(s);
    wait_until("the session locks to go", || info(&mut m, "gone").is_none());
    wait_for_replica(&mut m);
    let mut r = replica.client();
    assert_eq!(info(&mut r, "gone"), None);
    assert_eq!(info(&mut r, "kept"), None);
    assert_eq!(digest(&mut r), digest(&mut m));
}

#[test]
fn a_waiter_asking_for_session_gets_a_bound_hold() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "holder", 600_000);
    let mut w = server.client();
    let command = cmd("DLOCK.ACQUIRE")
        .arg("k")
        .arg("w")
        .arg(600_000)
        .arg("WAIT")
        .arg(0)
        .arg("SESSION")
        .get_packed_command();
    w.send_packed_command(&command).unwrap();
    wait_until("the waiter to queue", || waiters(&mut c, "k") == 1);
    assert_eq!(release(&mut c, "k", "holder"), 1);
    assert_eq!(session_flag(&mut c, "k"), Some("1".into()));
    drop(w);
    wait_until("the waiter's session lock to go", || {
        info(&mut c, "k").is_none()
    });
    let err = error_of(
        cmd("DLOCK.ACQUIRE")
            .arg("k")
            .arg("o")
            .arg(10)
            .arg("SESSION")
            .arg("SESSION")
            .query(&mut c),
    );
    assert_eq!(err, "ERR syntax error");
}

#[test]
fn a_long_lived_connection_whose_session_leases_end_does_not_grow_memory() {
    let server = Server::with_config(&[("hz", "100")]);
    let mut c = server.client();
    let mut holder = server.client();
    let round = |holder: &mut Connection, from: usize, ttl: u64| {
        let mut pipe = redis::pipe();
        for i in from..from + 10_000 {
            pipe.cmd("DLOCK.ACQUIRE")
                .arg(format!("brief:{i}"))
                .arg("h")
                .arg(ttl)
                .arg("SESSION")
                .ignore();
        }
        let _: () = pipe.query(holder).unwrap();
    };
    round(&mut holder, 0, 1);
    wait_until("the leases to end and their keys to expire", || {
        cmd("DBSIZE").query::<i64>(&mut c).unwrap() == 0
    });
    let baseline = settled_used_memory(&mut c);
    // 50,000 more bindings, held at once, whose leases end: without the sweep of ended
    // bindings they would all stay in the module's memory until the connection closes
    // (13 MB), and without the tables giving back their room the spike would stay (4.5 MB).
    for r in 1..=5 {
        round(&mut holder, r * 10_000, 5_000);
    }
    assert_eq!(stat(&mut c, "dlock_session_holds"), 50_000);
    wait_until("the leases to end and their keys to expire", || {
        cmd("DBSIZE").query::<i64>(&mut c).unwrap() == 0
    });
    let after = settled_used_memory(&mut c);
    assert!(
        after - baseline < 512 * 1024,
        "used_memory grew from {baseline} to {after}"
    );
}
