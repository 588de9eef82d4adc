//! The lost signal under failure injection: the server paused (`CLIENT PAUSE ALL`), frozen
//! (`SIGSTOP`), or the keepalive connection killed, for the blocking and the tokio client.
//! These tests measure timing, so they run one at a time.

mod common;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const TTL: Duration = Duration::from_millis(500);

/// Records when the on_lost callback ran.
fn recorder() -> (Arc<Mutex<Option<Instant>>>, impl FnOnce() + Send + 'static) {
    let fired = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&fired);
    (fired, move || *slot.lock().unwrap() = Some(Instant::now()))
}

/// When the callback ran (waiting for it: the other signals may come first).
fn fired_at(fired: &Mutex<Option<Instant>>) -> Instant {
    let mut at = None;
    wait_until("the on_lost callback", Duration::from_secs(5), || {
        at = *fired.lock().unwrap();
        at.is_some()
    });
    at.unwrap()
}

/// Assert the loss was signalled no later than the deadline, and print by how much.
fn report(what: &str, fired: Instant, deadline: Instant) {
    assert!(
        fired <= deadline,
        "{what}: lost fired {:.2} ms after the deadline",
        ms(fired - deadline)
    );
    let drift = TTL / 100 + Duration::from_millis(2);
    println!(
        "{what}: lost fired {:.2} ms before the deadline ({:.2} ms before the server's lease end at the earliest)",
        ms(deadline - fired),
        ms(deadline + drift - fired)
    );
    // Not given up long before it had to be.
    assert!(
        deadline - fired < TTL / 5,
        "{what}: fired {:.2} ms early",
        ms(deadline - fired)
    );
}

fn pause_all(c: &mut Connection, for_ms: u64) {
    let _: () = cmd("CLIENT")
        .arg("PAUSE")
        .arg(for_ms)
        .arg("ALL")
        .query(c)
        .unwrap();
}

fn unpause(c: &mut Connection) {
    let _: () = cmd("CLIENT").arg("UNPAUSE").query(c).unwrap();
}

mod blocking {
    use super::*;
    use dlock_client::{Client, Lease, Lock};

    fn held(server: &Server) -> (Client, Lease) {
        let client = Client::new(server.redis());
        let lease = Lock::new(&client, "job")
            .ttl(TTL)
            .keepalive(true)
            .acquire(None)
            .unwrap();
        (client, lease)
    }

    #[test]
    fn client_pause_all_past_the_deadline_signals_lost_before_it() {
        let _serial = serial();
        let server = Server::start();
        let mut c = server.conn();
        let (_client, lease) = held(&server);
        let (fired, callback) = recorder();
        lease.on_lost(callback);
        pause_all(&mut c, 3 * TTL.as_millis() as u64);
        assert!(lease.wait_lost(Some(Duration::from_secs(5))));
        let fired = fired_at(&fired);
        report("blocking, CLIENT PAUSE ALL", fired, lease.deadline());
        assert!(lease.check().is_err() && !lease.valid());
        unpause(&mut c);
    }

    #[test]
    fn sigstop_past_the_deadline_signals_lost_before_it() {
        let _serial = serial();
        let server = Server::start();
        let (_client, lease) = held(&server);
        let (fired, callback) = recorder();
        lease.on_lost(callback);
        {
            eprintln!("{:?} freeze", Instant::now());
            let _frozen = server.freeze();
            eprintln!("{:?} frozen", Instant::now());
            assert!(lease.wait_lost(Some(Duration::from_secs(5))));
            eprintln!("{:?} wait_lost returned", Instant::now());
        }
        let fired = fired_at(&fired);
        report("blocking, SIGSTOP", fired, lease.deadline());
        assert!(lease.is_lost());
        #[cfg(feature = "tokio")]
        assert!(*lease.lost().borrow(), "the watch channel says lost too");
    }

    #[test]
    fn a_panicking_callback_leaves_the_others_and_later_leases_signalled() {
        let _serial = serial();
        let server = Server::start();
        let client = Client::new(server.redis());
        let brief = |key: &str| {
            Lock::new(&client, key)
                .ttl(Duration::from_millis(100))
                .acquire(None)
                .unwrap()
        };
        let first = brief("first");
        let (after, callback) = recorder();
        first.on_lost(|| panic!("an on_lost callback that panics"));
        first.on_lost(callback);
        fired_at(&after);
        let second = brief("second");
        let (fired, callback) = recorder();
        second.on_lost(callback);
        fired_at(&fired);
    }

    #[test]
    fn client_kill_of_the_keepalive_connection_reconnects() {
        let _serial = serial();
        let server = Server::start();
        let mut c = server.conn();
        let (_client, lease) = held(&server);
        let mut first = Vec::new();
        wait_until("the keepalive connection", Duration::from_secs(5), || {
            first = clients_named(&mut c, "dlock-keepalive");
            !first.is_empty()
        });
        let _: i64 = cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(first[0])
            .query(&mut c)
            .unwrap();
        let extends = calls(&mut c, "dlock.extend");
        wait_until(
            "a new keepalive connection that extends",
            Duration::from_secs(5),
            || {
                let now = clients_named(&mut c, "dlock-keepalive");
                !now.is_empty() && now != first && calls(&mut c, "dlock.extend") > extends
            },
        );
        // Held across three more leases' worth of time.
        let until = Instant::now() + 3 * TTL;
        while Instant::now() < until {
            assert!(lease.valid());
            assert_eq!(holder(&mut c, "job").as_deref(), Some(lease.owner()));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(feature = "tokio")]
mod tokio_client {
    use super::*;
    use dlock_client::aio::{Client, Lease, Lock};

    /// One test at a time, on a runtime of its own.
    fn run(test: impl Future<Output = ()>) {
        let _serial = serial();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(test);
    }

    async fn held(server: &Server) -> (Client, Lease) {
        let client = Client::new(server.redis());
        let lease = Lock::new(&client, "job")
            .ttl(TTL)
            .keepalive(true)
            .acquire(None)
            .await
            .unwrap();
        (client, lease)
    }

    async fn lost_within(lease: &Lease, limit: Duration) {
        let mut lost = lease.lost();
        tokio::time::timeout(limit, lost.wait_for(|lost| *lost))
            .await
            .expect("lost in time")
            .expect("the lost channel");
    }

    #[test]
    fn client_pause_all_past_the_deadline_signals_lost_before_it() {
        run(async {
            let server = Server::start();
            let mut c = server.conn();
            let (_client, lease) = held(&server).await;
            let (fired, callback) = recorder();
            lease.on_lost(callback);
            pause_all(&mut c, 3 * TTL.as_millis() as u64);
            lost_within(&lease, Duration::from_secs(5)).await;
            let fired = fired_at(&fired);
            report("tokio, CLIENT PAUSE ALL", fired, lease.deadline());
            assert!(lease.check().is_err());
            unpause(&mut c);
        });
    }

    #[test]
    fn sigstop_past_the_deadline_signals_lost_before_it() {
        run(async {
            let server = Server::start();
            let (_client, lease) = held(&server).await;
            let (fired, callback) = recorder();
            lease.on_lost(callback);
            {
                let _frozen = server.freeze();
                lost_within(&lease, Duration::from_secs(5)).await;
            }
            let fired = fired_at(&fired);
            report("tokio, SIGSTOP", fired, lease.deadline());
        });
    }

    #[test]
    fn client_kill_of_the_keepalive_connection_reconnects() {
        run(async {
            let server = Server::start();
            let mut c = server.conn();
            let (_client, lease) = held(&server).await;
            let mut first = Vec::new();
            wait_until_async("the keepalive connection", Duration::from_secs(5), || {
                first = clients_named(&mut c, "dlock-keepalive");
                !first.is_empty()
            })
            .await;
            let _: i64 = cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(first[0])
                .query(&mut c)
                .unwrap();
            let extends = calls(&mut c, "dlock.extend");
            wait_until_async(
                "a new keepalive connection that extends",
                Duration::from_secs(5),
                || {
                    let now = clients_named(&mut c, "dlock-keepalive");
                    !now.is_empty() && now != first && calls(&mut c, "dlock.extend") > extends
                },
            )
            .await;
            let until = Instant::now() + 3 * TTL;
            while Instant::now() < until {
                assert!(lease.valid());
                assert_eq!(holder(&mut c, "job").as_deref(), Some(lease.owner()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
}
