//! Both clients on a Redis Cluster: commands go to the node serving the lock's key, and
//! `guard` works for keys in the lock's slot (hash tags).
#![cfg(feature = "cluster")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use dlock_client::Error;

/// The node of `cluster` that holds `key` (one whose DLOCK.INFO knows it).
fn holder_anywhere(cluster: &Cluster, key: &str) -> Option<String> {
    cluster.nodes.iter().find_map(|n| {
        let mut c = n.conn();
        let reply: redis::RedisResult<Value> = cmd("DLOCK.INFO").arg(key).query(&mut c);
        match reply {
            Ok(Value::Array(fields)) => redis::from_redis_value(&fields[1]).ok(),
            _ => None,
        }
    })
}

#[test]
fn blocking_and_tokio_clients_work_on_a_cluster() {
    let started = Instant::now();
    let cluster = Cluster::start();
    println!("cluster formed in {:.0} ms", ms(started.elapsed()));

    // Blocking: keys on different nodes, kept alive, guarded writes with hash tags.
    let client = dlock_client::Client::cluster(cluster.client());
    let keys = ["{a}:lock", "{b}:lock", "{c}:lock", "{d}:lock"];
    let leases: Vec<_> = keys
        .iter()
        .map(|k| {
            dlock_client::Lock::new(&client, k)
                .ttl(Duration::from_millis(300))
                .keepalive(true)
                .acquire(Some(Duration::from_secs(2)))
                .unwrap()
        })
        .collect();
    let nodes_used: std::collections::HashSet<u16> = keys
        .iter()
        .filter_map(|k| {
            cluster.nodes.iter().find_map(|n| {
                let mut c = n.conn();
                let exists: i64 = cmd("EXISTS").arg(k).query(&mut c).unwrap_or(0);
                (exists == 1).then_some(n.port)
            })
        })
        .collect();
    assert!(nodes_used.len() >= 2, "keys landed on several nodes");
    for (lease, key) in leases.iter().zip(keys) {
        let tag = &key[..3];
        let _: () = lease.guard(("SET", format!("{tag}:data"), "v1")).unwrap();
        assert_eq!(
            holder_anywhere(&cluster, key).as_deref(),
            Some(lease.owner())
        );
    }
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        assert!(
            leases.iter().all(|l| l.valid()),
            "kept alive across the cluster"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A guarded key outside the lock's slot is refused by the cluster.
    let err = leases[0].guard::<()>(("SET", "{b}:data", "x")).unwrap_err();
    assert!(matches!(err, Error::Redis(_)), "{err:?}");
    for lease in &leases {
        assert!(lease.release().unwrap());
    }
    assert!(keys.iter().all(|k| holder_anywhere(&cluster, k).is_none()));

    // Tokio.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = dlock_client::aio::Client::cluster(cluster.client());
        let mut leases = Vec::new();
        for k in keys {
            leases.push(
                dlock_client::aio::Lock::new(&client, k)
                    .ttl(Duration::from_millis(300))
                    .keepalive(true)
                    .acquire(Some(Duration::from_secs(2)))
                    .await
                    .unwrap(),
            );
        }
        for (lease, key) in leases.iter().zip(keys) {
            let tag = &key[..3];
            let _: () = lease
                .guard(("SET", format!("{tag}:data"), "v2"))
                .await
                .unwrap();
        }
        let until = Instant::now() + Duration::from_millis(900);
        while Instant::now() < until {
            assert!(leases.iter().all(|l| l.valid()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let busy = dlock_client::aio::Lock::new(&client, "{a}:lock");
        assert!(busy.try_acquire().await.unwrap().is_none());
        for lease in &leases {
            assert!(lease.release().await.unwrap());
        }
        assert!(busy.try_acquire().await.unwrap().is_some());
    });
}
