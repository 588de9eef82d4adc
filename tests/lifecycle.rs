//! Redis's own operations as inputs: pauses, failover, replicas, scripts, CLIENT UNBLOCK,
//! PERSIST, huge delays. Each test does to a live server what broke an earlier build.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn ping(c: &mut Connection) -> String {
    cmd("PING").query(c).unwrap()
}

fn pttl(c: &mut Connection, key: &str) -> i64 {
    cmd("PTTL").arg(key).query(c).unwrap()
}

fn pause(c: &mut Connection, ms: i64, mode: &str) {
    let _: () = cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg(mode)
        .query(c)
        .unwrap();
}

fn unpause(c: &mut Connection) {
    let _: () = cmd("CLIENT").arg("UNPAUSE").query(c).unwrap();
}

/// A lease ends while clients are paused for writes (Redis then hides the expired key but
/// keeps it): the hand-over waits for the pause to end instead of inserting over the hidden
/// key (which aborted the server), and the replica and AOF see it afterwards.
#[test]
fn a_lease_ending_during_a_write_pause_is_handed_over_after_it() {
    // The waiter is either blocked on the key or (behind 32 that leave) parked: the module
    // grants a parked one itself.
    for (config, fillers) in [
        (&[("appendonly", "no")][..], 0),
        (&[("appendonly", "yes"), ("appendfsync", "always")][..], 0),
        (&[("appendonly", "yes"), ("appendfsync", "always")][..], 32),
    ] {
        let master = Server::with_config(config);
        let replica = Server::start();
        replicate_from(&replica, &master);
        let mut m = master.client();
        grant(&mut m, "k", "h", 60_000);
        let ahead: Vec<Connection> = (0..fillers)
            .map(|i| blocked_connection(&master, "k", &format!("f{i}"), 60_000, 0))
            .collect();
        wait_until("the fillers to queue", || waiters(&mut m, "k") == fillers);
        let mut waiter = blocked_connection(&master, "k", "w", 60_000, 0);
        wait_until("the waiter to queue", || {
            waiters(&mut m, "k") == fillers + 1
        });
        drop(ahead);
        wait_until("the fillers to leave", || waiters(&mut m, "k") == 1);
        // The lease ends 300 ms from now, during the pause.
        let extended: i64 = cmd("DLOCK.EXTEND")
            .arg("k")
            .arg("h")
            .arg(300)
            .query(&mut m)
            .unwrap();
        assert_eq!(extended, 1);
        pause(&mut m, 3_000, "WRITE");
        let _: () = cmd("DEBUG").arg("SLEEP").arg(0.5).query(&mut m).unwrap();
        assert_eq!(ping(&mut m), "PONG");
        assert_eq!(stat(&mut m, "dlock_waiters"), 1);
        unpause(&mut m);
        let Value::Int(token) = reply_within(&mut waiter, Duration::from_secs(5)).unwrap() else {
            panic!("the waiter was not granted");
        };
        assert_eq!(
            info(&mut m, "k").map(|i| (i.0, i.1)),
            Some(("w".into(), token))
        );
        wait_for_replica(&mut m);
        let mut r = replica.client();
        assert_eq!(
            info(&mut r, "k").map(|i| (i.0, i.1)),
            Some(("w".into(), token))
        );
        assert_eq!(digest(&mut m), digest(&mut r));
    }
}

/// Work that is not a client's command — a lease-end hand-over, a session ending with its
/// connection, a shared holder's lease ending before the key — waits while clients are paused
/// (FAILOVER pauses them the same way), then happens and replicates.
#[test]
fn timers_and_disconnects_wait_out_a_pause_with_aof_and_a_replica() {
    let master = Server::with_config(&[("appendonly", "yes")]);
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    let mut session = master.client();
    let _: i64 = cmd("DLOCK.ACQUIRE")
        .arg("s")
        .arg("a")
        .arg(60_000)
        .arg("SESSION")
        .query(&mut session)
        .unwrap();
    for (owner, ttl) in [("r1", 200), ("r2", 60_000)] {
        let _: i64 = cmd("DLOCK.ACQUIRE")
            .arg("shared")
            .arg(owner)
            .arg(ttl)
            .arg("SHARED")
            .query(&mut m)
            .unwrap();
    }
    grant(&mut m, "k", "h", 200);
    let mut waiter = blocked_connection(&master, "k", "w", 60_000, 0);
    wait_until("the waiter to queue", || waiters(&mut m, "k") == 1);
    for mode in ["WRITE", "ALL"] {
        let mut admin = master.client();
        pause(&mut admin, 1_000, mode);
        if mode == "WRITE" {
            drop(std::mem::replace(&mut session, master.client()));
        }
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(ping(&mut admin), "PONG");
        unpause(&mut admin);
    }
    assert!(matches!(
        reply_within(&mut waiter, Duration::from_secs(5)),
        Ok(Value::Int(_))
    ));
    wait_until("the session hold to go", || info(&mut m, "s").is_none());
    wait_until("r1's lease to be removed", || {
        holders(&mut m, "shared").len() == 1
    });
    wait_for_replica(&mut m);
    let mut r = replica.client();
    assert_eq!(digest(&mut m), digest(&mut r));
}

/// A waiter offered a key that still has a hold whose lease ended (its removal deferred by a
/// pause) while another holder keeps it busy: serving the waiter must change nothing, or the
/// removal's replication is left pending outside any command and Redis 7.0 aborts
/// (`blocked.c: 'server.also_propagate.numops == 0'`). The timer removes the hold after.
#[test]
fn a_waiter_offered_a_busy_key_with_an_ended_hold_changes_nothing() {
    let master = Server::with_config(&[("appendonly", "yes")]);
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    for (owner, ttl) in [("ends", 150), ("stays", 60_000), ("leaves", 60_000)] {
        let _: i64 = cmd("DLOCK.ACQUIRE")
            .arg("k")
            .arg(owner)
            .arg(ttl)
            .arg("SHARED")
            .query(&mut m)
            .unwrap();
    }
    let mut writer = blocked_connection(&master, "k", "writer", 60_000, 0);
    wait_until("the writer to queue", || waiters(&mut m, "k") == 1);
    let mut admin = master.client();
    pause(&mut admin, 10_000, "WRITE");
    // Postponed by the pause, this RELEASE runs right when it ends, after "ends"'s lease did
    // (its removal waits for the timer), and offers the key to the writer while "stays" holds it.
    let mut releaser = master.client();
    releaser
        .send_packed_command(
            &cmd("DLOCK.RELEASE")
                .arg("k")
                .arg("leaves")
                .get_packed_command(),
        )
        .unwrap();
    wait_until("the short lease to end", || {
        holders(&mut admin, "k").len() == 2
    });
    // Nothing shows that the lease timer has come due and put its work off until the pause
    // ends (it retries every 50 ms): give it that long, so the RELEASE comes first.
    std::thread::sleep(Duration::from_millis(120));
    unpause(&mut admin);
    assert_eq!(
        reply_within(&mut releaser, Duration::from_secs(5)),
        Ok(Value::Int(1))
    );
    assert_eq!(ping(&mut m), "PONG");
    wait_until("the ended hold to be removed", || {
        holders(&mut m, "k").len() == 1
    });
    assert_eq!(ping(&mut m), "PONG");
    assert_eq!(waiters(&mut m, "k"), 1);
    assert_eq!(release(&mut m, "k", "stays"), 1);
    assert!(matches!(
        reply_within(&mut writer, Duration::from_secs(5)),
        Ok(Value::Int(_))
    ));
    wait_for_replica(&mut m);
    assert_eq!(digest(&mut m), digest(&mut replica.client()));
}

/// A manual FAILOVER (which pauses writes while the replica catches up) with a lease ending in
/// the middle and a waiter queued: both servers stay up and agree.
#[test]
fn failover_with_a_lease_ending_mid_way_keeps_both_servers_up() {
    let master = Server::with_config(&[("appendonly", "yes")]);
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    grant(&mut m, "k", "h", 100);
    let _waiter = blocked_connection(&master, "k", "w", 60_000, 0);
    wait_until("the waiter to queue", || waiters(&mut m, "k") == 1);
    let mut r = fail_over(&mut m, &replica);
    wait_until_following(&mut m);
    wait_for_replica(&mut r);
    assert_eq!(digest(&mut m), digest(&mut r));
}

/// `FAILOVER` from `m`'s server to `replica`; a client of the new master once it took over
/// (the old one still answers).
fn fail_over(m: &mut Connection, replica: &Server) -> Connection {
    let _: () = cmd("FAILOVER").arg("TIMEOUT").arg(3_000).query(m).unwrap();
    let mut r = replica.client();
    wait_until("the replica to take over", || {
        let role: Vec<Value> = cmd("ROLE").query(&mut r).unwrap();
        role.first() == Some(&Value::BulkString(b"master".to_vec()))
    });
    assert_eq!(ping(m), "PONG");
    r
}

fn wait_until_following(m: &mut Connection) {
    wait_until("the old master to follow", || {
        let info: String = cmd("INFO").arg("replication").query(m).unwrap();
        info.contains("master_link_status:up")
    });
}

/// The same with 40 waiters, 8 of them parked (beyond a key's first 32, granted by the module
/// itself): when the old master becomes a replica Redis unblocks every waiter with an error;
/// each gets exactly one reply, at most one of them is granted, and both servers agree.
#[test]
fn failover_with_parked_waiters_answers_each_once() {
    let master = Server::with_config(&[("appendonly", "yes")]);
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    grant(&mut m, "k", "h", 60_000);
    let mut waiting: Vec<Connection> = (0..40)
        .map(|i| blocked_connection(&master, "k", &format!("w{i}"), 60_000, 0))
        .collect();
    wait_until("the waiters to queue", || waiters(&mut m, "k") == 40);
    let extended: i64 = cmd("DLOCK.EXTEND")
        .arg("k")
        .arg("h")
        .arg(100)
        .query(&mut m)
        .unwrap();
    assert_eq!(extended, 1);
    let mut r = fail_over(&mut m, &replica);
    let mut granted = 0;
    for (i, c) in waiting.iter_mut().enumerate() {
        match reply_within(c, Duration::from_secs(5)) {
            Ok(Value::Int(_)) => granted += 1,
            Err(e) => assert!(e.to_string().contains("UNBLOCKED"), "waiter {i}: {e}"),
            Ok(other) => panic!("waiter {i}: {other:?}"),
        }
    }
    assert!(granted <= 1, "{granted} waiters granted");
    wait_until_following(&mut m);
    wait_for_replica(&mut r);
    assert_eq!(digest(&mut m), digest(&mut r));
    assert_eq!(stat(&mut m, "dlock_waiters"), 0);
}

/// No client-chosen delay can stop the module's timers (RedisModule_CreateTimer overflows on
/// huge periods): leases and waits are capped at 2^40 ms, and a lock with the longest lease and
/// a waiter leaves other hand-overs on time.
#[test]
fn huge_leases_and_waits_do_not_stop_the_timers() {
    let server = Server::start();
    let mut c = server.client();
    let refused = error_of(
        cmd("DLOCK.ACQUIRE")
            .arg("evil")
            .arg("h")
            .arg(18_445_744_073_709_551_i64)
            .query(&mut c),
    );
    assert_eq!(
        refused,
        "ERR ttl is above the maximum of 1099511627776 ms (2^40)"
    );
    grant(&mut c, "evil", "h", 1 << 40);
    let mut far = blocked_connection(&server, "evil", "w", 1_000, 1 << 40);
    wait_until("the far waiter to queue", || waiters(&mut c, "evil") == 1);
    grant(&mut c, "k", "h", 100);
    let start = Instant::now();
    let mut near = blocked_connection(&server, "k", "w", 1_000, 0);
    assert!(matches!(
        reply_within(&mut near, Duration::from_secs(5)),
        Ok(Value::Int(_))
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
    let timed_out: Value = cmd("DLOCK.ACQUIRE")
        .arg("evil")
        .arg("x")
        .arg(1_000)
        .arg("WAIT")
        .arg(100)
        .query(&mut c)
        .unwrap();
    assert_eq!(timed_out, Value::Nil);
    assert_eq!(release(&mut c, "evil", "h"), 1);
    assert!(matches!(
        reply_within(&mut far, Duration::from_secs(5)),
        Ok(Value::Int(_))
    ));
}

/// CPU time (user + system) the server process has used, in clock ticks.
fn cpu_ticks(server: &Server) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Redis 7.0's event loop spun at 100% CPU once the next module timer was more than ~35.8
/// minutes away (its delay in microseconds overflowed an int: an hour lands in the past, a
/// day by luck does not): a server with an hour-long or a day-long lease and a waiter, after a
/// module timer fired, must stay idle (under 1% CPU).
#[test]
fn an_idle_server_with_a_long_lease_and_a_waiter_stays_idle() {
    for lease in [3_600_000, 24 * 3_600_000] {
        let server = Server::start();
        let mut c = server.client();
        grant(&mut c, "job", "worker-1", lease);
        let _waiter = blocked_connection(&server, "job", "worker-2", 30_000, 0);
        wait_until("the waiter to queue", || waiters(&mut c, "job") == 1);
        // Any module timer firing used to start the spin: a session holder disconnecting.
        let mut session = server.client();
        let _: i64 = cmd("DLOCK.ACQUIRE")
            .arg("s")
            .arg("a")
            .arg(60_000)
            .arg("SESSION")
            .query(&mut session)
            .unwrap();
        drop(session);
        wait_until("the session hold to go", || info(&mut c, "s").is_none());
        let before = cpu_ticks(&server);
        std::thread::sleep(Duration::from_secs(4));
        let used = cpu_ticks(&server) - before;
        // 100 ticks a second: 1% of 4 s is 4 ticks; a spinning server uses about 400.
        assert!(
            used <= 4,
            "the idle server used {used} ticks in 4 s (lease {lease} ms)"
        );
    }
}

/// CLIENT UNBLOCK racing a hand-over (in one pipeline after the RELEASE) cannot give a waiter
/// two replies, or a grant it was told it did not get: dlock waiters are not unblockable.
#[test]
fn client_unblock_racing_a_hand_over_leaves_one_reply() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "h", 60_000);
    let mut waiter = blocked_connection(&server, "k", "w", 60_000, 0);
    wait_until("the waiter to queue", || waiters(&mut c, "k") == 1);
    let id: i64 = {
        let list: String = cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
        list.lines()
            .find(|l| l.contains("cmd=dlock.acquire"))
            .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .and_then(|id| id.parse().ok())
            .unwrap()
    };
    let (released, unblocked, holder): (i64, i64, Value) = redis::pipe()
        .cmd("DLOCK.RELEASE")
        .arg("k")
        .arg("h")
        .cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(id)
        .arg("ERROR")
        .cmd("DLOCK.INFO")
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert_eq!((released, unblocked), (1, 0));
    assert!(matches!(holder, Value::Array(_)));
    let Value::Int(token) = reply_within(&mut waiter, Duration::from_secs(5)).unwrap() else {
        panic!("the waiter was not granted");
    };
    assert_eq!(
        info(&mut c, "k").map(|i| (i.0, i.1)),
        Some(("w".into(), token))
    );
    // Exactly one reply: the next one on the connection answers the next command.
    assert_eq!(ping(&mut waiter), "PONG");
}

/// A waiter whose deadline passed while the server was stalled is told nil, never granted.
#[test]
fn a_waiter_past_its_deadline_is_never_granted() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "h", 60_000);
    let mut waiter = blocked_connection(&server, "k", "w", 60_000, 100);
    wait_until("the waiter to queue", || waiters(&mut c, "k") == 1);
    let (_, released): ((), i64) = redis::pipe()
        .cmd("DEBUG")
        .arg("SLEEP")
        .arg(0.3)
        .cmd("DLOCK.RELEASE")
        .arg("k")
        .arg("h")
        .query(&mut c)
        .unwrap();
    assert_eq!(released, 1);
    assert_eq!(
        reply_within(&mut waiter, Duration::from_secs(5)).unwrap(),
        Value::Nil
    );
    assert_eq!(info(&mut c, "k"), None);
}

/// SESSION binds a hold to a connection; scripts and module calls run on fake clients that
/// never disconnect, so SESSION is refused there.
#[test]
fn session_is_refused_inside_scripts_and_guard() {
    let server = Server::start();
    let mut c = server.client();
    let refused =
        "ERR SESSION needs a client connection: it cannot be used from a script or a module call";
    let from_lua = error_of(
        cmd("EVAL")
            .arg("return redis.call('DLOCK.ACQUIRE', KEYS[1], 'a', 60000, 'SESSION')")
            .arg(1)
            .arg("k")
            .query(&mut c),
    );
    assert!(from_lua.contains(refused), "{from_lua}");
    let token = grant(&mut c, "guard", "g", 60_000);
    let from_guard = error_of(
        cmd("DLOCK.GUARD")
            .arg("guard")
            .arg(token)
            .arg("DLOCK.ACQUIRE")
            .arg("guard2")
            .arg("a")
            .arg(60_000)
            .arg("SESSION")
            .query(&mut c),
    );
    assert_eq!(from_guard, refused);
    assert_eq!(info(&mut c, "k"), None);
    // Inside MULTI the client is real: allowed, and released with the connection.
    let mut s = server.client();
    let (token,): (i64,) = redis::pipe()
        .atomic()
        .cmd("DLOCK.ACQUIRE")
        .arg("m")
        .arg("a")
        .arg(60_000)
        .arg("SESSION")
        .query(&mut s)
        .unwrap();
    assert!(token > 0);
    drop(s);
    wait_until("the MULTI session hold to go", || {
        info(&mut c, "m").is_none()
    });
}

/// A RELEASE whose queue head cannot be served yet still commits: the replica gets the same
/// expiry, and a client that WATCHed the key sees it changed.
#[test]
fn a_release_with_a_blocked_queue_head_commits() {
    let master = Server::start();
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    for (owner, ttl) in [("p1", 60_000), ("p2", 5_000)] {
        let _: i64 = cmd("DLOCK.ACQUIRE")
            .arg("q")
            .arg(owner)
            .arg(ttl)
            .arg("SEMAPHORE")
            .arg(2)
            .query(&mut m)
            .unwrap();
    }
    let mut big = master.client();
    let request = cmd("DLOCK.ACQUIRE")
        .arg("q")
        .arg("big")
        .arg(60_000)
        .arg("SEMAPHORE")
        .arg(2)
        .arg("PERMITS")
        .arg(2)
        .arg("WAIT")
        .arg(0)
        .get_packed_command();
    big.send_packed_command(&request).unwrap();
    wait_until("the big request to queue", || waiters(&mut m, "q") == 1);
    let mut watcher = master.client();
    let _: () = cmd("WATCH").arg("q").query(&mut watcher).unwrap();
    assert_eq!(release(&mut m, "q", "p1"), 1);
    let committed: Option<Vec<Value>> = redis::pipe()
        .atomic()
        .cmd("PING")
        .query(&mut watcher)
        .unwrap();
    assert_eq!(committed, None, "EXEC must abort: the key changed");
    wait_for_replica(&mut m);
    let mut r = replica.client();
    let (on_master, on_replica) = (pttl(&mut m, "q"), pttl(&mut r, "q"));
    assert!(on_master <= 5_000 && (on_master - on_replica).abs() < 500);
}

/// PERSIST (or EXPIRE) on a lock cannot outlive its lease: the key gets its lease back.
#[test]
fn persist_and_expire_cannot_keep_a_lock_past_its_lease() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "a", 300);
    let persisted: i64 = cmd("PERSIST").arg("k").query(&mut c).unwrap();
    assert_eq!(persisted, 1);
    wait_until("the lease to be the key's expiry again", || {
        (1..=300).contains(&pttl(&mut c, "k"))
    });
    let _: i64 = cmd("EXPIRE").arg("k").arg(1_000_000).query(&mut c).unwrap();
    wait_until("the lease to be the key's expiry again", || {
        (1..=300).contains(&pttl(&mut c, "k"))
    });
    wait_until("the key to go with its lease", || pttl(&mut c, "k") == -2);
    assert_eq!(stat(&mut c, "dlock_locks"), 0);
}

/// RESTORE of a lock, with a ttl of 0 (no expiry) or one past its lease, cannot keep it past
/// its lease either; a lock restored after its lease ended goes at once.
#[test]
fn restore_cannot_keep_a_lock_past_its_lease() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "k", "a", 60_000);
    let payload: Vec<u8> = cmd("DUMP").arg("k").query(&mut c).unwrap();
    for (key, ttl) in [("kept", 0), ("longer", 1_000_000)] {
        let restored: String = cmd("RESTORE")
            .arg(key)
            .arg(ttl)
            .arg(&payload)
            .query(&mut c)
            .unwrap();
        assert_eq!(restored, "OK");
        wait_until("the lease to be the key's expiry again", || {
            (1..=60_000).contains(&pttl(&mut c, key))
        });
        assert_eq!(info(&mut c, key).map(|i| i.1), Some(token));
    }
    grant(&mut c, "brief", "a", 100);
    let brief: Vec<u8> = cmd("DUMP").arg("brief").query(&mut c).unwrap();
    wait_until("the lease to end", || pttl(&mut c, "brief") == -2);
    let restored: String = cmd("RESTORE")
        .arg("brief")
        .arg(0)
        .arg(&brief)
        .query(&mut c)
        .unwrap();
    assert_eq!(restored, "OK");
    wait_until("the ended lock to go", || pttl(&mut c, "brief") == -2);
    assert_eq!(stat(&mut c, "dlock_locks"), 3);
}

/// A replica with `replica-read-only no` refuses dlock writes: its locks are its master's.
#[test]
fn a_writable_replica_refuses_lock_writes() {
    let master = Server::start();
    let replica = Server::with_config(&[("replica-read-only", "no")]);
    replicate_from(&replica, &master);
    let mut m = master.client();
    let token = grant(&mut m, "k", "a", 60_000);
    wait_for_replica(&mut m);
    let mut r = replica.client();
    let refused = "READONLY dlock writes are only accepted by a master (this server is a replica)";
    for command in [
        cmd("DLOCK.ACQUIRE").arg("k2").arg("b").arg(1_000).clone(),
        cmd("DLOCK.RELEASE").arg("k").arg("a").clone(),
        cmd("DLOCK.EXTEND").arg("k").arg("a").arg(1_000).clone(),
    ] {
        assert_eq!(error_of(command.query(&mut r)), refused);
    }
    assert_eq!(info(&mut r, "k").map(|i| i.1), Some(token));
}

/// SESSION bindings follow their hold through RENAME, MOVE and SWAPDB: the hold still ends with
/// its connection wherever it went.
#[test]
fn session_bindings_follow_rename_move_and_swapdb() {
    let server = Server::start();
    let mut c = server.client();
    let mut s = server.client();
    for key in ["renamed", "moved", "swapped"] {
        let _: i64 = cmd("DLOCK.ACQUIRE")
            .arg(key)
            .arg("a")
            .arg(600_000)
            .arg("SESSION")
            .query(&mut s)
            .unwrap();
    }
    let _: () = cmd("RENAME")
        .arg("renamed")
        .arg("renamed2")
        .query(&mut c)
        .unwrap();
    let _: i64 = cmd("MOVE").arg("moved").arg(1).query(&mut c).unwrap();
    let _: () = cmd("SWAPDB").arg(0).arg(2).query(&mut c).unwrap();
    assert_eq!(stat(&mut c, "dlock_session_holds"), 3);
    drop(s);
    wait_until("every session hold to go", || {
        stat(&mut c, "dlock_locks") == 0
    });
    assert_eq!(stat(&mut c, "dlock_session_holds"), 0);
}

/// A lock's timer goes with the lock: nothing stays armed for keys that are gone.
#[test]
fn timers_go_with_their_locks() {
    let server = Server::start();
    let mut c = server.client();
    for i in 0..100 {
        for (owner, ttl) in [("r1", 60_000), ("r2", 30_000)] {
            let _: i64 = cmd("DLOCK.ACQUIRE")
                .arg(format!("k{i}"))
                .arg(owner)
                .arg(ttl)
                .arg("SHARED")
                .query(&mut c)
                .unwrap();
        }
    }
    assert_eq!(stat(&mut c, "dlock_timers"), 100);
    for i in 0..50 {
        assert_eq!(release(&mut c, &format!("k{i}"), "r1"), 1);
        assert_eq!(release(&mut c, &format!("k{i}"), "r2"), 1);
    }
    assert_eq!(stat(&mut c, "dlock_timers"), 50);
    let _: () = cmd("FLUSHALL").query(&mut c).unwrap();
    assert_eq!(stat(&mut c, "dlock_timers"), 0);
}

/// A restarted (here: reloaded) or promoted server arms the timers of the locks it holds: a
/// shared holder whose lease ends before its key is removed at its lease end, counted and
/// replicated, without any command touching the key.
#[test]
fn timers_are_armed_again_after_a_reload_and_a_promotion() {
    let master = Server::start();
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    for (key, short) in [("reloaded", 1_500), ("promoted", 3_000)] {
        for (owner, ttl) in [("r1", short), ("r2", 600_000)] {
            let _: i64 = cmd("DLOCK.ACQUIRE")
                .arg(key)
                .arg(owner)
                .arg(ttl)
                .arg("SHARED")
                .query(&mut m)
                .unwrap();
        }
    }
    wait_for_replica(&mut m);
    let _: () = cmd("DEBUG").arg("RELOAD").query(&mut m).unwrap();
    let expired = stat(&mut m, "dlock_leases_expired");
    wait_until("r1's lease to be removed after the reload", || {
        stat(&mut m, "dlock_leases_expired") == expired + 1
    });
    let dump: Vec<u8> = cmd("DUMP").arg("reloaded").query(&mut m).unwrap();
    assert!(!dump.windows(2).any(|w| w == b"r1"));

    let mut r = replica.client();
    let _: () = cmd("REPLICAOF").arg("NO").arg("ONE").query(&mut r).unwrap();
    wait_until_within(
        "r1's lease to be removed after the promotion",
        Duration::from_secs(10),
        || stat(&mut r, "dlock_leases_expired") == 1,
    );
    assert_eq!(holders(&mut r, "promoted").len(), 1);
}

/// A maxmemory policy that can evict locks is announced at load and in INFO, and every
/// evicted lock is counted and published (`dlock.evicted`).
#[test]
fn evicted_locks_are_counted_and_announced() {
    let server = Server::with_config(&[
        ("maxmemory", "1gb"),
        ("maxmemory-policy", "volatile-lru"),
        ("notify-keyspace-events", "Ed"),
    ]);
    let mut c = server.client();
    assert!(
        server
            .log()
            .contains("dlock: the maxmemory policy can evict locks")
    );
    assert_eq!(stat(&mut c, "dlock_evictable"), 1);
    let mut sub = server.client();
    let _: () = cmd("SUBSCRIBE")
        .arg("__keyevent@0__:dlock.evicted")
        .query(&mut sub)
        .unwrap();
    for i in 0..200 {
        grant(&mut c, &format!("lock:{i}"), "a", 600_000);
    }
    let used = used_memory(&mut c);
    let _: () = cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used - 10_000)
        .query(&mut c)
        .unwrap();
    // Eviction runs before this write (which may still be refused for memory).
    let _ = cmd("SET")
        .arg("filler")
        .arg("x".repeat(1000))
        .query::<Value>(&mut c);
    let evicted = stat(&mut c, "dlock_evicted");
    assert!(evicted > 0);
    assert_eq!(stat(&mut c, "dlock_locks"), 200 - evicted);
    let message = sub.recv_response().unwrap();
    assert!(format!("{message:?}").contains("lock:"), "{message:?}");
    let _: () = cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut c)
        .unwrap();
    // RELEASE deleting a lock is not an eviction.
    grant(&mut c, "plain", "a", 600_000);
    assert_eq!(release(&mut c, "plain", "a"), 1);
    let _: () = cmd("SET").arg("x").arg("y").query(&mut c).unwrap();
    assert_eq!(stat(&mut c, "dlock_evicted"), evicted);
}

/// A hand-over to more queued readers than one event-loop turn grants continues over the
/// next turns until every one of them holds the lock, in order, with nobody passing the queue.
#[test]
fn a_mass_hand_over_spreads_over_turns_and_serves_everyone() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "k", "writer", 60_000);
    let readers: Vec<Connection> = (0..1_200)
        .map(|i| {
            let mut r = server.client();
            let request = cmd("DLOCK.ACQUIRE")
                .arg("k")
                .arg(format!("r{i}"))
                .arg(60_000)
                .arg("SHARED")
                .arg("WAIT")
                .arg(0)
                .get_packed_command();
            r.send_packed_command(&request).unwrap();
            r
        })
        .collect();
    wait_until("the readers to queue", || {
        stat(&mut c, "dlock_waiters") == 1_200
    });
    let (released, late): (i64, Value) = redis::pipe()
        .cmd("DLOCK.RELEASE")
        .arg("k")
        .arg("writer")
        .cmd("DLOCK.ACQUIRE")
        .arg("k")
        .arg("late")
        .arg(60_000)
        .arg("SHARED")
        .query(&mut c)
        .unwrap();
    assert_eq!(released, 1);
    // Readers still queued go first: a new reader does not pass them.
    assert_eq!(late, Value::Nil);
    let mut tokens = Vec::new();
    for mut r in readers {
        let Value::Int(token) = reply_within(&mut r, Duration::from_secs(10)).unwrap() else {
            panic!("a reader was not granted");
        };
        tokens.push(token);
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "granted out of order"
    );
    assert_eq!(stat(&mut c, "dlock_waiters"), 0);
    assert_eq!(holders(&mut c, "k").len(), 1_200);
}
