//! `DLOCK.FENCE key owner token`: raise a live hold's token and the server's token clock
//! (quorum locks carry the highest token a majority granted to every server that granted).

mod common;

use common::*;

/// A token this far above a fresh one is about 120 ms of the clock ahead: within any lead
/// `dlock.max-token-lead` allows.
const AHEAD: i64 = 1_000_000;

fn fence(c: &mut Connection, key: &str, owner: &str, token: i64) -> Option<i64> {
    cmd("DLOCK.FENCE")
        .arg(key)
        .arg(owner)
        .arg(token)
        .query(c)
        .unwrap()
}

fn last_token(c: &mut Connection) -> i64 {
    stat(c, "dlock_last_token")
}

fn guard(c: &mut Connection, key: &str, token: i64) -> redis::RedisResult<Value> {
    cmd("DLOCK.GUARD")
        .arg(key)
        .arg(token)
        .arg("SET")
        .arg(format!("{{{key}}}:data"))
        .arg(token)
        .query(c)
}

#[test]
fn fence_raises_only_a_live_holders_token_and_the_clock() {
    let server = Server::start();
    let mut c = server.client();
    assert_eq!(fence(&mut c, "absent", "a", 5), None);
    let token = grant(&mut c, "k", "a", 60_000);
    assert_eq!(fence(&mut c, "k", "other", token + AHEAD), None);
    assert_eq!(last_token(&mut c), token);

    // A lower or equal token changes nothing and replies the hold's own.
    assert_eq!(fence(&mut c, "k", "a", 1), Some(token));
    assert_eq!(fence(&mut c, "k", "a", token), Some(token));
    let pttl: i64 = cmd("PTTL").arg("k").query(&mut c).unwrap();

    let raised = token + AHEAD;
    assert_eq!(fence(&mut c, "k", "a", raised), Some(raised));
    assert_eq!(
        info(&mut c, "k").map(|i| (i.0, i.1, i.3)),
        Some(("a".into(), raised, 1))
    );
    let after: i64 = cmd("PTTL").arg("k").query(&mut c).unwrap();
    assert!(
        after <= pttl && after > pttl - 5_000,
        "the lease moved: {pttl} -> {after}"
    );
    assert_eq!(last_token(&mut c), raised);

    // The hold now carries the raised token, and only that one.
    assert_eq!(guard(&mut c, "k", raised), Ok(Value::Okay));
    assert_eq!(
        error_of(guard(&mut c, "k", token)),
        "ERR fenced write refused: stale token, the lock is held with a newer one"
    );
    // Every token issued after is above it, on any key.
    assert!(grant(&mut c, "other", "b", 60_000) > raised);
    // Re-entry keeps the raised token.
    assert_eq!(grant(&mut c, "k", "a", 60_000), raised);

    assert_eq!(stat(&mut c, "dlock_fences"), 3);
    assert_eq!(stat(&mut c, "dlock_fences_rejected"), 2);
}

#[test]
fn fence_refuses_bad_arguments_and_tokens_no_server_could_have_issued() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "k", "a", 60_000);
    let mut other = server.client();
    let mut run = |args: &[&str]| error_of(cmd("DLOCK.FENCE").arg(args).query::<Value>(&mut other));
    let arity = "ERR wrong number of arguments for 'dlock.fence' command";
    assert_eq!(run(&["k", "a"]), arity);
    assert_eq!(run(&["k", "a", "1", "2"]), arity);
    for bad in ["abc", "0", "-1", "1.5", "", "99999999999999999999"] {
        assert_eq!(
            run(&["k", "a", bad]),
            "ERR token must be a positive integer",
            "{bad:?}"
        );
    }
    assert_eq!(run(&["k", "", "5"]), "ERR owner must not be empty");
    let lead = "ERR token leads this server's clock by more than dlock.max-token-lead (0 \
                disables the check)";
    assert_eq!(run(&["k", "a", "9223372036854775807"]), lead);
    let _: () = cmd("SET")
        .arg("s")
        .arg("1")
        .query(&mut server.client())
        .unwrap();
    assert_eq!(
        run(&["s", "a", "5"]),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    // Nothing moved: not the hold, not the clock.
    assert_eq!(info(&mut c, "k").map(|i| i.1), Some(token));
    assert_eq!(last_token(&mut c), token);
    assert_eq!(stat(&mut c, "dlock_fences"), 0);

    // The lead is the config's: a token two hours ahead passes once it allows three.
    let two_hours = token + 2 * 3_600_000 * 8_192;
    assert_eq!(run(&["k", "a", &two_hours.to_string()]), lead);
    let _: () = cmd("CONFIG")
        .arg("SET")
        .arg("dlock.max-token-lead")
        .arg(3 * 3_600_000)
        .query(&mut c)
        .unwrap();
    assert_eq!(fence(&mut c, "k", "a", two_hours), Some(two_hours));
    // Back to one hour would make the server refuse its own token when it loads it again.
    let refused = error_of(
        cmd("CONFIG")
            .arg("SET")
            .arg("dlock.max-token-lead")
            .arg(3_600_000)
            .query(&mut c),
    );
    assert_eq!(
        refused,
        "ERR CONFIG SET failed (possibly related to argument 'dlock.max-token-lead') - the \
         token clock already leads this server's clock by more than that: this server would \
         refuse its own RDB and AOF files"
    );
    let kept: Vec<String> = cmd("CONFIG")
        .arg("GET")
        .arg("dlock.max-token-lead")
        .query(&mut c)
        .unwrap();
    assert_eq!(kept, ["dlock.max-token-lead", "10800000"]);
}

#[test]
fn fence_raises_one_holder_of_a_shared_lock_or_a_semaphore() {
    let server = Server::start();
    let mut c = server.client();
    for mode in [vec!["SHARED"], vec!["SEMAPHORE", "3"]] {
        let key = format!("k:{}", mode[0]);
        let mut take = |owner: &str| -> i64 {
            cmd("DLOCK.ACQUIRE")
                .arg(&key)
                .arg(owner)
                .arg(60_000)
                .arg(&mode)
                .query(&mut c)
                .unwrap()
        };
        let (r1, r2) = (take("r1"), take("r2"));
        let raised = r2 + AHEAD;
        assert_eq!(fence(&mut c, &key, "r1", raised), Some(raised));
        let tokens: Vec<(String, i64)> = holders(&mut c, &key)
            .into_iter()
            .map(|h| (h.owner, h.token))
            .collect();
        assert_eq!(tokens, [("r2".to_string(), r2), ("r1".to_string(), raised)]);
        assert!(r1 < r2);
        assert_eq!(guard(&mut c, &key, raised), Ok(Value::Okay));
        assert_eq!(guard(&mut c, &key, r2), Ok(Value::Okay));
        assert_eq!(fence(&mut c, &key, "r3", raised), None);
    }
}

#[test]
fn a_fence_that_changes_a_hold_aborts_watchers_and_one_that_does_not_leaves_them() {
    let server = Server::start();
    let mut c = server.client();
    let mut watcher = server.client();
    let token = grant(&mut c, "k", "a", 60_000);
    let exec = |w: &mut Connection, change: &mut dyn FnMut()| -> Option<Vec<String>> {
        let _: () = cmd("WATCH").arg("k").query(w).unwrap();
        change();
        let _: () = cmd("MULTI").query(w).unwrap();
        let _: () = cmd("SET").arg("x").arg("1").query(w).unwrap();
        cmd("EXEC").query(w).unwrap()
    };
    let unchanged = exec(&mut watcher, &mut || {
        assert_eq!(fence(&mut c, "k", "a", token), Some(token));
    });
    assert_eq!(unchanged, Some(vec!["OK".to_string()]));
    let changed = exec(&mut watcher, &mut || {
        assert_eq!(fence(&mut c, "k", "a", token + AHEAD), Some(token + AHEAD));
    });
    assert_eq!(changed, None);
}

#[test]
fn a_raised_token_replicates_persists_and_is_never_reissued() {
    let mut master = Server::with_config(&[("appendonly", "yes"), ("appendfsync", "always")]);
    let replica = Server::start();
    replicate_from(&replica, &master);
    let mut m = master.client();
    let token = grant(&mut m, "k", "a", 120_000);
    let raised = token + AHEAD;
    assert_eq!(fence(&mut m, "k", "a", raised), Some(raised));
    wait_for_replica(&mut m);

    let mut r = replica.client();
    assert_eq!(info(&mut r, "k").map(|i| i.1), Some(raised));
    assert_eq!(last_token(&mut r), raised);
    assert_eq!(
        error_of(
            cmd("DLOCK.FENCE")
                .arg("k")
                .arg("a")
                .arg(raised + 1)
                .query::<Value>(&mut r)
        ),
        "READONLY You can't write against a read only replica."
    );
    assert_eq!(digest(&mut r), digest(&mut m));

    // DEBUG RELOAD (RDB), then a restart from the AOF alone.
    let _: () = cmd("DEBUG").arg("RELOAD").query(&mut m).unwrap();
    assert_eq!(info(&mut m, "k").map(|i| i.1), Some(raised));
    assert_eq!(last_token(&mut m), raised);
    drop(m);
    master.kill9();
    master.restart();
    let mut m = master.client();
    assert_eq!(
        info(&mut m, "k").map(|i| (i.0, i.1)),
        Some(("a".into(), raised))
    );
    assert!(last_token(&mut m) >= raised);
    assert!(grant(&mut m, "next", "b", 60_000) > raised);

    // The replica, promoted, issues above it too.
    let _: () = cmd("REPLICAOF").arg("NO").arg("ONE").query(&mut r).unwrap();
    assert!(grant(&mut r, "after-failover", "c", 60_000) > raised);
}
