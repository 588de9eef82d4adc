//! Quorum locks against 3 and 5 real servers, each with its own `dlock.node-id`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use dlock_client::{Client, Error, QuorumLock};

/// Token ticks per millisecond (the low 13 bits are the sequence and the node id).
const TICKS_PER_MS: i64 = 8192;

/// `n` servers with node ids 1..=n.
fn servers(n: u8) -> Vec<Server> {
    (1..=n).map(Server::with_node_id).collect()
}

fn clients(servers: &[Server]) -> Vec<Client> {
    servers.iter().map(|s| Client::new(s.redis())).collect()
}

/// Move `server`'s token clock `ms` ahead with a FENCE on another key, so that its next grant
/// is the highest of the quorum.
fn raise_clock(server: &Server, ms: i64) {
    let mut c = server.conn();
    let t: i64 = cmd("DLOCK.ACQUIRE")
        .arg("clock")
        .arg("bump")
        .arg(1000)
        .query(&mut c)
        .unwrap();
    let raised: i64 = cmd("DLOCK.FENCE")
        .arg("clock")
        .arg("bump")
        .arg(t + ms * TICKS_PER_MS)
        .query(&mut c)
        .unwrap();
    assert_eq!(raised, t + ms * TICKS_PER_MS);
    let _: i64 = cmd("DLOCK.RELEASE")
        .arg("clock")
        .arg("bump")
        .query(&mut c)
        .unwrap();
}

fn take(server: &Server, key: &str, owner: &str) -> i64 {
    cmd("DLOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(10_000)
        .query(&mut server.conn())
        .unwrap()
}

/// Push server 0's token clock two hours ahead (its own lead check switched off): a FENCE to
/// its tokens is refused by the other servers, whose `dlock.max-token-lead` is 1 hour.
fn far_ahead(servers: &[Server]) {
    let _: () = cmd("CONFIG")
        .arg("SET")
        .arg("dlock.max-token-lead")
        .arg(0)
        .query(&mut servers[0].conn())
        .unwrap();
    raise_clock(&servers[0], 2 * 3600 * 1000);
}

/// Give server 1 server 0's `dlock.node-id` after the quorum lock has read the ids.
fn duplicate_node_id(servers: &[Server]) {
    let _: () = cmd("CONFIG")
        .arg("SET")
        .arg("dlock.node-id")
        .arg(1)
        .query(&mut servers[1].conn())
        .unwrap();
}

fn holders(servers: &[Server], key: &str) -> Vec<Option<String>> {
    servers.iter().map(|s| holder(&mut s.conn(), key)).collect()
}

/// A quorum release answers once a majority did: the other servers' RELEASE lands moments
/// later. Wait until `key` is held as `left` on each of `servers`.
fn released_everywhere(servers: &[Server], key: &str, left: Vec<Option<String>>) {
    wait_until("every server's RELEASE", Duration::from_secs(5), || {
        holders(servers, key) == left
    });
}

fn tokens(servers: &[Server], key: &str) -> Vec<Option<i64>> {
    servers.iter().map(|s| token(&mut s.conn(), key)).collect()
}

#[test]
fn a_majority_takes_the_highest_token_and_fences_it_on_every_granting_server() {
    let servers = servers(3);
    raise_clock(&servers[1], 1_000);
    let lock = QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(10));
    let before = Instant::now();
    let lease = lock.try_acquire().unwrap().expect("acquired");
    let after = Instant::now();
    let t = lease.token();
    assert_eq!(t & 15, 2, "the highest grant came from node 2: {t}");
    assert_eq!(lease.owner().len(), 32, "a random 128-bit owner id");
    assert!(lease.owner().chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(lease.key(), "job");
    assert_eq!(
        holders(&servers, "job"),
        vec![Some(lease.owner().into()); 3]
    );
    assert_eq!(
        tokens(&servers, "job"),
        vec![Some(t); 3],
        "FENCE raised the others"
    );
    // ttl − drift (10 s / 100 + 2 ms), from before the ACQUIREs were sent.
    let validity = Duration::from_millis(10_000 - 102);
    assert!(lease.deadline() >= before + validity && lease.deadline() <= after + validity);
    assert!(lease.valid() && !lease.is_lost() && lease.check().is_ok());
    assert!(lease.release().unwrap());
    assert!(lease.release().unwrap(), "a second release does nothing");
    assert!(!lease.valid());
    released_everywhere(&servers, "job", vec![None; 3]);
    // Every server's clock is past T now: any later grant, anywhere, is above it.
    for s in &servers {
        assert!(take(s, "next", "w") > t);
    }
}

#[test]
fn clones_of_one_lock_exclude_each_other() {
    let servers = servers(3);
    let lock = QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(5));
    let first = lock.try_acquire().unwrap().expect("free");
    let twin = lock.clone();
    assert!(twin.try_acquire().unwrap().is_none(), "no re-entry");
    assert!(
        lock.try_acquire().unwrap().is_none(),
        "nor by the same object"
    );
    let owner = first.owner().to_string();
    assert_eq!(holders(&servers, "job"), vec![Some(owner.clone()); 3]);
    drop(first);
    let second = twin.try_acquire().unwrap().expect("released");
    assert_ne!(second.owner(), owner, "a new owner for each attempt");
}

#[test]
fn a_later_quorum_holder_gets_a_higher_token() {
    let servers = servers(3);
    let clients = clients(&servers);
    let mut last = 0;
    for _ in 0..5 {
        let lease = QuorumLock::new(&clients, "job")
            .ttl(Duration::from_secs(5))
            .acquire(Some(Duration::from_secs(2)))
            .unwrap();
        assert!(lease.token() > last);
        last = lease.token();
    }
}

/// The proof's step, checked: a later holder's majority shares a server with the earlier
/// holder's fenced majority, whose clock FENCE raised to T, so its token there (and so its
/// max) is above T, even though the other server of its majority lags far behind.
#[test]
fn a_later_holder_on_an_overlapping_majority_gets_a_token_above_the_fenced_one() {
    let mut servers = servers(3);
    let clients = clients(&servers);
    raise_clock(&servers[0], 60_000);
    take(&servers[2], "job", "other");
    let first = QuorumLock::new(&clients, "job")
        .ttl(Duration::from_secs(5))
        .try_acquire()
        .unwrap()
        .expect("servers 0 and 1 granted");
    let t = first.token();
    assert_eq!(t & 15, 1, "server 0's clock leads by a minute");
    assert_eq!(tokens(&servers[..2], "job"), vec![Some(t); 2]);
    first.release().unwrap();
    let _: i64 = cmd("DLOCK.RELEASE")
        .arg("job")
        .arg("other")
        .query(&mut servers[2].conn())
        .unwrap();
    drop(servers.remove(0));
    let second = QuorumLock::new(&clients, "job")
        .ttl(Duration::from_secs(5))
        .try_acquire()
        .unwrap()
        .expect("servers 1 and 2 granted");
    assert!(second.token() > t, "{} <= {t}", second.token());
    assert_eq!(
        second.token() & 15,
        2,
        "from server 1, whose clock FENCE raised"
    );
}

#[test]
fn a_minority_of_servers_down_still_acquires() {
    for n in [3, 5] {
        let mut servers = servers(n);
        let clients = clients(&servers);
        let down = (n - 1) / 2;
        for _ in 0..down {
            drop(servers.remove(0));
        }
        let lease = QuorumLock::new(&clients, "job")
            .ttl(Duration::from_secs(5))
            .acquire(Some(Duration::from_secs(2)))
            .unwrap();
        let t = lease.token();
        assert_eq!(tokens(&servers, "job"), vec![Some(t); servers.len()]);
        lease.extend(None).unwrap();
        assert!(lease.release().unwrap());
        released_everywhere(&servers, "job", vec![None; servers.len()]);
    }
}

#[test]
fn a_frozen_minority_holds_up_neither_the_acquire_nor_the_keepalive() {
    let servers = servers(3);
    let lock = QuorumLock::new(&clients(&servers), "job")
        .ttl(Duration::from_millis(300))
        .keepalive(true);
    let frozen = servers[2].freeze();
    let started = Instant::now();
    let lease = lock.try_acquire().unwrap().expect("two of three granted");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(tokens(&servers[..2], "job"), vec![Some(lease.token()); 2]);
    assert!(
        !lease.wait_lost(Some(Duration::from_millis(1_000))),
        "renewed by two of three"
    );
    drop(frozen);
    assert!(lease.release().unwrap());
    released_everywhere(&servers[..2], "job", vec![None; 2]);
}

#[test]
fn release_with_a_frozen_minority_returns_once_a_majority_answered() {
    let servers = servers(3);
    let lock = QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(10));
    let lease = lock.try_acquire().unwrap().expect("free");
    let frozen = servers[2].freeze();
    let started = Instant::now();
    assert!(lease.release().unwrap());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(holders(&servers[..2], "job"), vec![None; 2]);
    // The frozen server's RELEASE was sent all the same: it runs once the server wakes.
    drop(frozen);
    released_everywhere(&servers[2..], "job", vec![None]);
}

#[test]
fn a_failed_attempt_leaves_nothing_held_on_a_server_that_wakes_after_it() {
    let servers = servers(3);
    take(&servers[0], "job", "other");
    take(&servers[1], "job", "other");
    // A new lock reads each server's node id first: the frozen server answers its INFO only
    // after the attempt failed, and must then not be sent the ACQUIRE (the attempt's RELEASE
    // went out long before).
    let lock = QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(30));
    let frozen = servers[2].freeze();
    assert!(lock.try_acquire().unwrap().is_none());
    drop(frozen);
    let mut c = servers[2].conn();
    wait_until(
        "the woken server to answer the INFO",
        Duration::from_secs(5),
        || calls(&mut c, "info") >= 1,
    );
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(300) {
        assert_eq!(holder(&mut c, "job"), None, "held for an abandoned attempt");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_majority_of_servers_down_is_not_acquired_and_leaves_nothing_held() {
    let mut servers = servers(3);
    let clients = clients(&servers);
    drop(servers.remove(0));
    drop(servers.remove(0));
    let lock = QuorumLock::new(&clients, "job").ttl(Duration::from_secs(5));
    assert!(lock.try_acquire().unwrap().is_none());
    let started = Instant::now();
    match lock.acquire(Some(Duration::from_millis(200))) {
        Err(Error::NotAcquired { key }) => assert_eq!(key, "job"),
        other => panic!("expected NotAcquired, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(holders(&servers, "job"), vec![None]);
}

#[test]
fn a_competing_holder_on_two_of_three_wins_and_nothing_is_left_held() {
    let servers = servers(3);
    take(&servers[0], "job", "other");
    take(&servers[1], "job", "other");
    let lock = QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(5));
    assert!(lock.try_acquire().unwrap().is_none());
    assert!(matches!(
        lock.acquire(Some(Duration::from_millis(150))),
        Err(Error::NotAcquired { .. })
    ));
    let other = Some("other".to_string());
    assert_eq!(holders(&servers, "job"), vec![other.clone(), other, None]);
}

#[test]
fn a_competing_holder_on_one_of_three_does_not_stop_it() {
    let servers = servers(3);
    let theirs = take(&servers[2], "job", "other");
    let lease = QuorumLock::new(&clients(&servers), "job")
        .ttl(Duration::from_secs(5))
        .try_acquire()
        .unwrap()
        .expect("a majority granted");
    let t = lease.token();
    assert_eq!(
        tokens(&servers, "job"),
        vec![Some(t), Some(t), Some(theirs)]
    );
    assert!(lease.release().unwrap());
    released_everywhere(&servers, "job", vec![None, None, Some("other".into())]);
}

#[test]
fn a_waiter_gets_the_lock_once_the_holder_releases() {
    let servers = servers(3);
    let clients = clients(&servers);
    let held = QuorumLock::new(&clients, "job")
        .ttl(Duration::from_secs(5))
        .acquire(None)
        .unwrap();
    let first = held.token();
    let waiter = {
        let lock = QuorumLock::new(&clients, "job").ttl(Duration::from_secs(5));
        std::thread::spawn(move || {
            lock.acquire(Some(Duration::from_secs(5)))
                .map(|l| l.token())
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    drop(held);
    let second = waiter.join().unwrap().unwrap();
    assert!(second > first);
    assert_eq!(
        holders(&servers, "job"),
        vec![None; 3],
        "the waiter's lease was dropped"
    );
}

#[test]
fn extend_and_release_go_to_every_server() {
    let servers = servers(3);
    let lease = QuorumLock::new(&clients(&servers), "job")
        .owner("worker-1")
        .ttl(Duration::from_secs(1))
        .try_acquire()
        .unwrap()
        .unwrap();
    assert_eq!(lease.owner(), "worker-1");
    let sent = Instant::now();
    lease.extend(Some(Duration::from_secs(20))).unwrap();
    assert!(lease.deadline() >= sent + Duration::from_millis(20_000 - 202));
    for s in &servers {
        let mut c = s.conn();
        assert_eq!(calls(&mut c, "dlock.extend"), 1);
        let ttl: i64 = cmd("PTTL").arg("job").query(&mut c).unwrap();
        assert!(ttl > 19_000, "{ttl}");
    }
    lease.release_strict().unwrap();
    released_everywhere(&servers, "job", vec![None; 3]);
    for s in &servers {
        assert_eq!(calls(&mut s.conn(), "dlock.release"), 1);
    }
    assert!(matches!(lease.extend(None), Err(Error::NotHeld { .. })));
}

#[test]
fn dropping_the_lease_releases_it_everywhere() {
    let servers = servers(3);
    {
        let _lease = QuorumLock::new(&clients(&servers), "job")
            .try_acquire()
            .unwrap()
            .unwrap();
        assert!(holders(&servers, "job").iter().all(Option::is_some));
    }
    released_everywhere(&servers, "job", vec![None; 3]);
}

#[test]
fn the_keepalive_renews_on_every_server() {
    let servers = servers(3);
    let client = clients(&servers);
    let lease = QuorumLock::new(&client, "job")
        .ttl(Duration::from_millis(300))
        .keepalive(true)
        .try_acquire()
        .unwrap()
        .unwrap();
    assert!(!lease.wait_lost(Some(Duration::from_millis(1_000))));
    assert!(lease.valid());
    for s in &servers {
        let mut c = s.conn();
        assert!(calls(&mut c, "dlock.extend") >= 2);
        assert_eq!(holder(&mut c, "job").as_deref(), Some(lease.owner()));
    }
    assert!(client[0].keepalive_running());
    lease.release().unwrap();
    released_everywhere(&servers, "job", vec![None; 3]);
    wait_until("the keepalive to stop", Duration::from_secs(5), || {
        !client[0].keepalive_running()
    });
}

#[test]
fn one_refusing_server_is_outvoted_but_a_refusing_majority_loses_the_lease() {
    let servers = servers(3);
    let lease = QuorumLock::new(&clients(&servers), "job")
        .ttl(Duration::from_millis(300))
        .keepalive(true)
        .try_acquire()
        .unwrap()
        .unwrap();
    let lost = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&lost);
    lease.on_lost(move || flag.store(true, Ordering::SeqCst));
    let _: i64 = cmd("DEL").arg("job").query(&mut servers[0].conn()).unwrap();
    assert!(
        !lease.wait_lost(Some(Duration::from_millis(700))),
        "2 of 3 renew it"
    );
    lease.extend(None).unwrap();
    let _: i64 = cmd("DEL").arg("job").query(&mut servers[1].conn()).unwrap();
    let started = Instant::now();
    assert!(lease.wait_lost(Some(Duration::from_secs(2))));
    assert!(started.elapsed() < Duration::from_millis(300));
    assert!(lease.is_lost() && !lease.valid());
    // The callback runs on the thread that noticed the loss, maybe just after wait_lost
    // returned here.
    wait_until("the on_lost callback", Duration::from_secs(1), || {
        lost.load(Ordering::SeqCst)
    });
    assert!(lease.check().is_err());
    assert!(matches!(lease.extend(None), Err(Error::LockLost(_))));
}

#[test]
fn an_explicit_extend_refused_by_a_majority_marks_the_lease_lost() {
    let servers = servers(3);
    let lease = QuorumLock::new(&clients(&servers), "job")
        .ttl(Duration::from_secs(5))
        .try_acquire()
        .unwrap()
        .unwrap();
    for s in &servers[..2] {
        let _: i64 = cmd("DEL").arg("job").query(&mut s.conn()).unwrap();
    }
    assert!(matches!(lease.extend(None), Err(Error::LockLost(_))));
    assert!(lease.is_lost());
    assert!(!lease.release().unwrap(), "only one server still had it");
    released_everywhere(&servers, "job", vec![None; 3]);
}

#[test]
fn duplicate_node_ids_are_refused_with_a_hint() {
    let servers = vec![
        Server::with_node_id(4),
        Server::with_node_id(5),
        Server::with_node_id(4),
    ];
    let lock = QuorumLock::new(&clients(&servers), "job");
    let err = lock.try_acquire().unwrap_err();
    match &err {
        Error::DuplicateNodeId { node_id, servers } => {
            assert_eq!((*node_id, *servers), (4, (0, 2)))
        }
        other => panic!("expected DuplicateNodeId, got {other:?}"),
    }
    assert!(
        err.to_string().contains("set a distinct dlock.node-id"),
        "{err}"
    );
    assert!(matches!(
        lock.acquire(Some(Duration::from_millis(100))),
        Err(Error::DuplicateNodeId { .. })
    ));
    assert_eq!(holders(&servers, "job"), vec![None; 3]);
    // The same server twice has, of course, the same id.
    let one = Server::with_node_id(1);
    let twice = [Client::new(one.redis()), Client::new(one.redis())];
    assert!(matches!(
        QuorumLock::new(&twice, "job").try_acquire(),
        Err(Error::DuplicateNodeId { node_id: 1, .. })
    ));
}

#[test]
fn a_server_without_the_module_is_reported() {
    let servers = [
        Server::with_node_id(1),
        Server::with_node_id(2),
        Server::without_module(),
    ];
    let lock = QuorumLock::new(&clients(&servers), "job");
    assert!(matches!(
        lock.try_acquire(),
        Err(Error::ModuleNotLoaded { .. })
    ));
    assert_eq!(holders(&servers[..2], "job"), vec![None; 2]);
}

/// An acquire started at `started` ended at once with the FENCE error of a server whose clock
/// the token leads too far, not after retrying until its wait ended.
fn assert_fence_refused<T: std::fmt::Debug>(result: Result<T, Error>, started: Instant) {
    match result {
        Err(Error::Redis(e)) => assert!(
            e.to_string()
                .contains("token leads this server's clock by more than dlock.max-token-lead"),
            "{e}"
        ),
        other => panic!("expected the server's FENCE error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "returned at once, not retried until the wait ended: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_fence_refused_by_a_server_is_returned_after_releasing_the_attempt() {
    let servers = servers(3);
    far_ahead(&servers);
    // Server 2 is held by another: the majority is servers 0 and 1, so the highest grant, the
    // FENCE target, is server 0's, two hours ahead of server 1's clock.
    take(&servers[2], "job", "other");
    let lock = QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(5));
    let started = Instant::now();
    assert_fence_refused(lock.acquire(Some(Duration::from_secs(3))), started);
    assert_eq!(
        holders(&servers, "job"),
        vec![None, None, Some("other".into())]
    );
    assert!(matches!(lock.try_acquire(), Err(Error::Redis(_))));
    assert_eq!(
        holders(&servers, "job"),
        vec![None, None, Some("other".into())]
    );
}

#[test]
fn a_node_id_changed_after_it_was_read_is_caught_on_the_grants() {
    let servers = servers(3);
    let lock = QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(5));
    let lease = lock.try_acquire().unwrap().expect("free");
    assert!(lease.release().unwrap());
    released_everywhere(&servers, "job", vec![None; 3]);
    duplicate_node_id(&servers);
    // The majority is servers 0 and 1, whose tokens now both carry node id 1.
    take(&servers[2], "job", "other");
    match lock.try_acquire() {
        Err(Error::DuplicateNodeId { node_id, servers }) => {
            assert_eq!((node_id, servers), (1, (0, 1)));
        }
        other => panic!("expected DuplicateNodeId, got {other:?}"),
    }
    assert_eq!(
        holders(&servers, "job"),
        vec![None, None, Some("other".into())]
    );
    assert!(matches!(
        lock.acquire(Some(Duration::from_secs(1))),
        Err(Error::DuplicateNodeId { node_id: 1, .. })
    ));
}

#[cfg(feature = "tokio")]
mod tokio_client {
    use super::*;
    use dlock_client::aio;

    fn clients(servers: &[Server]) -> Vec<aio::Client> {
        servers
            .iter()
            .map(|s| aio::Client::new(s.redis()))
            .collect()
    }

    #[tokio::test]
    async fn release_with_a_frozen_minority_returns_once_a_majority_answered() {
        let servers = servers(3);
        let lock = aio::QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(10));
        let lease = lock.try_acquire().await.unwrap().expect("free");
        let frozen = servers[2].freeze();
        let started = Instant::now();
        assert!(lease.release().await.unwrap());
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(holders(&servers[..2], "job"), vec![None; 2]);
        drop(frozen);
        let deadline = Instant::now() + Duration::from_secs(5);
        while holders(&servers[2..], "job") != vec![None] {
            assert!(
                Instant::now() < deadline,
                "the thawed server did not release"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_majority_takes_the_highest_token_and_fences_it() {
        let servers = servers(3);
        raise_clock(&servers[2], 1_000);
        let lock = aio::QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(10));
        let lease = lock.try_acquire().await.unwrap().expect("acquired");
        let t = lease.token();
        assert_eq!(t & 15, 3, "the highest grant came from node 3: {t}");
        assert_eq!(lease.owner().len(), 32);
        assert_eq!(tokens(&servers, "job"), vec![Some(t); 3]);
        assert_eq!(
            holders(&servers, "job"),
            vec![Some(lease.owner().into()); 3]
        );
        assert!(lease.valid() && !*lease.lost().borrow());
        lease.extend(Some(Duration::from_secs(20))).await.unwrap();
        assert!(lease.remaining() > Duration::from_secs(19));
        assert!(lease.release().await.unwrap());
        released_everywhere(&servers, "job", vec![None; 3]);
    }

    #[tokio::test]
    async fn a_minority_down_acquires_and_a_majority_down_does_not() {
        let mut servers = servers(5);
        let clients = clients(&servers);
        drop(servers.remove(0));
        drop(servers.remove(0));
        let lock = aio::QuorumLock::new(&clients, "job").ttl(Duration::from_secs(5));
        let lease = lock.acquire(Some(Duration::from_secs(2))).await.unwrap();
        assert_eq!(tokens(&servers, "job"), vec![Some(lease.token()); 3]);
        drop(lease);
        wait_until_async(
            "the dropped lease's release",
            Duration::from_secs(5),
            || holders(&servers, "job").iter().all(Option::is_none),
        )
        .await;
        drop(servers.remove(0));
        match lock.acquire(Some(Duration::from_millis(150))).await {
            Err(Error::NotAcquired { key }) => assert_eq!(key, "job"),
            other => panic!("expected NotAcquired, got {other:?}"),
        }
        assert_eq!(holders(&servers, "job"), vec![None; 2]);
    }

    #[tokio::test]
    async fn a_competing_holder_on_two_of_three_wins_and_nothing_is_left_held() {
        let servers = servers(3);
        take(&servers[0], "job", "other");
        take(&servers[2], "job", "other");
        let lock = aio::QuorumLock::new(&clients(&servers), "job");
        assert!(lock.try_acquire().await.unwrap().is_none());
        assert!(matches!(
            lock.acquire(Some(Duration::from_millis(150))).await,
            Err(Error::NotAcquired { .. })
        ));
        let other = Some("other".to_string());
        assert_eq!(holders(&servers, "job"), vec![other.clone(), None, other]);
    }

    #[tokio::test]
    async fn kept_alive_on_every_server_and_lost_when_a_majority_refuses() {
        let servers = servers(3);
        let lease = aio::QuorumLock::new(&clients(&servers), "job")
            .ttl(Duration::from_millis(300))
            .keepalive(true)
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        let mut lost = lease.lost();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(lease.valid());
        for s in &servers {
            assert!(calls(&mut s.conn(), "dlock.extend") >= 2);
        }
        for s in &servers[1..] {
            let _: i64 = cmd("DEL").arg("job").query(&mut s.conn()).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(2), lost.wait_for(|l| *l))
            .await
            .expect("lost in time")
            .unwrap();
        assert!(lease.is_lost() && lease.check().is_err());
        assert!(matches!(lease.extend(None).await, Err(Error::LockLost(_))));
    }

    #[tokio::test]
    async fn clones_of_one_lock_exclude_each_other() {
        let servers = servers(3);
        let lock = aio::QuorumLock::new(&clients(&servers), "job");
        let first = lock.try_acquire().await.unwrap().expect("free");
        assert!(lock.clone().try_acquire().await.unwrap().is_none());
        assert!(first.release().await.unwrap());
        assert!(lock.clone().try_acquire().await.unwrap().is_some());
    }

    #[tokio::test]
    async fn duplicate_node_ids_are_refused() {
        let servers = vec![Server::with_node_id(7), Server::with_node_id(7)];
        let lock = aio::QuorumLock::new(&clients(&servers), "job");
        match lock.try_acquire().await {
            Err(Error::DuplicateNodeId { node_id, servers }) => {
                assert_eq!((node_id, servers), (7, (0, 1)));
            }
            other => panic!("expected DuplicateNodeId, got {other:?}"),
        }
        assert_eq!(holders(&servers, "job"), vec![None; 2]);
    }

    #[tokio::test]
    async fn a_fence_refused_by_a_server_is_returned_after_releasing_the_attempt() {
        let servers = servers(3);
        far_ahead(&servers);
        take(&servers[2], "job", "other");
        let lock = aio::QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(5));
        let started = Instant::now();
        assert_fence_refused(lock.acquire(Some(Duration::from_secs(3))).await, started);
        assert_eq!(
            holders(&servers, "job"),
            vec![None, None, Some("other".into())]
        );
    }

    #[tokio::test]
    async fn a_node_id_changed_after_it_was_read_is_caught_on_the_grants() {
        let servers = servers(3);
        let lock = aio::QuorumLock::new(&clients(&servers), "job").ttl(Duration::from_secs(5));
        let lease = lock.try_acquire().await.unwrap().expect("free");
        assert!(lease.release().await.unwrap());
        released_everywhere(&servers, "job", vec![None; 3]);
        duplicate_node_id(&servers);
        take(&servers[2], "job", "other");
        match lock.try_acquire().await {
            Err(Error::DuplicateNodeId { node_id, servers }) => {
                assert_eq!((node_id, servers), (1, (0, 1)));
            }
            other => panic!("expected DuplicateNodeId, got {other:?}"),
        }
        assert_eq!(
            holders(&servers, "job"),
            vec![None, None, Some("other".into())]
        );
    }
}
