//! The tokio client against a real server.
#![cfg(feature = "tokio")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dlock_client::Error;
use dlock_client::aio::{Client, Lock, ReadWriteLock, Semaphore};

fn client(server: &Server) -> Client {
    Client::new(server.redis())
}

#[tokio::test]
async fn acquire_reports_token_owner_and_deadline_and_releases() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let before = Instant::now();
    let lease = Lock::new(&client, "job")
        .ttl(Duration::from_secs(10))
        .acquire(Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let after = Instant::now();
    let validity = Duration::from_millis(10_000 - 102);
    assert!(lease.deadline() >= before + validity && lease.deadline() <= after + validity);
    assert!(lease.token() > 0);
    assert_eq!(lease.owner().len(), 32);
    assert_eq!(holder(&mut c, "job").as_deref(), Some(lease.owner()));
    assert!(lease.valid() && lease.check().is_ok() && !*lease.lost().borrow());
    assert!(lease.release().await.unwrap());
    assert!(
        lease.release().await.unwrap(),
        "a second release does nothing"
    );
    assert_eq!(holder(&mut c, "job"), None);
}

#[tokio::test]
async fn a_busy_lock_is_not_acquired_and_a_waiter_is_served() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lock = Lock::new(&client, "job").owner("w1");
    let held = lock.acquire(None).await.unwrap();
    let other = Lock::new(&client, "job").owner("w2");
    assert!(other.try_acquire().await.unwrap().is_none());
    match other.acquire(Some(Duration::from_millis(100))).await {
        Err(Error::NotAcquired { key }) => assert_eq!(key, "job"),
        other => panic!("expected NotAcquired, got {other:?}"),
    }
    let waiter = tokio::spawn(async move { other.acquire(None).await.map(|l| l.token()) });
    wait_until_async("the waiter to queue", Duration::from_secs(5), || {
        waiters(&mut c, "job") == 1
    })
    .await;
    let first = held.token();
    held.release().await.unwrap();
    assert!(waiter.await.unwrap().unwrap() > first);
}

#[tokio::test]
async fn the_module_not_loaded_error_gives_the_hint() {
    let server = Server::without_module();
    let client = client(&server);
    let err = Lock::new(&client, "job").try_acquire().await.unwrap_err();
    assert!(matches!(err, Error::ModuleNotLoaded { .. }), "{err:?}");
    assert!(err.to_string().contains("MODULE LOAD /path/to/libdlock.so"));
}

#[tokio::test]
async fn a_cancelled_or_panicking_task_releases() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lock = Lock::new(&client, "job");

    // Cancelled while holding: the guard's drop spawns the release.
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let task = {
        let lock = lock.clone();
        tokio::spawn(async move {
            let _lease = lock.acquire(None).await.unwrap();
            let _ = held_tx.send(());
            std::future::pending::<()>().await;
        })
    };
    held_rx.await.unwrap();
    assert!(holder(&mut c, "job").is_some());
    task.abort();
    let _ = task.await;
    wait_until_async("the release", Duration::from_secs(5), || {
        holder(&mut c, "job").is_none()
    })
    .await;

    // A panic inside the body.
    let task = {
        let lock = lock.clone();
        tokio::spawn(async move {
            let _lease = lock.acquire(None).await.unwrap();
            panic!("the work failed");
        })
    };
    assert!(task.await.is_err());
    wait_until_async("the release", Duration::from_secs(5), || {
        holder(&mut c, "job").is_none()
    })
    .await;

    // Cancelled while waiting in the server's queue: it leaves the queue, and is never
    // granted a lock nobody would hold.
    let blocker = lock.acquire(None).await.unwrap();
    let task = {
        let lock = Lock::new(&client, "job").owner("cancelled");
        tokio::spawn(async move { lock.acquire(None).await.map(|_| ()) })
    };
    wait_until_async("the waiter to queue", Duration::from_secs(5), || {
        waiters(&mut c, "job") == 1
    })
    .await;
    task.abort();
    let _ = task.await;
    wait_until_async("the waiter to leave", Duration::from_secs(5), || {
        waiters(&mut c, "job") == 0
    })
    .await;
    blocker.release().await.unwrap();
    assert_eq!(holder(&mut c, "job"), None);
}

#[tokio::test]
async fn extend_release_strict_and_the_takeover_after_del() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "job")
        .ttl(Duration::from_secs(2))
        .acquire(None)
        .await
        .unwrap();
    let first = lease.deadline();
    lease.extend(Some(Duration::from_secs(20))).await.unwrap();
    assert!(lease.deadline() > first + Duration::from_secs(17));
    let _: () = cmd("DEL").arg("job").query(&mut c).unwrap();
    assert!(matches!(lease.extend(None).await, Err(Error::LockLost(_))));
    assert!(*lease.lost().borrow());
    assert!(matches!(
        lease.release_strict().await,
        Err(Error::NotHeld { .. })
    ));

    // Kept alive: the next extend after a takeover signals lost.
    let lease = Lock::new(&client, "job")
        .ttl(Duration::from_millis(300))
        .keepalive(true)
        .acquire(None)
        .await
        .unwrap();
    let mut lost = lease.lost();
    let _: () = cmd("DEL").arg("job").query(&mut c).unwrap();
    let _thief = Lock::new(&client, "job")
        .owner("thief")
        .acquire(None)
        .await
        .unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), lost.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(250));
    assert!(lease.check().is_err());
    assert_eq!(holder(&mut c, "job").as_deref(), Some("thief"));
}

#[tokio::test]
async fn guard_writes_with_the_token_and_refuses_after_loss() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "{acct:7}:lock")
        .ttl(Duration::from_secs(30))
        .acquire(None)
        .await
        .unwrap();
    let n: i64 = lease
        .guard(("HSET", "{acct:7}:balance", "v", 1))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let _: () = cmd("DEL").arg("{acct:7}:lock").query(&mut c).unwrap();
    let _other = Lock::new(&client, "{acct:7}:lock")
        .acquire(None)
        .await
        .unwrap();
    let refused = lease
        .guard::<i64>(("HSET", "{acct:7}:balance", "v", 2))
        .await;
    assert!(matches!(refused, Err(Error::LockLost(_))), "{refused:?}");
    assert!(lease.is_lost());

    let lease = Lock::new(&client, "short")
        .ttl(Duration::from_millis(100))
        .acquire(None)
        .await
        .unwrap();
    let mut lost = lease.lost();
    tokio::time::timeout(Duration::from_secs(5), lost.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    let guards = calls(&mut c, "dlock.guard");
    let refused = lease.guard::<()>(("SET", "short:data", "late")).await;
    assert!(matches!(refused, Err(Error::LockLost(_))));
    assert_eq!(calls(&mut c, "dlock.guard"), guards, "nothing was sent");
}

#[tokio::test]
async fn read_write_lock_and_semaphore() {
    let server = Server::start();
    let client = client(&server);
    let rw = ReadWriteLock::new(&client, "report");
    let r1 = rw.read().acquire(None).await.unwrap();
    let r2 = rw.read().acquire(None).await.unwrap();
    assert!(rw.write().try_acquire().await.unwrap().is_none());
    r1.release().await.unwrap();
    r2.release().await.unwrap();
    let w = rw.write().try_acquire().await.unwrap().unwrap();
    assert!(rw.read().try_acquire().await.unwrap().is_none());
    w.release().await.unwrap();

    let pool = Semaphore::new(&client, "pool", 2);
    let a = pool.acquire(None).await.unwrap();
    let b = pool.acquire(None).await.unwrap();
    assert!(pool.try_acquire().await.unwrap().is_none());
    a.release().await.unwrap();
    assert!(pool.try_acquire().await.unwrap().is_some());
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_contenders_are_served_in_arrival_order() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lock = Lock::new(&client, "fifo");
    let first = lock.acquire(None).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let lock = lock.clone();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let lease = lock.acquire(Some(Duration::from_secs(20))).await.unwrap();
            order.lock().unwrap().push(i);
            lease.release().await.unwrap();
        }));
        wait_until_async("the contender to queue", Duration::from_secs(5), || {
            waiters(&mut c, "fifo") == i + 1
        })
        .await;
    }
    first.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
}

#[tokio::test]
async fn no_extend_after_release() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "job")
        .ttl(Duration::from_millis(150))
        .keepalive(true)
        .acquire(None)
        .await
        .unwrap();
    wait_until_async("a few extends", Duration::from_secs(5), || {
        calls(&mut c, "dlock.extend") >= 3
    })
    .await;
    lease.release().await.unwrap();
    let after_release = calls(&mut c, "dlock.extend");
    wait_until_async("the keepalive task to end", Duration::from_secs(5), || {
        !client.keepalive_running()
    })
    .await;
    // An absence cannot be polled for: watch for three keepalive periods.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(calls(&mut c, "dlock.extend"), after_release);
    assert_eq!(holder(&mut c, "job"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_holds_a_100ms_lease_for_5s() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "job")
        .ttl(Duration::from_millis(100))
        .keepalive(true)
        .acquire(None)
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(lease.valid());
        assert_eq!(holder(&mut c, "job").as_deref(), Some(lease.owner()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(lease.release().await.unwrap());
}

#[tokio::test]
async fn session_lease_is_lost_with_its_connection() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "leader")
        .session(true)
        .acquire(None)
        .await
        .unwrap();
    let killed: i64 = cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut c)
        .unwrap();
    assert!(killed >= 1);
    assert_eq!(holder(&mut c, "leader"), None);
    let started = Instant::now();
    let mut lost = lease.lost();
    tokio::time::timeout(Duration::from_secs(5), lost.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    println!("session loss noticed in {:.1} ms", ms(started.elapsed()));
    assert!(started.elapsed() < Duration::from_millis(500));

    let before = client_list(&mut c).len();
    let lease = Lock::new(&client, "leader")
        .session(true)
        .acquire(None)
        .await
        .unwrap();
    assert!(lease.release().await.unwrap());
    wait_until_async(
        "the session connection to close",
        Duration::from_secs(5),
        || client_list(&mut c).len() <= before,
    )
    .await;
}

#[tokio::test]
async fn a_lease_granted_after_waiting_longer_than_its_ttl_is_restarted_and_valid() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let ttl = Duration::from_millis(200);
    let validity = ttl - (ttl / 100 + Duration::from_millis(2));
    // Granted at once: the deadline counts from the ACQUIRE, and no EXTEND is sent.
    let lease = Lock::new(&client, "job")
        .ttl(ttl)
        .acquire(Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(calls(&mut c, "dlock.extend"), 0);
    assert!(lease.release().await.unwrap());
    // Held by another for 600 ms: the waiter is granted when that hold expires, three ttls
    // after its ACQUIRE was sent, with a fresh ttl on the server.
    let placed = Instant::now();
    let _: i64 = cmd("DLOCK.ACQUIRE")
        .arg("job")
        .arg("other")
        .arg(600)
        .query(&mut c)
        .unwrap();
    let lease = Lock::new(&client, "job")
        .ttl(ttl)
        .owner("me")
        .acquire(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let after = Instant::now();
    assert!(
        lease.valid() && !lease.is_lost() && lease.check().is_ok() && !*lease.lost().borrow(),
        "a lease granted after waiting is not lost on arrival (remaining {:?})",
        lease.remaining()
    );
    assert_eq!(calls(&mut c, "dlock.extend"), 1, "one restarting EXTEND");
    // The deadline counts from that EXTEND, sent after the grant: 600 ms after `placed`, less
    // a few milliseconds (the server counts the other lease from its millisecond clock).
    let deadline = lease.deadline();
    assert!(
        deadline >= placed + Duration::from_millis(595) + validity && deadline <= after + validity,
        "deadline {:.1} ms after the other hold was placed",
        ms(deadline - placed)
    );
    assert_eq!(holder(&mut c, "job").as_deref(), Some("me"));
    assert!(lease.release().await.unwrap(), "the server still had it");
}
