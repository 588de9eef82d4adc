//! An RDB written by one server with dlock loads in the next (Redis 7.0 → 7.2 → 7.4, and
//! Redis 7.2 → Valkey 8). Needs the server binaries, so it runs from `make compat` with
//! DLOCK_UPGRADE_CHAIN="bin1 bin2 ..." (each must read the previous one's RDB).

mod common;

use common::*;

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
