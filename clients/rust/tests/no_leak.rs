//! 10,000 sequential leases leave no thread, task or connection behind. One test in its own
//! binary, so that no other test's threads or connections are counted.

mod common;

use std::time::{Duration, Instant};

use common::*;

const LEASES: usize = 10_000;

#[test]
fn ten_thousand_sequential_leases_leave_nothing_behind() {
    let server = Server::start();
    let mut c = server.conn();
    let base_clients = client_list(&mut c).len();

    // Blocking: half kept alive (default ttl), half with an explicit ttl; every 100th waits.
    let base_threads = threads();
    let started = Instant::now();
    {
        let client = dlock_client::Client::new(server.redis());
        for i in 0..LEASES {
            let lock = match i % 2 {
                0 => dlock_client::Lock::new(&client, "leak"),
                _ => dlock_client::Lock::new(&client, "leak").ttl(Duration::from_secs(5)),
            };
            let lease = if i % 100 == 0 {
                lock.acquire(Some(Duration::from_secs(1))).unwrap()
            } else {
                lock.try_acquire().unwrap().expect("free")
            };
            if i % 3 == 0 {
                assert!(lease.release().unwrap());
            }
        }
        wait_until(
            "the background threads to end",
            Duration::from_secs(5),
            || !client.keepalive_running() && threads() == base_threads,
        );
        assert!(clients_named(&mut c, "dlock-keepalive").is_empty());
        // At most the one idle command connection the client keeps.
        assert!(client_list(&mut c).len() <= base_clients + 1);
    }
    wait_until(
        "the client's connections to close",
        Duration::from_secs(5),
        || client_list(&mut c).len() == base_clients,
    );
    assert_eq!(threads(), base_threads);
    assert_eq!(holder(&mut c, "leak"), None);
    println!(
        "blocking: {LEASES} leases in {:.0} ms",
        ms(started.elapsed())
    );

    #[cfg(feature = "tokio")]
    tokio_leases(&server, &mut c, base_clients);
}

/// The same through one tokio client's task.
#[cfg(feature = "tokio")]
fn tokio_leases(server: &Server, c: &mut Connection, base_clients: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base_threads = threads();
    let started = Instant::now();
    runtime.block_on(async {
        let client = dlock_client::aio::Client::new(server.redis());
        for i in 0..LEASES {
            let lock = match i % 2 {
                0 => dlock_client::aio::Lock::new(&client, "leak"),
                _ => dlock_client::aio::Lock::new(&client, "leak").ttl(Duration::from_secs(5)),
            };
            let lease = if i % 100 == 0 {
                lock.acquire(Some(Duration::from_secs(1))).await.unwrap()
            } else {
                lock.try_acquire().await.unwrap().expect("free")
            };
            if i % 10 == 0 {
                // Dropped: the release is spawned; let it run before the next acquire.
                drop(lease);
                let deadline = Instant::now() + Duration::from_secs(5);
                while holder(c, "leak").is_some() {
                    assert!(Instant::now() < deadline, "the spawned release did not end");
                    tokio::task::yield_now().await;
                }
            } else {
                assert!(lease.release().await.unwrap());
            }
        }
        wait_until_async("the keepalive task to end", Duration::from_secs(5), || {
            !client.keepalive_running()
        })
        .await;
        client.close().await;
        let metrics = tokio::runtime::Handle::current().metrics();
        wait_until_async("every task to end", Duration::from_secs(5), || {
            metrics.num_alive_tasks() == 0
        })
        .await;
        assert!(clients_named(c, "dlock-keepalive").is_empty());
    });
    wait_until(
        "the tokio client's connections to close",
        Duration::from_secs(5),
        || client_list(c).len() == base_clients,
    );
    assert_eq!(threads(), base_threads);
    assert_eq!(holder(c, "leak"), None);
    println!("tokio: {LEASES} leases in {:.0} ms", ms(started.elapsed()));
}
