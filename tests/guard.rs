//! `DLOCK.GUARD lockkey token command [arg ...]`: fenced writes inside Redis.

mod common;

use common::*;

const NOT_HELD: &str = "ERR fenced write refused: the lock is not held";
const STALE: &str = "ERR fenced write refused: stale token, the lock is held with a newer one";
const UNKNOWN: &str = "ERR fenced write refused: no holder of the lock has this token";

fn guard(c: &mut Connection, lock: &str, token: i64, command: &[&str]) -> RedisResult<Value> {
    cmd("DLOCK.GUARD")
        .arg(lock)
        .arg(token)
        .arg(command)
        .query(c)
}

fn get(c: &mut Connection, key: &str) -> Option<String> {
    cmd("GET").arg(key).query(c).expect("GET")
}

#[test]
fn the_current_token_runs_the_command_and_any_other_runs_nothing() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "lock", "me", 60_000);
    assert_eq!(
        guard(&mut c, "lock", token, &["SET", "data", "v1"]),
        Ok(Value::Okay)
    );
    assert_eq!(get(&mut c, "data"), Some("v1".into()));

    assert_eq!(
        error_of(guard(&mut c, "lock", token - 1, &["SET", "data", "old"])),
        STALE
    );
    assert_eq!(
        error_of(guard(&mut c, "lock", token + 1, &["SET", "data", "new"])),
        UNKNOWN
    );
    assert_eq!(
        error_of(guard(&mut c, "free", token, &["SET", "data", "x"])),
        NOT_HELD
    );
    let _: () = cmd("SET").arg("string").arg("v").query(&mut c).unwrap();
    assert_eq!(
        error_of(guard(&mut c, "string", token, &["SET", "data", "x"])),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    assert_eq!(get(&mut c, "data"), Some("v1".into()));
    assert_eq!(stat(&mut c, "dlock_guards"), 1);
    assert_eq!(stat(&mut c, "dlock_guards_refused"), 3);

    // After RELEASE the token fences nothing.
    assert_eq!(release(&mut c, "lock", "me"), 1);
    assert_eq!(
        error_of(guard(&mut c, "lock", token, &["SET", "data", "late"])),
        NOT_HELD
    );
    assert_eq!(get(&mut c, "data"), Some("v1".into()));
}

#[test]
fn bad_arguments_get_clear_errors() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "lock", "me", 60_000);
    for bad in ["0", "-1", "abc", "1.5", "", "9223372036854775808"] {
        assert_eq!(
            error_of(
                cmd("DLOCK.GUARD")
                    .arg("lock")
                    .arg(bad)
                    .arg("GET")
                    .arg("k")
                    .query(&mut c)
            ),
            "ERR token must be a positive integer",
            "token {bad:?}"
        );
    }
    assert_eq!(
        error_of(cmd("DLOCK.GUARD").arg("lock").arg(token).query(&mut c)),
        "ERR wrong number of arguments for 'dlock.guard' command"
    );
    // The command's own errors come back unchanged.
    assert_eq!(
        error_of(guard(&mut c, "lock", token, &["GET"])),
        "ERR wrong number of arguments for 'get' command"
    );
    let unknown = error_of(guard(&mut c, "lock", token, &["NOSUCH", "a"]));
    assert!(
        unknown.starts_with("ERR unknown command 'NOSUCH'"),
        "{unknown}"
    );
    // Errors that quote an argument come back printable: a CR LF in it cannot break the
    // protocol stream, nor invalid UTF-8 a client. (Redis 7.0 turns the CR LF into spaces
    // itself, later versions may not: either way nothing but printable ASCII arrives.)
    let quoted = error_of(
        cmd("DLOCK.GUARD")
            .arg("lock")
            .arg(token)
            .arg("OBJECT")
            .arg(&b"p\r\n\xe0z"[..])
            .query(&mut c),
    );
    assert!(
        [
            "ERR unknown subcommand 'p  ?z'",
            "ERR unknown subcommand 'p???z'"
        ]
        .iter()
        .any(|start| quoted.starts_with(start)),
        "{quoted}"
    );
    let pong: String = cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    let _: () = cmd("RPUSH").arg("list").arg("a").query(&mut c).unwrap();
    assert_eq!(
        error_of(guard(&mut c, "lock", token, &["INCR", "list"])),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
}

#[test]
fn blocking_and_non_nestable_commands_are_refused() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "lock", "me", 60_000);
    let _: () = cmd("RPUSH").arg("list").arg("a").query(&mut c).unwrap();
    for (command, error) in [
        (
            &["BLPOP", "list", "0"][..],
            "ERR DLOCK.GUARD cannot run 'blpop': it may block",
        ),
        (
            &["blmove", "list", "other", "LEFT", "LEFT", "0"][..],
            "ERR DLOCK.GUARD cannot run 'blmove': it may block",
        ),
        (
            &["XREAD", "STREAMS", "s", "0"][..],
            "ERR DLOCK.GUARD cannot run 'xread': it may block",
        ),
        (
            &["MULTI"][..],
            "ERR DLOCK.GUARD cannot run 'multi': it cannot run inside another command",
        ),
        (
            &["WATCH", "list"][..],
            "ERR DLOCK.GUARD cannot run 'watch': it cannot run inside another command",
        ),
        (
            &["SUBSCRIBE", "ch"][..],
            "ERR DLOCK.GUARD cannot run 'subscribe': it cannot run inside another command",
        ),
        (
            &["Client", "PAUSE", "1000"][..],
            "ERR DLOCK.GUARD cannot run 'client|pause': it cannot run inside another command",
        ),
    ] {
        assert_eq!(error_of(guard(&mut c, "lock", token, command)), error);
    }
    let len: i64 = cmd("LLEN").arg("list").query(&mut c).unwrap();
    assert_eq!(len, 1);
    // Subcommands that may run do.
    let _: () = cmd("SADD").arg("numbers").arg(1).query(&mut c).unwrap();
    assert_eq!(
        guard(&mut c, "lock", token, &["OBJECT", "ENCODING", "numbers"]),
        Ok(Value::BulkString(b"intset".to_vec()))
    );
}

#[test]
fn replies_pass_through_in_the_callers_protocol() {
    let server = Server::start();
    let mut c = server.client();
    let mut c3 = server.client_resp3();
    let token = grant(&mut c, "lock", "me", 60_000);
    let _: () = cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        guard(&mut c, "lock", token, &["HGETALL", "h"]),
        Ok(Value::Array(vec![
            Value::BulkString(b"f".to_vec()),
            Value::BulkString(b"v".to_vec())
        ]))
    );
    assert_eq!(
        guard(&mut c3, "lock", token, &["HGETALL", "h"]),
        Ok(Value::Map(vec![(
            Value::BulkString(b"f".to_vec()),
            Value::BulkString(b"v".to_vec())
        )]))
    );
    assert_eq!(
        guard(&mut c, "lock", token, &["INCRBY", "n", "5"]),
        Ok(Value::Int(5))
    );
    assert_eq!(
        guard(&mut c, "lock", token, &["GET", "none"]),
        Ok(Value::Nil)
    );
    // Guards do not nest; a guarded DLOCK command works like any other.
    assert_eq!(
        error_of(
            cmd("DLOCK.GUARD")
                .arg("lock")
                .arg(token)
                .arg("dlock.guard")
                .arg("lock")
                .arg(token)
                .arg("INCR")
                .arg("n")
                .query(&mut c)
        ),
        "ERR DLOCK.GUARD cannot run 'dlock.guard': guards do not nest"
    );
    assert_eq!(
        guard(&mut c, "lock", token, &["DLOCK.RELEASE", "lock", "me"]),
        Ok(Value::Int(1))
    );
    assert_eq!(info(&mut c, "lock"), None);
}

#[test]
fn a_holder_paused_past_its_lease_cannot_write_after_another_took_the_lock() {
    let server = Server::start();
    let mut a = server.client();
    let mut b = server.client();
    let old = grant(&mut a, "lock", "a", 100);
    assert_eq!(
        guard(&mut a, "lock", old, &["SET", "data", "a1"]),
        Ok(Value::Okay)
    );
    // `a` stalls (a GC pause) past its lease; the lease alone ends its right to write.
    wait_until("the lease to end", || info(&mut b, "lock").is_none());
    assert_eq!(
        error_of(guard(&mut a, "lock", old, &["SET", "data", "a2"])),
        NOT_HELD
    );
    let new = grant(&mut b, "lock", "b", 60_000);
    assert!(new > old);
    assert_eq!(
        guard(&mut b, "lock", new, &["SET", "data", "b1"]),
        Ok(Value::Okay)
    );
    assert_eq!(
        error_of(guard(&mut a, "lock", old, &["SET", "data", "a3"])),
        STALE
    );
    assert_eq!(get(&mut a, "data"), Some("b1".into()));
}

#[test]
fn keys_are_declared_for_getkeys_acl_and_routing() {
    let server = Server::start();
    let mut admin = server.client();
    let keys: Vec<String> = cmd("COMMAND")
        .arg("GETKEYS")
        .arg(&["DLOCK.GUARD", "lock", "1", "MSET", "a", "1", "b", "2"][..])
        .query(&mut admin)
        .unwrap();
    assert_eq!(keys, ["lock", "a", "b"]);
    let keys: Vec<String> = cmd("COMMAND")
        .arg("GETKEYS")
        .arg(&["DLOCK.GUARD", "lock", "1", "PING"][..])
        .query(&mut admin)
        .unwrap();
    assert_eq!(keys, ["lock"]);
    // Thousands of nested guards: the key lookup does not recurse through them.
    let mut nested = vec!["DLOCK.GUARD"];
    for _ in 0..5_000 {
        nested.extend(["lock", "1", "DLOCK.GUARD"]);
    }
    nested.extend(["lock", "1", "SET", "k", "v"]);
    let keys: Vec<String> = cmd("COMMAND")
        .arg("GETKEYS")
        .arg(&nested[..])
        .query(&mut admin)
        .unwrap();
    assert_eq!(keys, ["lock"]);
    let pong: String = cmd("PING").query(&mut admin).unwrap();
    assert_eq!(pong, "PONG");

    let _: () = cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "app",
                "on",
                ">pw",
                "~lock:*",
                "~app:*",
                "+dlock.acquire",
                "+dlock.guard",
                "+set",
            ][..],
        )
        .query(&mut admin)
        .unwrap();
    let mut c = server.client_as("app", "pw");
    let token = grant(&mut c, "lock:1", "w", 60_000);
    assert_eq!(
        guard(&mut c, "lock:1", token, &["SET", "app:1", "v"]),
        Ok(Value::Okay)
    );
    // A key outside the user's patterns: refused before anything runs.
    let err = error_of(guard(&mut c, "lock:1", token, &["SET", "other", "v"]));
    assert!(NOPERM_KEY.contains(&err.as_str()), "{err}");
    // A command the user may not run: refused by the command's own ACL check.
    let err = error_of(guard(&mut c, "lock:1", token, &["DEL", "app:1"]));
    assert_eq!(
        err,
        "NOPERM User app has no permissions to run the 'del' command"
    );
    let exists: i64 = cmd("EXISTS").arg("other").query(&mut admin).unwrap();
    assert_eq!(exists, 0);
    assert_eq!(get(&mut admin, "app:1"), Some("v".into()));
}

#[test]
fn the_command_reaches_replicas_and_the_aof_exactly_once_as_its_effect() {
    let mut master = Server::with_config(&[("appendonly", "yes"), ("appendfsync", "always")]);
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    let token = grant(&mut m, "lock", "me", 600_000);
    for _ in 0..3 {
        assert_eq!(
            guard(&mut m, "lock", token, &["INCR", "counter"]).map(|_| ()),
            Ok(())
        );
    }
    let _: () = cmd("SADD")
        .arg("set")
        .arg(&["a", "b", "c", "d"][..])
        .query(&mut m)
        .unwrap();
    // Non-deterministic commands replicate as what they did (SPOP as SREM, EXPIRE as
    // PEXPIREAT), so the replica ends equal.
    let _: Value = guard(&mut m, "lock", token, &["SPOP", "set"]).unwrap();
    let _: Value = guard(&mut m, "lock", token, &["EXPIRE", "counter", "1000"]).unwrap();
    let _ = error_of(guard(&mut m, "lock", token - 1, &["INCR", "counter"]));
    wait_for_replica(&mut m);
    let mut r = replica.client();
    assert_eq!(get(&mut r, "counter"), Some("3".into()));
    let members: i64 = cmd("SCARD").arg("set").query(&mut r).unwrap();
    assert_eq!(members, 3);
    assert_eq!(digest(&mut r), digest(&mut m));

    // A guard on a replica is a write: refused there.
    assert_eq!(
        error_of(guard(&mut r, "lock", token, &["INCR", "counter"])),
        "READONLY You can't write against a read only replica."
    );

    let before = digest(&mut m);
    master.kill9();
    master.restart();
    let mut m = master.client();
    assert_eq!(get(&mut m, "counter"), Some("3".into()));
    assert_eq!(digest(&mut m), before);
}

#[test]
fn transactions_scripts_and_maxmemory_apply() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "lock", "me", 60_000);
    let replies: (String, i64) = redis::pipe()
        .atomic()
        .cmd("DLOCK.GUARD")
        .arg("lock")
        .arg(token)
        .arg("SET")
        .arg("k")
        .arg("v")
        .cmd("DLOCK.GUARD")
        .arg("lock")
        .arg(token)
        .arg("APPEND")
        .arg("k")
        .arg("w")
        .query(&mut c)
        .unwrap();
    assert_eq!(replies, ("OK".into(), 2));
    let from_lua: String = cmd("EVAL")
        .arg("return redis.call('DLOCK.GUARD', KEYS[1], ARGV[1], 'GET', KEYS[2])")
        .arg(2)
        .arg("lock")
        .arg("k")
        .arg(token)
        .query(&mut c)
        .unwrap();
    assert_eq!(from_lua, "vw");

    // Over maxmemory a command that needs memory is refused; one that frees memory runs.
    let _: () = cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let oom = error_of(guard(&mut c, "lock", token, &["SET", "k2", "v"]));
    assert!(oom.starts_with("OOM command not allowed"), "{oom}");
    assert_eq!(
        guard(&mut c, "lock", token, &["DEL", "k"]),
        Ok(Value::Int(1))
    );
}

#[test]
fn a_renamed_command_is_guarded_by_its_new_name() {
    let server = Server::with_config(&[("rename-command", "SET PUT")]);
    let mut c = server.client();
    let token = grant(&mut c, "lock", "me", 60_000);
    assert_eq!(
        guard(&mut c, "lock", token, &["put", "data", "v"]),
        Ok(Value::Okay)
    );
    assert_eq!(
        guard(&mut c, "lock", token, &["PUT", "data", "w"]),
        Ok(Value::Okay)
    );
    assert_eq!(get(&mut c, "data"), Some("w".into()));
    let unknown = error_of(guard(&mut c, "lock", token, &["SET", "data", "x"]));
    assert!(
        unknown.starts_with("ERR unknown command 'SET'"),
        "{unknown}"
    );
}
