//! Configs, INFO dlock, keyspace notifications and command docs.

mod common;

use std::thread;
use std::time::Duration;

use common::*;

fn config_get(c: &mut Connection, name: &str) -> String {
    let reply: Vec<String> = cmd("CONFIG").arg("GET").arg(name).query(c).unwrap();
    assert_eq!(reply.len(), 2, "{name}: {reply:?}");
    reply[1].clone()
}

fn config_set(c: &mut Connection, name: &str, value: &str) -> RedisResult<()> {
    cmd("CONFIG").arg("SET").arg(name).arg(value).query(c)
}

fn info_dlock(c: &mut Connection) -> Vec<(String, i64)> {
    let info: String = cmd("INFO").arg("dlock").query(c).unwrap();
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().parse().expect("integer field")))
        .collect()
}

#[test]
fn configs_have_defaults_and_reject_bad_values() {
    let server = Server::start();
    let mut c = server.client();
    assert_eq!(config_get(&mut c, "dlock.max-owner-length"), "256");
    assert_eq!(config_get(&mut c, "dlock.max-ttl"), "0");
    assert_eq!(config_get(&mut c, "dlock.max-waiters"), "0");
    assert_eq!(config_get(&mut c, "dlock.expiry-timers"), "yes");
    for (name, bad) in [
        ("dlock.max-owner-length", "0"),
        ("dlock.max-owner-length", "65537"),
        ("dlock.max-owner-length", "abc"),
        ("dlock.max-ttl", "-1"),
        ("dlock.max-waiters", "-1"),
        ("dlock.expiry-timers", "maybe"),
    ] {
        let err = error_of(config_set(&mut c, name, bad).map(|_| Value::Okay));
        assert!(
            err.starts_with(&format!(
                "ERR CONFIG SET failed (possibly related to argument '{name}')"
            )),
            "{name} {bad}: {err}"
        );
    }
    assert_eq!(config_get(&mut c, "dlock.max-owner-length"), "256");
}

#[test]
fn limits_apply_as_soon_as_they_are_set() {
    let server = Server::start();
    let mut c = server.client();
    config_set(&mut c, "dlock.max-owner-length", "4").unwrap();
    let err = error_of(
        cmd("DLOCK.ACQUIRE")
            .arg("k")
            .arg("owner")
            .arg(1_000)
            .query(&mut c),
    );
    assert_eq!(err, "ERR owner is longer than 4 bytes");
    grant(&mut c, "k", "four", 1_000);
    assert_eq!(release(&mut c, "k", "four"), 1);
    // Lowering the limit never strands a current holder: it can still extend and release.
    config_set(&mut c, "dlock.max-owner-length", "256").unwrap();
    grant(&mut c, "held", "a-longer-owner", 60_000);
    config_set(&mut c, "dlock.max-owner-length", "4").unwrap();
    assert_eq!(extend(&mut c, "held", "a-longer-owner", 60_000), 1);
    assert_eq!(release(&mut c, "held", "a-longer-owner"), 1);
    assert_eq!(info(&mut c, "held"), None);

    config_set(&mut c, "dlock.max-ttl", "5000").unwrap();
    let err = error_of(
        cmd("DLOCK.ACQUIRE")
            .arg("k")
            .arg("o")
            .arg(5_001)
            .query(&mut c),
    );
    assert_eq!(err, "ERR ttl is above the limit of 5000 ms (dlock.max-ttl)");
    grant(&mut c, "k", "o", 5_000);
    let err = error_of(
        cmd("DLOCK.EXTEND")
            .arg("k")
            .arg("o")
            .arg(9_000)
            .query(&mut c),
    );
    assert_eq!(err, "ERR ttl is above the limit of 5000 ms (dlock.max-ttl)");

    config_set(&mut c, "dlock.max-waiters", "1").unwrap();
    let first = blocked_connection(&server, "k", "w1", 1_000, 0);
    wait_until("one waiter", || waiters(&mut c, "k") == 1);
    let err = error_of(
        cmd("DLOCK.ACQUIRE")
            .arg("k")
            .arg("w2")
            .arg(1_000)
            .arg("WAIT")
            .arg(0)
            .query(&mut c),
    );
    assert_eq!(
        err,
        "ERR too many clients wait for this lock (dlock.max-waiters is 1)"
    );
    assert_eq!(waiters(&mut c, "k"), 1);
    drop(first);
}

#[test]
fn loadmodule_arguments_and_config_file_lines_set_configs() {
    let server = Server::with_module_args(
        &["max-owner-length", "100", "dlock.max-waiters", "7"],
        &[("dlock.max-ttl", "60000")],
    );
    let mut c = server.client();
    assert_eq!(config_get(&mut c, "dlock.max-owner-length"), "100");
    assert_eq!(config_get(&mut c, "dlock.max-waiters"), "7");
    assert_eq!(config_get(&mut c, "dlock.max-ttl"), "60000");
}

#[test]
fn a_bad_loadmodule_argument_refuses_to_load_with_a_clear_log_line() {
    for (args, line) in [
        (
            &["bogus", "1"][..],
            "dlock: cannot load: unknown module argument 'bogus'",
        ),
        (
            &["max-owner-length", "0"][..],
            "dlock: cannot load: max-owner-length must be an integer from 1 to 65536, not '0'",
        ),
        (
            &["max-ttl"][..],
            "dlock: cannot load: module arguments must be NAME VALUE pairs",
        ),
    ] {
        let mut server = Server::prepare(&[], Some(args));
        assert!(!server.try_start(), "started with {args:?}");
        let log = server.log();
        assert!(log.contains(line), "{args:?}: {log}");
    }
}

#[test]
fn without_expiry_timers_the_hand_over_waits_for_redis_to_expire_the_key() {
    let server = Server::with_module_args(&["expiry-timers", "no"], &[]);
    let mut c = server.client();
    grant(&mut c, "k", "holder", 100);
    let mut w = server.client();
    let reply: Value = cmd("DLOCK.ACQUIRE")
        .arg("k")
        .arg("next")
        .arg(1_000)
        .arg("WAIT")
        .arg(5_000)
        .query(&mut w)
        .unwrap();
    assert!(matches!(reply, Value::Int(_)), "{reply:?}");
    assert_eq!(info(&mut c, "k").map(|i| i.0), Some("next".into()));
}

#[test]
fn info_dlock_counts_every_kind_of_event() {
    let server = Server::start();
    let mut c = server.client();
    let names: Vec<String> = info_dlock(&mut c).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "dlock_locks",
            "dlock_waiters",
            "dlock_grants_immediate",
            "dlock_grants_after_wait",
            "dlock_reentries",
            "dlock_releases",
            "dlock_releases_rejected",
            "dlock_extends",
            "dlock_extends_rejected",
            "dlock_leases_expired",
            "dlock_wait_timeouts",
            "dlock_guards",
            "dlock_guards_refused",
            "dlock_fences",
            "dlock_fences_rejected",
            "dlock_evictable",
            "dlock_evicted",
            "dlock_last_token",
            "dlock_node_id",
            "dlock_session_holds",
            "dlock_timers",
        ]
    );
    let t1 = grant(&mut c, "a", "w", 60_000);
    grant(&mut c, "a", "w", 60_000);
    grant(&mut c, "b", "w", 60_000);
    assert_eq!(acquire(&mut c, "a", "other", 60_000), Value::Nil);
    assert_eq!(extend(&mut c, "a", "w", 60_000), 1);
    assert_eq!(extend(&mut c, "a", "other", 60_000), 0);
    assert_eq!(release(&mut c, "a", "other"), 0);
    assert_eq!(release(&mut c, "a", "w"), 1);
    assert_eq!(stat(&mut c, "dlock_locks"), 2);
    assert_eq!(stat(&mut c, "dlock_grants_immediate"), 2);
    assert_eq!(stat(&mut c, "dlock_reentries"), 1);
    assert_eq!(stat(&mut c, "dlock_extends"), 1);
    assert_eq!(stat(&mut c, "dlock_extends_rejected"), 1);
    assert_eq!(stat(&mut c, "dlock_releases"), 1);
    assert_eq!(stat(&mut c, "dlock_releases_rejected"), 1);
    assert!(stat(&mut c, "dlock_last_token") > t1);

    // A waiter that times out, one granted on release, and a lease that ends unreleased.
    let timed_out: Value = cmd("DLOCK.ACQUIRE")
        .arg("b")
        .arg("late")
        .arg(1_000)
        .arg("WAIT")
        .arg(20)
        .query(&mut c)
        .unwrap();
    assert_eq!(timed_out, Value::Nil);
    assert_eq!(stat(&mut c, "dlock_wait_timeouts"), 1);
    let waiter = blocked_connection(&server, "b", "next", 50, 0);
    wait_until("the waiter to queue", || stat(&mut c, "dlock_waiters") == 1);
    assert_eq!(release(&mut c, "b", "w"), 1);
    wait_until("the hand-over", || {
        stat(&mut c, "dlock_grants_after_wait") == 1
    });
    assert_eq!(stat(&mut c, "dlock_waiters"), 0);
    wait_until("the lease to end", || stat(&mut c, "dlock_locks") == 1);
    assert_eq!(stat(&mut c, "dlock_leases_expired"), 1);
    drop(waiter);
}

#[test]
fn lock_events_are_published_as_keyspace_notifications() {
    let server = Server::with_config(&[("notify-keyspace-events", "Ed")]);
    let mut c = server.client();
    let mut sub = server.client();
    let _: () = cmd("PSUBSCRIBE")
        .arg("__keyevent@0__:dlock.*")
        .query(&mut sub)
        .unwrap();
    grant(&mut c, "k", "a", 60_000);
    grant(&mut c, "k", "a", 60_000);
    assert_eq!(extend(&mut c, "k", "a", 60_000), 1);
    assert_eq!(release(&mut c, "k", "a"), 1);
    let waiter = blocked_connection(&server, "k", "b", 60_000, 0);
    wait_until("the waiter to queue", || waiters(&mut c, "k") == 1);
    assert_eq!(release(&mut c, "k", "a"), 1);
    assert_eq!(release(&mut c, "k", "b"), 1);
    // A lock restored with a key TTL longer than its hold's lease: the next acquire finds the
    // lease ended.
    grant(&mut c, "template", "x", 20);
    let dump: Vec<u8> = cmd("DUMP").arg("template").query(&mut c).unwrap();
    thread::sleep(Duration::from_millis(30));
    let _: () = cmd("RESTORE")
        .arg("k")
        .arg(60_000)
        .arg(dump)
        .query(&mut c)
        .unwrap();
    grant(&mut c, "k", "c", 60_000);

    let mut events = vec![];
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while events.len() < 8 {
        let msg = sub.recv_response().unwrap();
        let Ok((kind, _pattern, channel, key)) =
            redis::from_redis_value::<(String, String, String, String)>(&msg)
        else {
            continue;
        };
        if kind == "pmessage" && key == "k" {
            events.push(channel.trim_start_matches("__keyevent@0__:").to_string());
        }
    }
    assert_eq!(
        events,
        [
            "dlock.acquired",
            "dlock.reentered",
            "dlock.extended",
            "dlock.released",
            "dlock.handover",
            "dlock.released",
            "dlock.expired",
            "dlock.acquired",
        ]
    );
    drop(waiter);
}

#[test]
fn command_docs_and_key_specs_describe_every_command() {
    let server = Server::start();
    let mut c = server.client();
    let expected: [(&str, i64, &str, &[&str]); 7] = [
        (
            "dlock.acquire",
            -4,
            "RW update",
            &[
                "key",
                "owner",
                "ttl_ms",
                "timeout_ms",
                "session",
                "shared",
                "limit",
                "permits",
            ],
        ),
        ("dlock.release", 3, "RW delete", &["key", "owner"]),
        ("dlock.extend", 4, "RW update", &["key", "owner", "ttl_ms"]),
        ("dlock.fence", 4, "RW update", &["key", "owner", "token"]),
        ("dlock.info", -2, "RO access", &["key", "count", "token"]),
        (
            "dlock.guard",
            -4,
            "RO access RW incomplete variable_flags",
            &["lockkey", "token", "command", "arg"],
        ),
        (
            "dlock.apply",
            -6,
            "RW update",
            &["key", "owner", "token", "holds", "lease_end_ms"],
        ),
    ];
    for (name, arity, key_flags, args) in expected {
        let docs: Value = cmd("COMMAND").arg("DOCS").arg(name).query(&mut c).unwrap();
        let text = format!("{docs:?}");
        assert!(
            text.contains("summary") && text.contains("0.1.0") && text.contains("O(log N"),
            "{name}: {text}"
        );
        for arg in args {
            assert!(
                text.contains(&format!("\"{arg}\"")),
                "{name} documents {arg}: {text}"
            );
        }
        let info: Vec<Value> = cmd("COMMAND").arg("INFO").arg(name).query(&mut c).unwrap();
        let Value::Array(entry) = &info[0] else {
            panic!("{name}")
        };
        assert_eq!(entry[1], Value::Int(arity), "{name} arity");
        let specs = format!("{:?}", entry[8]);
        for flag in key_flags.split(' ') {
            assert!(
                specs.contains(&format!("\"{flag}\"")),
                "{name} key spec has {flag}: {specs}"
            );
        }
    }
    let docs: Value = cmd("COMMAND")
        .arg("DOCS")
        .arg("dlock.acquire")
        .query(&mut c)
        .unwrap();
    let text = format!("{docs:?}");
    assert!(
        text.contains("\"WAIT\"") && text.contains("\"optional\""),
        "{text}"
    );
}

#[test]
fn read_only_key_permissions_allow_info_but_not_writes() {
    let server = Server::start();
    let mut admin = server.client();
    let token = grant(&mut admin, "k", "w", 60_000);
    let _: () = cmd("SET").arg("data").arg("v").query(&mut admin).unwrap();
    let _: () = cmd("ACL")
        .arg(&["SETUSER", "reader", "on", ">pw", "%R~*", "+@all"][..])
        .query(&mut admin)
        .unwrap();
    let mut c = server.client_as("reader", "pw");
    assert_eq!(info(&mut c, "k").map(|i| i.0), Some("w".into()));
    for err in [
        error_of(cmd("DLOCK.ACQUIRE").arg("k").arg("x").arg(10).query(&mut c)),
        error_of(cmd("DLOCK.RELEASE").arg("k").arg("w").query(&mut c)),
        error_of(cmd("DLOCK.EXTEND").arg("k").arg("w").arg(10).query(&mut c)),
        // GUARD declares its command's keys with that command's flags.
        error_of(
            cmd("DLOCK.GUARD")
                .arg(&["k", &token.to_string(), "SET", "data", "w"][..])
                .query(&mut c),
        ),
    ] {
        assert!(err.starts_with("NOPERM"), "{err}");
    }
    let read: String = cmd("DLOCK.GUARD")
        .arg(&["k", &token.to_string(), "GET", "data"][..])
        .query(&mut c)
        .unwrap();
    assert_eq!(read, "v");
    assert_eq!(info(&mut admin, "k").map(|i| i.0), Some("w".into()));
}
