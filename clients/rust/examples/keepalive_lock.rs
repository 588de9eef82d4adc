//! The dlock client's whole pattern: wait for the lock, write through the lease's fencing
//! token, keep the lease alive while working, and hear when it is lost.
//!
//! Run against a server with the module loaded:
//! `cargo run -p dlock-client --example keepalive_lock -- redis://127.0.0.1:6379/`

use std::sync::mpsc;
use std::time::{Duration, Instant};

use dlock_client::{Client, Error, Lock};

/// Runs the pattern; returns what happened, one line per step.
pub fn run(url: &str) -> dlock_client::Result<Vec<String>> {
    let client = Client::open(url)?;
    let mut log = Vec::new();

    // Wait up to 5 s in the server's queue. A 300 ms lease, renewed every 100 ms in the
    // background (leave out .ttl() for the default: 30 s, kept alive).
    let lease = Lock::new(&client, "{report}:lock")
        .ttl(Duration::from_millis(300))
        .keepalive(true)
        .acquire(Some(Duration::from_secs(5)))?;
    log.push(format!("acquired {}", lease.key()));

    let (lost_tx, lost_rx) = mpsc::channel();
    lease.on_lost(move || {
        let _ = lost_tx.send(());
    });

    // The write runs only while the lease's token is the live holder's (same hash tag, so the
    // same cluster slot as the lock).
    let _: () = lease.guard(("SET", "{report}:body", "v1"))?;
    log.push("wrote v1 with the lease's token".to_string());

    // Work for three leases' worth of time, checking the lease between steps.
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        lease.check()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    log.push("still held after 900 ms of a 300 ms lease".to_string());

    // Someone force-frees the lock and another worker takes it.
    let mut admin = redis::Client::open(url)?.get_connection()?;
    let _: () = redis::cmd("DEL").arg("{report}:lock").query(&mut admin)?;
    let _other = Lock::new(&client, "{report}:lock")
        .owner("worker-2")
        .acquire(None)?;
    if lost_rx.recv_timeout(Duration::from_secs(2)).is_ok() {
        log.push("on_lost: the lock was taken over".to_string());
    }

    match lease.guard::<()>(("SET", "{report}:body", "v2")) {
        Err(Error::LockLost(lost)) => log.push(format!("guarded write refused: {lost}")),
        other => log.push(format!("unexpected: {other:?}")),
    }
    log.push(format!("released: {}", lease.release()?));
    Ok(log)
}

#[allow(dead_code)]
fn main() -> dlock_client::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    for line in run(&url)? {
        println!("{line}");
    }
    Ok(())
}
