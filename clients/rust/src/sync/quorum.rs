//! The blocking quorum lock: [`QuorumLock`] over N independent servers, and its
//! [`QuorumLease`]. Each round sends its command to every server at once, one thread per
//! server, and waits for a majority.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use super::{Backend, Client, Conn, budget, keepalive_connection, set_timeouts, spawn};
use crate::error::{Error, Result};
use crate::quorum::{self, GRACE, Granted, Tally, Vote, Wait};
use crate::spec::{self, Mode, Spec};
use crate::state::{self, LeaseState, QuorumLink, RETRY, SessionConn, lock};

/// One server of a quorum lease, as its keepalive renews it: where to connect, and the
/// connection kept between renewals.
pub(crate) struct Target {
    redis: Backend,
    conn: Mutex<Option<Conn>>,
}

/// Where one server's ACQUIRE of an attempt stands. A failed attempt's RELEASE to a server
/// still asked goes from the thread that waits for that ACQUIRE, after its reply: sent beside
/// it on another connection, the server could run the RELEASE first and then grant the
/// ACQUIRE to an owner nobody holds for, until its ttl.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    Asking,
    Answered,
    Abandoned,
}

type Turns = Arc<Vec<Mutex<Turn>>>;

/// Record that server `i` answered; whether the attempt was abandoned meanwhile (its RELEASE
/// is then this thread's to send).
fn answered(turns: &Turns, i: usize) -> bool {
    turns
        .get(i)
        .is_some_and(|t| std::mem::replace(&mut *lock(t), Turn::Answered) == Turn::Abandoned)
}

/// Run `job(i)` for every server `i < n` on a thread of its own, and collect the answers until
/// all came, `wait` says the outcome is known (then [`GRACE`] more for the others), or `until`
/// passes. `None` for a server that did not answer by then (its thread ends by itself).
fn fan_out<T: Send + 'static>(
    n: usize,
    until: Option<Instant>,
    job: impl Fn(usize) -> T + Send + Sync + 'static,
    wait: impl Fn(&[Option<T>]) -> Wait,
) -> Vec<Option<T>> {
    let job = Arc::new(job);
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let job = Arc::clone(&job);
        let tx = tx.clone();
        // A thread that cannot be started counts as a server that does not answer.
        let _ = spawn("dlock-quorum", move || {
            let _ = tx.send((i, job(i)));
        });
    }
    drop(tx);
    let mut replies: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut until = until;
    let mut graced = false;
    loop {
        match wait(&replies) {
            Wait::Stop => break,
            Wait::Grace if !graced => {
                graced = true;
                let end = Instant::now() + GRACE;
                until = Some(until.map_or(end, |u| u.min(end)));
            }
            Wait::Grace | Wait::More => {}
        }
        let next = match until {
            Some(u) => rx
                .recv_timeout(u.saturating_duration_since(Instant::now()))
                .ok(),
            None => rx.recv().ok(),
        };
        let Some((i, reply)) = next else { break };
        if let Some(slot) = replies.get_mut(i) {
            *slot = Some(reply);
        }
    }
    replies
}

/// The votes of replies, `None` where there is none.
fn votes<T>(replies: &[Option<T>], vote: impl Fn(&T) -> Vote) -> Vec<Option<Vote>> {
    replies.iter().map(|r| r.as_ref().map(&vote)).collect()
}

/// Send `cmd` to every client; wait until all answered (`all`) or, without `all`, until the
/// outcome is known and [`GRACE`] more; but no longer than `until`.
fn round_of_ones(
    clients: &[Client],
    cmd: redis::Cmd,
    until: Option<Instant>,
    all: bool,
) -> Vec<Option<Result<Value>>> {
    let clients = clients.to_vec();
    let read_timeout = until.map(|u| budget(u).unwrap_or(Duration::from_millis(1)));
    fan_out(
        clients.len(),
        until,
        move |i| match clients.get(i) {
            Some(c) => c
                .inner
                .query(&cmd, read_timeout.or(c.inner.command_timeout)),
            None => Err(quorum::no_servers()),
        },
        move |replies| {
            let tally = Tally::of(&votes(replies, quorum::one_vote));
            match tally.wait() {
                Wait::Grace if all => Wait::More,
                wait => wait,
            }
        },
    )
}

/// A read timeout of at most `limit` and the client's command timeout.
fn capped(c: &Client, limit: Duration) -> Option<Duration> {
    Some(c.inner.command_timeout.map_or(limit, |t| t.min(limit)))
}

/// When a round bounded by the client's command timeout ends.
fn command_deadline(clients: &[Client]) -> Option<Instant> {
    clients
        .first()
        .and_then(|c| c.inner.command_timeout)
        .map(|t| Instant::now() + t)
}

/// An exclusive lock held on a majority of N independent servers (Redlock's quorum) whose
/// token a resource can trust: the highest token of the grants, raised on each granting server
/// with `DLOCK.FENCE`, so a later holder's token is higher (see the crate docs, "Quorum
/// locks").
///
/// Settings as for [`Lock`](crate::Lock): without [`ttl`](QuorumLock::ttl) a lease lasts 30 s
/// and is kept alive. There is no `guard`: the servers of the quorum are not the resource,
/// which must check the token itself.
#[derive(Clone)]
pub struct QuorumLock {
    clients: Vec<Client>,
    spec: Spec,
    /// Each server's `dlock.node-id`, once read.
    node_ids: Arc<Mutex<Vec<Option<i64>>>>,
}

impl QuorumLock {
    /// A quorum lock on `key` over `clients`, one handle per independent server, with the
    /// defaults (30 s lease, kept alive, a new random owner id for each attempt, the same on
    /// every server).
    pub fn new(clients: &[Client], key: &str) -> QuorumLock {
        QuorumLock {
            clients: clients.to_vec(),
            spec: Spec::new(key, Mode::Exclusive),
            node_ids: Arc::new(Mutex::new(vec![None; clients.len()])),
        }
    }

    /// Leases of exactly `ttl`, not renewed unless [`keepalive(true)`](QuorumLock::keepalive).
    pub fn ttl(mut self, ttl: Duration) -> QuorumLock {
        self.spec.ttl = Some(ttl);
        self
    }

    /// Take the lock as `owner` on every server instead of a random id. As with a single-server
    /// lock, holds of one owner re-enter: two leases taken at once with the same owner both
    /// succeed.
    pub fn owner(mut self, owner: &str) -> QuorumLock {
        self.spec.owner = Some(owner.to_string());
        self
    }

    /// Renew leases in the background (the default exactly when no ttl is given).
    pub fn keepalive(mut self, keepalive: bool) -> QuorumLock {
        self.spec.keepalive = Some(keepalive);
        self
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.spec.key
    }

    /// Try for a majority until `wait` passes (`None`: without limit), releasing everything and
    /// pausing at random between attempts; [`Error::NotAcquired`] when the wait ends without.
    /// An error that retrying would meet again ends the wait at once, after the attempt was
    /// released everywhere: [`Error::DuplicateNodeId`] (also when two grants' tokens carry one
    /// node id) or a server's refusal of the FENCE (its clock more than
    /// `dlock.max-token-lead` behind the token), as [`Error::Redis`].
    pub fn acquire(&self, wait: Option<Duration>) -> Result<QuorumLease> {
        let until = wait.map(|w| Instant::now() + w);
        loop {
            if let Some(lease) = self.attempt()? {
                return Ok(lease);
            }
            let pause = quorum::backoff();
            let pause = match until {
                Some(u) if Instant::now() >= u => {
                    return Err(Error::NotAcquired {
                        key: self.spec.key.clone(),
                    });
                }
                Some(u) => pause.min(u.saturating_duration_since(Instant::now())),
                None => pause,
            };
            std::thread::sleep(pause);
        }
    }

    /// One attempt: `None` when no majority granted and fenced in time (RELEASE was then sent
    /// to every server); the errors of [`acquire`](QuorumLock::acquire) after the same RELEASE.
    pub fn try_acquire(&self) -> Result<Option<QuorumLease>> {
        self.attempt()
    }

    fn attempt(&self) -> Result<Option<QuorumLease>> {
        if self.clients.is_empty() {
            return Err(quorum::no_servers());
        }
        // A fresh owner for each attempt, unless one is given: two leases of one lock object
        // (or its clones) never re-enter each other's holds, and a late RELEASE of a failed
        // attempt cannot end a hold of the next one.
        let owner = self.spec.owner.clone().unwrap_or_else(quorum::random_owner);
        let mut spec = self.spec.clone();
        spec.owner = Some(owner.clone());
        let ttl = self.spec.ttl();
        let sent = Instant::now();
        let deadline = state::deadline_after(sent, ttl);
        let read_timeout = budget(deadline).unwrap_or(Duration::from_millis(1));
        let unknown: Vec<bool> = lock(&self.node_ids).iter().map(Option::is_none).collect();
        let clients = self.clients.clone();
        let cmd = spec.acquire_cmd(None);
        let release = spec::release_cmd(&self.spec.key, &owner);
        let turns: Turns = Arc::new(
            (0..self.clients.len())
                .map(|_| Mutex::new(Turn::Asking))
                .collect(),
        );
        let asking = Arc::clone(&turns);
        let mut replies = fan_out(
            self.clients.len(),
            Some(deadline),
            move |i| {
                let Some(client) = clients.get(i) else {
                    return Granted {
                        node_id: None,
                        reply: Err(quorum::no_servers()),
                    };
                };
                let c = &client.inner;
                let read_timeout = capped(client, read_timeout);
                let node_id = if unknown.get(i).copied().unwrap_or(false) {
                    match c.query(&quorum::info_cmd(), read_timeout) {
                        Ok(info) => quorum::parse_node_id(&info),
                        Err(e) => {
                            // No ACQUIRE went out: nothing to release.
                            answered(&asking, i);
                            return Granted {
                                node_id: None,
                                reply: Err(e),
                            };
                        }
                    }
                } else {
                    None
                };
                if asking.get(i).is_some_and(|t| *lock(t) == Turn::Abandoned) {
                    // The attempt failed while the INFO was on its way: ask no more.
                    answered(&asking, i);
                    return Granted {
                        node_id,
                        reply: Ok(None),
                    };
                }
                let reply = c
                    .query(&cmd, read_timeout)
                    .and_then(|r| Ok(spec.parse_grant(r)?.map(|(token, _)| token)));
                if answered(&asking, i) {
                    let _ = c.query(&release, read_timeout);
                }
                Granted { node_id, reply }
            },
            |replies| Tally::of(&quorum::acquire_votes(replies)).wait(),
        );
        let checked = quorum::learn_node_ids(&mut lock(&self.node_ids), &replies);
        if let Err(e) = checked {
            self.release_all(&owner, &turns);
            return Err(e);
        }
        if let Some(e) = quorum::config_error(&mut replies) {
            self.release_all(&owner, &turns);
            return Err(e);
        }
        let grants = quorum::grants(&replies);
        if let Err(e) = quorum::check_grant_nodes(self.clients.len(), &grants) {
            self.release_all(&owner, &turns);
            return Err(e);
        }
        let target = grants.iter().map(|(_, t)| *t).max().unwrap_or(0);
        if grants.len() < quorum::majority(self.clients.len()) || Instant::now() >= deadline {
            self.release_all(&owner, &turns);
            return Ok(None);
        }
        let fenced = match self.fence(&grants, &owner, target, deadline) {
            Ok(fenced) => fenced,
            Err(e) => {
                self.release_all(&owner, &turns);
                return Err(e);
            }
        };
        if fenced && Instant::now() < deadline {
            let targets = self
                .clients
                .iter()
                .map(|c| {
                    Arc::new(Target {
                        redis: c.inner.redis.clone(),
                        conn: Mutex::new(None),
                    })
                })
                .collect();
            let state = LeaseState::new(
                self.spec.key.clone(),
                owner,
                target,
                ttl,
                sent,
                SessionConn::None,
                QuorumLink::Sync(targets),
                self.spec.keepalive(),
            );
            if let Some(first) = self.clients.first() {
                first.inner.register(&state);
            }
            return Ok(Some(QuorumLease {
                clients: self.clients.clone(),
                state,
            }));
        }
        self.release_all(&owner, &turns);
        Ok(None)
    }

    /// FENCE `target` on the servers that granted: whether a majority of all servers replied
    /// a token ≥ `target` before `deadline`; the first error a server answered (a FENCE
    /// refused as leading its clock too far) instead, as retrying would meet it again.
    fn fence(
        &self,
        grants: &[(usize, i64)],
        owner: &str,
        target: i64,
        deadline: Instant,
    ) -> Result<bool> {
        let clients: Vec<Client> = grants
            .iter()
            .filter_map(|(i, _)| self.clients.get(*i).cloned())
            .collect();
        let cmd = quorum::fence_cmd(&self.spec.key, owner, target);
        let read_timeout = budget(deadline).unwrap_or(Duration::from_millis(1));
        let need = quorum::majority(self.clients.len());
        let mut replies = fan_out(
            clients.len(),
            Some(deadline),
            move |i| match clients.get(i) {
                Some(c) => c.inner.query(&cmd, capped(c, read_timeout)),
                None => Err(quorum::no_servers()),
            },
            |replies| {
                let t = Tally::of(&votes(replies, |r| quorum::fence_vote(r, target)));
                if t.pending == 0 {
                    Wait::Stop
                } else if t.yes >= need || t.yes + t.pending < need {
                    Wait::Grace
                } else {
                    Wait::More
                }
            },
        );
        if let Some(e) = quorum::server_error(&mut replies) {
            return Err(e);
        }
        let fenced = votes(&replies, |r| quorum::fence_vote(r, target));
        Ok(Tally::of(&fenced).yes >= need)
    }

    /// RELEASE after a failed attempt: now on every server that answered its ACQUIRE, and
    /// from the ACQUIRE's own thread, once it has the reply, on those still asked.
    fn release_all(&self, owner: &str, turns: &Turns) {
        let answered: Vec<Client> = self
            .clients
            .iter()
            .zip(turns.iter())
            .filter(|(_, turn)| {
                let mut turn = lock(turn);
                if *turn == Turn::Asking {
                    *turn = Turn::Abandoned;
                }
                *turn == Turn::Answered
            })
            .map(|(client, _)| client.clone())
            .collect();
        let until = Instant::now() + self.spec.ttl().min(Duration::from_secs(1));
        let until = command_deadline(&self.clients).map_or(until, |c| c.min(until));
        round_of_ones(
            &answered,
            spec::release_cmd(&self.spec.key, owner),
            Some(until),
            true,
        );
    }
}

/// Renew a quorum lease from the keepalive thread: EXTEND on every server at once, each on its
/// own kept connection, every read bounded by `io_deadline`. A majority of 1s moves the
/// deadline; so many 0s that no majority can be marks the lease lost; anything else is retried.
pub(super) fn renew(lease: &LeaseState, targets: &[Arc<Target>], io_deadline: Instant) {
    let ttl = lease.ttl();
    let sent = Instant::now();
    let cmd = spec::extend_cmd(&lease.key, &lease.owner, ttl);
    let targets = targets.to_vec();
    let replies = fan_out(
        targets.len(),
        Some(io_deadline),
        move |i| match targets.get(i) {
            Some(t) => t.extend(&cmd, io_deadline),
            None => Vote::Failed,
        },
        |replies: &[Option<Vote>]| Tally::of(replies).wait(),
    );
    let tally = Tally::of(&replies);
    if tally.majority() {
        lease.extended(sent, ttl);
    } else if tally.refused() {
        lease.lose_when_idle();
    } else {
        lease.retry_at(Instant::now() + RETRY);
    }
}

impl Target {
    fn extend(&self, cmd: &redis::Cmd, io_deadline: Instant) -> Vote {
        let conn = lock(&self.conn).take();
        let Some(mut c) = conn.or_else(|| keepalive_connection(&self.redis, io_deadline).ok())
        else {
            return Vote::Failed;
        };
        let reply = set_timeouts(&c, io_deadline).and_then(|()| cmd.query::<i64>(c.like()));
        match reply {
            Ok(n) => {
                *lock(&self.conn) = Some(c);
                if n == 1 { Vote::Yes } else { Vote::No }
            }
            Err(e) => {
                if !(e.is_io_error() || e.is_unrecoverable_error()) {
                    *lock(&self.conn) = Some(c);
                }
                Vote::Failed
            }
        }
    }
}

/// A quorum lock's lease: the same interface as [`Lease`](crate::Lease) but for `guard`
/// (the resource checks [`token`](QuorumLease::token) itself). Its token is the highest of the
/// grants, FENCEd on a majority. It is kept alive by the first client's background threads,
/// with EXTENDs to every server. Dropping it releases it on every server.
pub struct QuorumLease {
    clients: Vec<Client>,
    state: Arc<LeaseState>,
}

impl QuorumLease {
    lease_view!();

    /// Block until the lease is lost (true) or released or `timeout` passes (false).
    pub fn wait_lost(&self, timeout: Option<Duration>) -> bool {
        self.state.wait_lost(timeout)
    }

    /// EXTEND on every server for `ttl` (or the current ttl): a majority of 1s moves the
    /// deadline; so many 0s that no majority can be marks the lease lost
    /// ([`Error::LockLost`]); otherwise the first server error (the lease is then renewed by
    /// nobody but the keepalive, and still ends at its deadline).
    pub fn extend(&self, ttl: Option<Duration>) -> Result<()> {
        self.check()?;
        if self.state.is_released() {
            return Err(Error::NotHeld {
                key: self.state.key.clone(),
            });
        }
        let ttl = ttl.unwrap_or_else(|| self.state.ttl());
        let sent = Instant::now();
        let replies = round_of_ones(
            &self.clients,
            spec::extend_cmd(&self.state.key, &self.state.owner, ttl),
            command_deadline(&self.clients),
            false,
        );
        let tally = Tally::of(&votes(&replies, quorum::one_vote));
        if tally.majority() {
            self.state.extended(sent, ttl);
            self.check()?;
            Ok(())
        } else if tally.refused() {
            self.state.mark_lost();
            Err(self.lost_error().into())
        } else {
            Err(quorum::undecided(replies))
        }
    }

    /// Release: stops the keepalive, then RELEASE on every server. Whether a majority still
    /// had it (an error when too few answered to tell); a second call returns the first answer.
    pub fn release(&self) -> Result<bool> {
        if !self.state.begin_release() {
            return Ok(self.state.release_result().unwrap_or(false));
        }
        if let Some(first) = self.clients.first() {
            first.inner.unregister(&self.state);
        }
        self.state.wait_idle();
        // Once a majority answered, the rest get a grace period, not the command timeout: a
        // frozen server's RELEASE still goes out (its thread carries on), but is not waited for.
        let replies = round_of_ones(
            &self.clients,
            spec::release_cmd(&self.state.key, &self.state.owner),
            command_deadline(&self.clients),
            false,
        );
        let tally = Tally::of(&votes(&replies, quorum::one_vote));
        let held = if tally.majority() {
            Ok(true)
        } else if tally.yes + tally.failed + tally.pending >= quorum::majority(replies.len()) {
            Err(quorum::undecided(replies))
        } else {
            Ok(false)
        };
        self.state.finish_release(*held.as_ref().unwrap_or(&false));
        held
    }

    /// As [`release`](QuorumLease::release), but [`Error::NotHeld`] when no majority still had
    /// the lease.
    pub fn release_strict(&self) -> Result<()> {
        if self.release()? {
            Ok(())
        } else {
            Err(Error::NotHeld {
                key: self.state.key.clone(),
            })
        }
    }
}

impl Drop for QuorumLease {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

impl std::fmt::Debug for QuorumLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumLease")
            .field("key", &self.state.key)
            .field("owner", &self.state.owner)
            .field("token", &self.state.token)
            .field("servers", &self.clients.len())
            .field("lost", &self.state.is_lost())
            .finish()
    }
}
