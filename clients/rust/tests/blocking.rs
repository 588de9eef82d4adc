//! The blocking client against a real server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dlock_client::{Client, Error, Lock, ReadWriteLock, Semaphore};

fn client(server: &Server) -> Client {
    Client::new(server.redis())
}

#[test]
fn acquire_reports_token_owner_and_deadline_and_releases() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let before = Instant::now();
    let lease = Lock::new(&client, "job")
        .ttl(Duration::from_secs(10))
        .acquire(Some(Duration::from_secs(1)))
        .unwrap();
    assert!(lease.token() > 0);
    assert_eq!(lease.owner().len(), 32, "a server-generated owner id");
    assert_eq!(lease.key(), "job");
    assert_eq!(holder(&mut c, "job").as_deref(), Some(lease.owner()));
    // ttl − drift (10 s / 100 + 2 ms), measured from before the request was sent.
    let after = Instant::now();
    let deadline = lease.deadline();
    let validity = Duration::from_millis(10_000 - 102);
    assert!(deadline >= before + validity && deadline <= after + validity);
    assert!(lease.remaining() <= validity);
    assert!(lease.valid() && !lease.is_lost() && lease.check().is_ok());
    assert!(lease.release().unwrap());
    assert!(lease.release().unwrap(), "a second release does nothing");
    assert!(!lease.valid());
    assert_eq!(holder(&mut c, "job"), None);
}

#[test]
fn an_explicit_owner_is_sent_as_given() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = client
        .lock("job")
        .owner("worker-1")
        .try_acquire()
        .unwrap()
        .unwrap();
    assert_eq!(lease.owner(), "worker-1");
    assert_eq!(holder(&mut c, "job").as_deref(), Some("worker-1"));
}

#[test]
fn a_busy_lock_is_not_acquired() {
    let server = Server::start();
    let client = client(&server);
    let lock = Lock::new(&client, "job");
    let _held = lock.acquire(None).unwrap();
    assert!(lock.try_acquire().unwrap().is_none());
    let started = Instant::now();
    match lock.acquire(Some(Duration::from_millis(100))) {
        Err(Error::NotAcquired { key }) => assert_eq!(key, "job"),
        other => panic!("expected NotAcquired, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[test]
fn a_waiter_gets_the_lock_when_it_is_released() {
    let server = Server::start();
    let client = client(&server);
    let lock = Lock::new(&client, "job");
    let held = lock.acquire(None).unwrap();
    let waiter = {
        let lock = lock.clone();
        std::thread::spawn(move || lock.acquire(None).map(|l| l.token()))
    };
    let mut c = server.conn();
    wait_until("the waiter to queue", Duration::from_secs(5), || {
        waiters(&mut c, "job") == 1
    });
    let first = held.token();
    drop(held);
    let second = waiter.join().unwrap().unwrap();
    assert!(second > first);
}

#[test]
fn the_module_not_loaded_error_gives_the_hint() {
    let server = Server::without_module();
    let client = client(&server);
    let err = Lock::new(&client, "job").try_acquire().unwrap_err();
    assert!(matches!(err, Error::ModuleNotLoaded { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("MODULE LOAD /path/to/libdlock.so"), "{text}");
    assert!(text.contains("unknown command"), "{text}");
}

#[test]
fn a_panic_inside_the_body_releases() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lock = Lock::new(&client, "job");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _lease = lock.acquire(None).unwrap();
        panic!("the work failed");
    }));
    assert!(result.is_err());
    assert_eq!(holder(&mut c, "job"), None);
    fn early_return(lock: &Lock) -> Result<(), Error> {
        let lease = lock.acquire(None)?;
        lease.check()?;
        Err(Error::NotHeld {
            key: "early".into(),
        })
    }
    assert!(early_return(&lock).is_err());
    assert_eq!(holder(&mut c, "job"), None);
}

#[test]
fn extend_moves_the_deadline_and_reports_loss() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "job")
        .ttl(Duration::from_secs(2))
        .acquire(None)
        .unwrap();
    let first = lease.deadline();
    lease.extend(Some(Duration::from_secs(20))).unwrap();
    assert!(lease.deadline() > first + Duration::from_secs(17));
    let pttl: i64 = cmd("PTTL").arg("job").query(&mut c).unwrap();
    assert!(pttl > 19_000);
    let _: () = cmd("DEL").arg("job").query(&mut c).unwrap();
    assert!(matches!(lease.extend(None), Err(Error::LockLost(_))));
    assert!(lease.is_lost());
    assert!(!lease.release().unwrap());
}

#[test]
fn release_strict_says_not_held() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "job").acquire(None).unwrap();
    let _: () = cmd("DEL").arg("job").query(&mut c).unwrap();
    assert!(matches!(lease.release_strict(), Err(Error::NotHeld { .. })));
    let lease = Lock::new(&client, "job").acquire(None).unwrap();
    lease.release_strict().unwrap();
}

#[test]
fn guard_writes_with_the_token_and_refuses_after_loss() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    // Refused by the server: the lock was taken over.
    let lease = Lock::new(&client, "{acct:7}:lock")
        .ttl(Duration::from_secs(30))
        .acquire(None)
        .unwrap();
    let n: i64 = lease.guard(("HSET", "{acct:7}:balance", "v", 1)).unwrap();
    assert_eq!(n, 1);
    let _: () = cmd("DEL").arg("{acct:7}:lock").query(&mut c).unwrap();
    let _other = Lock::new(&client, "{acct:7}:lock").acquire(None).unwrap();
    let refused = lease.guard::<i64>(("HSET", "{acct:7}:balance", "v", 2));
    assert!(matches!(refused, Err(Error::LockLost(_))), "{refused:?}");
    assert!(lease.is_lost());
    let v: i64 = cmd("HGET")
        .arg("{acct:7}:balance")
        .arg("v")
        .query(&mut c)
        .unwrap();
    assert_eq!(v, 1);

    // Refused locally, without sending: the lease expired.
    let lease = Lock::new(&client, "short")
        .ttl(Duration::from_millis(100))
        .acquire(None)
        .unwrap();
    assert!(lease.wait_lost(Some(Duration::from_secs(5))));
    let guards = calls(&mut c, "dlock.guard");
    let refused = lease.guard::<()>(("SET", "short:data", "late"));
    assert!(matches!(refused, Err(Error::LockLost(_))));
    assert_eq!(calls(&mut c, "dlock.guard"), guards, "nothing was sent");
}

#[test]
fn read_write_lock_and_semaphore() {
    let server = Server::start();
    let client = client(&server);
    let rw = ReadWriteLock::new(&client, "report").configure(|l| l.ttl(Duration::from_secs(10)));
    let r1 = rw.read().acquire(None).unwrap();
    let r2 = rw.read().acquire(None).unwrap();
    assert_ne!(r1.token(), r2.token());
    assert!(rw.write().try_acquire().unwrap().is_none());
    drop((r1, r2));
    let w = rw.write().try_acquire().unwrap().unwrap();
    assert!(rw.read().try_acquire().unwrap().is_none());
    drop(w);

    let pool = Semaphore::new(&client, "pool", 3);
    let a = pool.clone().permits(2).acquire(None).unwrap();
    assert!(pool.clone().permits(2).try_acquire().unwrap().is_none());
    let b = pool.try_acquire().unwrap().unwrap();
    assert!(pool.try_acquire().unwrap().is_none());
    drop(a);
    assert!(pool.try_acquire().unwrap().is_some());
    drop(b);
}

#[test]
fn many_contenders_are_served_in_arrival_order() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lock = Lock::new(&client, "fifo");
    let first = lock.acquire(None).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for i in 0..8 {
        let lock = lock.clone();
        let order = Arc::clone(&order);
        workers.push(std::thread::spawn(move || {
            let lease = lock.acquire(Some(Duration::from_secs(20))).unwrap();
            order.lock().unwrap().push(i);
            lease.release().unwrap();
        }));
        // The next contender arrives only once this one waits in the server's queue.
        wait_until("the contender to queue", Duration::from_secs(5), || {
            waiters(&mut c, "fifo") == i + 1
        });
    }
    drop(first);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
}

#[test]
fn the_lock_taken_over_after_del_is_lost_on_the_next_extend() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "job")
        .ttl(Duration::from_millis(300))
        .keepalive(true)
        .acquire(None)
        .unwrap();
    let extends = calls(&mut c, "dlock.extend");
    let _: () = cmd("DEL").arg("job").query(&mut c).unwrap();
    let _other = Lock::new(&client, "job")
        .owner("thief")
        .acquire(None)
        .unwrap();
    let started = Instant::now();
    assert!(lease.wait_lost(Some(Duration::from_secs(5))));
    // Signalled by the next extend (every ttl/3), well before the deadline.
    assert!(started.elapsed() < Duration::from_millis(250));
    assert!(calls(&mut c, "dlock.extend") > extends);
    assert!(lease.check().is_err());
    assert_eq!(holder(&mut c, "job").as_deref(), Some("thief"));
}

#[test]
fn no_extend_after_release() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "job")
        .ttl(Duration::from_millis(150))
        .keepalive(true)
        .acquire(None)
        .unwrap();
    wait_until("a few extends", Duration::from_secs(5), || {
        calls(&mut c, "dlock.extend") >= 3
    });
    lease.release().unwrap();
    let after_release = calls(&mut c, "dlock.extend");
    wait_until(
        "the keepalive thread to end",
        Duration::from_secs(5),
        || !client.keepalive_running(),
    );
    // Nothing can be polled for an absence: watch for three keepalive periods.
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(calls(&mut c, "dlock.extend"), after_release);
    assert_eq!(holder(&mut c, "job"), None);
}

#[test]
fn keepalive_holds_a_100ms_lease_for_5s() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "job")
        .ttl(Duration::from_millis(100))
        .keepalive(true)
        .acquire(None)
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let mut checks = 0;
    while Instant::now() < until {
        assert!(lease.valid(), "lost after {checks} checks");
        assert_eq!(holder(&mut c, "job").as_deref(), Some(lease.owner()));
        checks += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(lease.release().unwrap());
}

#[test]
fn session_lease_is_lost_with_its_connection() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Lock::new(&client, "leader")
        .session(true)
        .acquire(None)
        .unwrap();
    let reply: Value = cmd("DLOCK.INFO").arg("leader").query(&mut c).unwrap();
    assert!(format!("{reply:?}").contains("session"));
    // The session connection is the one that is not ours, the keepalive's or the pool's.
    let killed: i64 = cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut c)
        .unwrap();
    assert!(killed >= 1);
    assert_eq!(
        holder(&mut c, "leader"),
        None,
        "the server released it at once"
    );
    let started = Instant::now();
    assert!(lease.wait_lost(Some(Duration::from_secs(5))));
    println!("session loss noticed in {:.1} ms", ms(started.elapsed()));
    assert!(started.elapsed() < Duration::from_millis(500));

    // A session lease released normally closes its connection.
    let before = client_list(&mut c).len();
    let lease = Lock::new(&client, "leader")
        .session(true)
        .acquire(None)
        .unwrap();
    assert_eq!(client_list(&mut c).len(), before + 1);
    assert!(lease.release().unwrap());
    wait_until(
        "the session connection to close",
        Duration::from_secs(5),
        || client_list(&mut c).len() == before,
    );
}

#[test]
fn an_on_lost_callback_may_release_the_lease() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let lease = Arc::new(
        Lock::new(&client, "job")
            .ttl(Duration::from_millis(300))
            .keepalive(true)
            .acquire(None)
            .unwrap(),
    );
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let inside = Arc::clone(&lease);
    lease.on_lost(move || {
        // Runs on the keepalive thread that saw EXTEND answer 0.
        let _ = done_tx.send(inside.release().map_err(|e| e.to_string()));
    });
    let _: () = cmd("DEL").arg("job").query(&mut c).unwrap();
    let _thief = Lock::new(&client, "job")
        .owner("thief")
        .acquire(None)
        .unwrap();
    let released = done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the callback ended");
    assert_eq!(released, Ok(false));
    assert_eq!(holder(&mut c, "job").as_deref(), Some("thief"));
}

#[test]
fn a_lease_granted_after_waiting_longer_than_its_ttl_is_restarted_and_valid() {
    let server = Server::start();
    let mut c = server.conn();
    let client = client(&server);
    let ttl = Duration::from_millis(200);
    let validity = ttl - (ttl / 100 + Duration::from_millis(2));
    // Granted at once: the deadline counts from the ACQUIRE, and no EXTEND is sent.
    let lease = Lock::new(&client, "job")
        .ttl(ttl)
        .acquire(Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(calls(&mut c, "dlock.extend"), 0);
    assert!(lease.release().unwrap());
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
        .unwrap();
    let after = Instant::now();
    assert!(
        lease.valid() && !lease.is_lost() && lease.check().is_ok(),
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
    assert!(lease.release().unwrap(), "the server still had it");
}
