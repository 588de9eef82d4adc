//! The command contract: replies, errors and the state they leave behind.

mod common;

use std::collections::HashSet;

use common::*;

#[test]
fn module_load_at_run_time_registers_the_commands() {
    let server = Server::without_module();
    let mut c = server.client();
    let err = error_of(cmd("DLOCK.ACQUIRE").arg("k").arg("o").arg(10).query(&mut c));
    assert!(
        err.starts_with("ERR unknown command 'DLOCK.ACQUIRE'"),
        "{err}"
    );
    let _: () = cmd("MODULE")
        .arg("LOAD")
        .arg(module_path().to_string_lossy().as_ref())
        .query(&mut c)
        .unwrap();
    let modules: Vec<Vec<Value>> = cmd("MODULE").arg("LIST").query(&mut c).unwrap();
    assert_eq!(modules.len(), 1);
    assert_eq!(modules[0][1], Value::BulkString(b"dlock".to_vec()));
    assert!(grant(&mut c, "k", "o", 10_000) > 0);
}

#[test]
fn acquire_grants_a_free_lock_with_a_token_and_a_lease() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "job", "w1", 30_000);
    assert!(token > 0);
    let (owner, info_token, ttl, holds) = info(&mut c, "job").expect("held");
    assert_eq!((owner.as_str(), info_token, holds), ("w1", token, 1));
    assert!((29_000..=30_000).contains(&ttl), "ttl {ttl}");
    let pttl: i64 = cmd("PTTL").arg("job").query(&mut c).unwrap();
    assert!((29_000..=30_000).contains(&pttl), "pttl {pttl}");
    let kind: String = cmd("TYPE").arg("job").query(&mut c).unwrap();
    assert_eq!(kind, "dlocklock");
}

#[test]
fn another_owner_gets_nil_and_changes_nothing() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "job", "w1", 30_000);
    assert_eq!(acquire(&mut c, "job", "w2", 60_000), Value::Nil);
    let (owner, info_token, ttl, holds) = info(&mut c, "job").expect("held");
    assert_eq!((owner.as_str(), info_token, holds), ("w1", token, 1));
    assert!(ttl <= 30_000);
}

#[test]
fn reentry_counts_holds_keeps_the_token_and_resets_the_lease() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "job", "w1", 30_000);
    assert_eq!(grant(&mut c, "job", "w1", 5_000), token);
    let (_, _, ttl, holds) = info(&mut c, "job").expect("held");
    assert_eq!(holds, 2);
    assert!((4_000..=5_000).contains(&ttl), "ttl {ttl}");
    assert_eq!(release(&mut c, "job", "w1"), 1);
    assert_eq!(info(&mut c, "job").map(|i| i.3), Some(1));
    assert_eq!(release(&mut c, "job", "w1"), 1);
    assert_eq!(info(&mut c, "job"), None);
    let exists: i64 = cmd("EXISTS").arg("job").query(&mut c).unwrap();
    assert_eq!(exists, 0);
    assert_eq!(release(&mut c, "job", "w1"), 0);
}

#[test]
fn only_the_owner_releases_or_extends() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "job", "w1", 30_000);
    assert_eq!(release(&mut c, "job", "w2"), 0);
    assert_eq!(extend(&mut c, "job", "w2", 90_000), 0);
    assert_eq!(release(&mut c, "missing", "w1"), 0);
    assert_eq!(extend(&mut c, "missing", "w1", 1_000), 0);
    let (owner, info_token, ttl, _) = info(&mut c, "job").expect("still held");
    assert_eq!((owner.as_str(), info_token), ("w1", token));
    assert!(ttl <= 30_000);
}

#[test]
fn extend_moves_the_lease_from_now() {
    let server = Server::start();
    let mut c = server.client();
    grant(&mut c, "job", "w1", 1_000);
    assert_eq!(extend(&mut c, "job", "w1", 50_000), 1);
    let (_, _, ttl, holds) = info(&mut c, "job").expect("held");
    assert!((49_000..=50_000).contains(&ttl), "ttl {ttl}");
    assert_eq!(holds, 1);
    let pttl: i64 = cmd("PTTL").arg("job").query(&mut c).unwrap();
    assert!((49_000..=50_000).contains(&pttl), "pttl {pttl}");
}

#[test]
fn tokens_strictly_increase_across_keys_and_grants() {
    let server = Server::start();
    let mut c = server.client();
    let mut last = 0;
    for i in 0..500 {
        let key = format!("k{}", i % 7);
        let token = grant(&mut c, &key, "w", 10_000);
        assert!(token > last, "token {token} after {last}");
        last = token;
        assert_eq!(release(&mut c, &key, "w"), 1);
    }
}

#[test]
fn a_lease_that_ends_frees_the_lock() {
    let server = Server::start();
    let mut c = server.client();
    let first = grant(&mut c, "job", "w1", 50);
    wait_until("the lease to end", || info(&mut c, "job").is_none());
    assert_eq!(release(&mut c, "job", "w1"), 0);
    assert_eq!(extend(&mut c, "job", "w1", 1_000), 0);
    let second = grant(&mut c, "job", "w2", 10_000);
    assert!(second > first);
    assert_eq!(info(&mut c, "job").map(|i| i.0), Some("w2".to_string()));
}

#[test]
fn star_owner_generates_distinct_well_formed_ids() {
    let server = Server::start();
    let mut c = server.client();
    let mut owners = HashSet::new();
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("DLOCK.ACQUIRE")
            .arg(format!("g{i}"))
            .arg("*")
            .arg(60_000);
    }
    let replies: Vec<(i64, String)> = pipe.query(&mut c).unwrap();
    for (i, (token, owner)) in replies.iter().enumerate() {
        assert!(*token > 0);
        assert_eq!(owner.len(), 32, "{owner}");
        assert!(
            owner
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(owners.insert(owner.clone()), "duplicate owner {owner}");
        if i < 3 {
            let (held_by, held_token, _, _) = info(&mut c, &format!("g{i}")).unwrap();
            assert_eq!((&held_by, held_token), (owner, *token));
        }
    }
    assert_eq!(owners.len(), 10_000);
}

#[test]
fn errors_are_exact() {
    let server = Server::start();
    let mut c = server.client();
    let mut run = |args: &[&str]| -> String {
        let mut command = cmd(args[0]);
        for a in &args[1..] {
            command.arg(*a);
        }
        error_of(command.query::<Value>(&mut c))
    };
    let arity = |name: &str| format!("ERR wrong number of arguments for '{name}' command");
    assert_eq!(run(&["dlock.acquire", "k", "o"]), arity("dlock.acquire"));
    assert_eq!(run(&["dlock.acquire"]), arity("dlock.acquire"));
    assert_eq!(run(&["dlock.release", "k"]), arity("dlock.release"));
    assert_eq!(
        run(&["dlock.release", "k", "o", "x"]),
        arity("dlock.release")
    );
    assert_eq!(run(&["dlock.extend", "k", "o"]), arity("dlock.extend"));
    assert_eq!(
        run(&["dlock.extend", "k", "o", "1", "2"]),
        arity("dlock.extend")
    );
    assert_eq!(run(&["dlock.info"]), arity("dlock.info"));
    assert_eq!(run(&["dlock.info", "a", "b"]), "ERR syntax error");

    let ttl = "ERR ttl must be a positive integer in milliseconds";
    for bad in ["abc", "0", "-5", "1.5", "", "10x", "99999999999999999999"] {
        assert_eq!(run(&["dlock.acquire", "k", "o", bad]), ttl, "ttl {bad:?}");
        assert_eq!(run(&["dlock.extend", "k", "o", bad]), ttl, "ttl {bad:?}");
    }
    let overflow = "ERR ttl is above the maximum of 1099511627776 ms (2^40)";
    assert_eq!(
        run(&["dlock.acquire", "k", "o", "9223372036854775807"]),
        overflow
    );
    assert_eq!(
        run(&["dlock.extend", "k", "o", "9223372036854775000"]),
        overflow
    );
    // The largest lease is accepted, one more is not.
    assert_eq!(run(&["dlock.acquire", "k", "o", "1099511627777"]), overflow);
    let longest: i64 = cmd("DLOCK.ACQUIRE")
        .arg("long")
        .arg("o")
        .arg(1_099_511_627_776_i64)
        .query(&mut server.client())
        .unwrap();
    assert!(longest > 0);
    assert_eq!(release(&mut server.client(), "long", "o"), 1);

    let empty = "ERR owner must not be empty";
    assert_eq!(run(&["dlock.acquire", "k", "", "10"]), empty);
    assert_eq!(run(&["dlock.release", "k", ""]), empty);
    assert_eq!(run(&["dlock.extend", "k", "", "10"]), empty);
    let long = "o".repeat(257);
    let too_long = "ERR owner is longer than 256 bytes";
    assert_eq!(run(&["dlock.acquire", "k", &long, "10"]), too_long);
    // RELEASE and EXTEND name an existing hold: only the largest possible limit applies.
    let longest = "o".repeat(65_537);
    let too_long_ever = "ERR owner is longer than 65536 bytes";
    assert_eq!(run(&["dlock.release", "k", &longest]), too_long_ever);
    assert_eq!(run(&["dlock.extend", "k", &longest, "10"]), too_long_ever);

    assert_eq!(
        run(&["dlock.acquire", "k", "o", "10", "BOGUS"]),
        "ERR syntax error"
    );

    assert_eq!(
        run(&["dlock.apply", "k", "o", "1", "1", "99999999999999"]),
        "ERR DLOCK.APPLY is internal: only a master's replication stream or the AOF may send it"
    );

    // Nothing above left a key behind.
    let keys: Vec<String> = cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[test]
fn an_owner_of_exactly_the_limit_and_binary_owners_work() {
    let server = Server::start();
    let mut c = server.client();
    let long = "o".repeat(256);
    grant(&mut c, "a", &long, 10_000);
    assert_eq!(release(&mut c, "a", &long), 1);
    let binary: &[u8] = b"own\0er\xff";
    let token: i64 = cmd("DLOCK.ACQUIRE")
        .arg("b")
        .arg(binary)
        .arg(10_000)
        .query(&mut c)
        .unwrap();
    let reply: Vec<Value> = cmd("DLOCK.INFO").arg("b").query(&mut c).unwrap();
    assert_eq!(reply[1], Value::BulkString(binary.to_vec()));
    assert_eq!(reply[3], Value::Int(token));
    let released: i64 = cmd("DLOCK.RELEASE")
        .arg("b")
        .arg(binary)
        .query(&mut c)
        .unwrap();
    assert_eq!(released, 1);
}

#[test]
fn other_types_get_wrongtype_and_keep_their_value() {
    let server = Server::start();
    let mut c = server.client();
    let _: () = cmd("SET").arg("s").arg("v").query(&mut c).unwrap();
    let _: () = cmd("RPUSH").arg("l").arg("x").query(&mut c).unwrap();
    let wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value";
    for key in ["s", "l"] {
        assert_eq!(
            error_of(cmd("DLOCK.ACQUIRE").arg(key).arg("o").arg(10).query(&mut c)),
            wrongtype
        );
        assert_eq!(
            error_of(cmd("DLOCK.RELEASE").arg(key).arg("o").query(&mut c)),
            wrongtype
        );
        assert_eq!(
            error_of(cmd("DLOCK.EXTEND").arg(key).arg("o").arg(10).query(&mut c)),
            wrongtype
        );
        assert_eq!(
            error_of(cmd("DLOCK.INFO").arg(key).query(&mut c)),
            wrongtype
        );
    }
    let value: String = cmd("GET").arg("s").query(&mut c).unwrap();
    assert_eq!(value, "v");
    grant(&mut c, "lock", "o", 10_000);
    let err = error_of(cmd("GET").arg("lock").query(&mut c));
    assert_eq!(err, wrongtype);
}

#[test]
fn info_is_a_map_in_resp3() {
    let server = Server::start();
    let mut c = server.client_resp3();
    let token = grant(&mut c, "job", "w1", 30_000);
    let reply: Value = cmd("DLOCK.INFO").arg("job").query(&mut c).unwrap();
    let Value::Map(fields) = reply else {
        panic!("expected a map, got {reply:?}")
    };
    let names: Vec<String> = fields
        .iter()
        .map(|(k, _)| redis::from_redis_value(k).unwrap())
        .collect();
    assert_eq!(names, INFO_FIELDS);
    assert_eq!(fields[0].1, Value::BulkString(b"w1".to_vec()));
    assert_eq!(fields[1].1, Value::Int(token));
    assert_eq!(fields[3].1, Value::Int(1));
    assert_eq!(fields[6].1, Value::BulkString(b"exclusive".to_vec()));
    assert_eq!(fields[7].1, Value::Int(0));
    let Value::Array(holders) = &fields[8].1 else {
        panic!("holders: {:?}", fields[8].1)
    };
    let [Value::Map(holder)] = &holders[..] else {
        panic!("one holder, a map: {holders:?}")
    };
    assert_eq!(holder.len(), 6);
    assert_eq!(holder[1].1, Value::Int(token));
    assert_eq!(fields[9].1, Value::Int(1));
    let missing: Value = cmd("DLOCK.INFO").arg("nope").query(&mut c).unwrap();
    assert_eq!(missing, Value::Nil);
}

#[test]
fn del_rename_copy_scan_memory_dump_restore_work_on_locks() {
    let server = Server::start();
    let mut c = server.client();
    let token = grant(&mut c, "a", "w1", 60_000);

    let _: () = cmd("RENAME").arg("a").arg("b").query(&mut c).unwrap();
    assert_eq!(info(&mut c, "a"), None);
    assert_eq!(
        info(&mut c, "b").map(|i| (i.0, i.1)),
        Some(("w1".into(), token))
    );

    let copied: i64 = cmd("COPY").arg("b").arg("c").query(&mut c).unwrap();
    assert_eq!(copied, 1);
    assert_eq!(
        info(&mut c, "c").map(|i| (i.0, i.1)),
        Some(("w1".into(), token))
    );

    let (_, keys): (u64, Vec<String>) = cmd("SCAN")
        .arg(0)
        .arg("TYPE")
        .arg("dlocklock")
        .arg("COUNT")
        .arg(100)
        .query(&mut c)
        .unwrap();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, ["b", "c"]);

    let usage: i64 = cmd("MEMORY").arg("USAGE").arg("b").query(&mut c).unwrap();
    assert!(usage > 0 && usage < 1_000, "usage {usage}");

    let dump: Vec<u8> = cmd("DUMP").arg("b").query(&mut c).unwrap();
    let pttl: i64 = cmd("PTTL").arg("b").query(&mut c).unwrap();
    let deleted: i64 = cmd("DEL").arg("b").query(&mut c).unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(info(&mut c, "b"), None);
    // DEL force-frees: another owner can take it at once.
    let other = grant(&mut c, "b", "w2", 60_000);
    assert!(other > token);
    let _: () = cmd("DEL").arg("b").query(&mut c).unwrap();

    let _: () = cmd("RESTORE")
        .arg("b")
        .arg(pttl)
        .arg(&dump)
        .query(&mut c)
        .unwrap();
    let (owner, restored, ttl, holds) = info(&mut c, "b").expect("restored");
    assert_eq!((owner.as_str(), restored, holds), ("w1", token, 1));
    assert!(ttl > 50_000 && ttl <= pttl, "ttl {ttl}");
    assert_eq!(release(&mut c, "b", "w1"), 1);

    let corrupt = {
        let mut d = dump.clone();
        let n = d.len();
        d[n / 2] ^= 0xff;
        d
    };
    let err = error_of(cmd("RESTORE").arg("z").arg(0).arg(corrupt).query(&mut c));
    assert!(
        err.starts_with("ERR DUMP payload version or checksum are wrong"),
        "{err}"
    );
}

#[test]
fn works_inside_multi_exec_and_lua() {
    let server = Server::start();
    let mut c = server.client();
    let (token, refused, info_reply): (i64, Value, Vec<Value>) = redis::pipe()
        .atomic()
        .cmd("DLOCK.ACQUIRE")
        .arg("m")
        .arg("w1")
        .arg(10_000)
        .cmd("DLOCK.ACQUIRE")
        .arg("m")
        .arg("w2")
        .arg(10_000)
        .cmd("DLOCK.INFO")
        .arg("m")
        .query(&mut c)
        .unwrap();
    assert!(token > 0);
    assert_eq!(refused, Value::Nil);
    assert_eq!(info_reply.len(), 20);

    let script = r#"
        local t = redis.call('DLOCK.ACQUIRE', KEYS[1], ARGV[1], 10000)
        local again = redis.call('DLOCK.ACQUIRE', KEYS[1], 'other', 10000)
        local released = redis.call('DLOCK.RELEASE', KEYS[1], ARGV[1])
        return {t, again == false and 1 or 0, released}
    "#;
    let (lua_token, refused, released): (i64, i64, i64) = redis::Script::new(script)
        .key("lua")
        .arg("w1")
        .invoke(&mut c)
        .unwrap();
    assert!(lua_token > token);
    assert_eq!((refused, released), (1, 1));
    assert_eq!(info(&mut c, "lua"), None);
}

#[test]
fn a_refused_acquire_does_not_abort_a_watchers_transaction() {
    let server = Server::start();
    let mut c = server.client();
    let mut other = server.client();
    grant(&mut c, "w", "holder", 10_000);
    let _: () = cmd("WATCH").arg("w").query(&mut c).unwrap();
    assert_eq!(acquire(&mut other, "w", "intruder", 10_000), Value::Nil);
    let committed: Value = redis::pipe().atomic().cmd("PING").query(&mut c).unwrap();
    assert_ne!(committed, Value::Nil);

    let _: () = cmd("WATCH").arg("w").query(&mut c).unwrap();
    assert_eq!(release(&mut other, "w", "holder"), 1);
    let aborted: Value = redis::pipe().atomic().cmd("PING").query(&mut c).unwrap();
    assert_eq!(aborted, Value::Nil);
}

#[test]
fn acl_key_patterns_apply() {
    let server = Server::start();
    let mut admin = server.client();
    let _: () = cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">pw", "~app:*", "+@all"][..])
        .query(&mut admin)
        .unwrap();
    let mut c = server.client_as("app", "pw");
    grant(&mut c, "app:1", "w", 10_000);
    for err in [
        error_of(
            cmd("DLOCK.ACQUIRE")
                .arg("other")
                .arg("w")
                .arg(10)
                .query(&mut c),
        ),
        error_of(cmd("DLOCK.RELEASE").arg("other").arg("w").query(&mut c)),
        error_of(
            cmd("DLOCK.EXTEND")
                .arg("other")
                .arg("w")
                .arg(10)
                .query(&mut c),
        ),
        error_of(cmd("DLOCK.INFO").arg("other").query(&mut c)),
    ] {
        assert!(NOPERM_KEY.contains(&err.as_str()), "{err}");
    }
    let exists: i64 = cmd("EXISTS").arg("other").query(&mut admin).unwrap();
    assert_eq!(exists, 0);
}

#[test]
fn command_info_declares_flags_and_keys() {
    let server = Server::start();
    let mut c = server.client();
    let keys: Vec<String> = cmd("COMMAND")
        .arg(&["GETKEYS", "DLOCK.ACQUIRE", "mykey", "o", "10"][..])
        .query(&mut c)
        .unwrap();
    assert_eq!(keys, ["mykey"]);
    for (name, flags) in [
        ("dlock.acquire", vec!["write", "denyoom", "module", "fast"]),
        ("dlock.release", vec!["write", "module", "fast"]),
        ("dlock.extend", vec!["write", "module", "fast"]),
        ("dlock.fence", vec!["write", "module", "fast"]),
        // O(N) with HOLDERS 0, so not `fast`.
        ("dlock.info", vec!["readonly", "module"]),
    ] {
        let reply: Vec<Value> = cmd("COMMAND").arg("INFO").arg(name).query(&mut c).unwrap();
        let Value::Array(entry) = &reply[0] else {
            panic!("no COMMAND INFO for {name}")
        };
        let got: Vec<String> = redis::from_redis_value(&entry[2]).unwrap();
        assert_eq!(got, flags, "{name}");
        let positions: (i64, i64, i64) = (
            redis::from_redis_value(&entry[3]).unwrap(),
            redis::from_redis_value(&entry[4]).unwrap(),
            redis::from_redis_value(&entry[5]).unwrap(),
        );
        assert_eq!(positions, (1, 1, 1), "{name}");
    }
}

#[test]
fn acquire_release_cycles_leave_memory_at_baseline() {
    let server = Server::start();
    let mut c = server.client();
    let used = used_memory;
    // Warm up allocator classes and the keyspace's hash table first.
    for round in 0..2 {
        let before = used(&mut c);
        for batch in 0..100 {
            let mut pipe = redis::pipe();
            for i in 0..1_000 {
                let key = format!("mem:{}", (batch * 1_000 + i) % 5_000);
                pipe.cmd("DLOCK.ACQUIRE")
                    .arg(&key)
                    .arg("owner-of-some-length")
                    .arg(60_000)
                    .ignore();
                pipe.cmd("DLOCK.RELEASE")
                    .arg(&key)
                    .arg("owner-of-some-length")
                    .ignore();
            }
            let _: () = pipe.query(&mut c).unwrap();
        }
        let after = used(&mut c);
        let dbsize: i64 = cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(dbsize, 0);
        if round == 1 {
            assert!(
                (after - before).abs() < 16 * 1024,
                "used_memory {before} -> {after}"
            );
        }
    }
}
