//! The tokio quorum lock: [`QuorumLock`] over N independent servers, and its [`QuorumLease`].
//! Each round sends its command to every server at once, one task per server, and waits for a
//! majority.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{RedisError, Value};
use tokio::runtime::Handle;

use super::{AConn, Client, Inner, budget, keepalive_connection, within};
use crate::error::{Error, Result};
use crate::quorum::{self, GRACE, Granted, Tally, Vote, Wait};
use crate::spec::{self, Mode, Spec};
use crate::state::{self, LeaseState, QuorumLink, RETRY, SessionConn, lock};

/// One server of a quorum lease, as its keepalive renews it: where to connect, and the
/// connection kept between renewals.
pub(crate) struct Target {
    redis: super::Backend,
    conn: Mutex<Option<AConn>>,
}

/// Run `job(i)` for every server `i < n` as a task of its own on `runtime`, and collect the
/// answers until all came, `wait` says the outcome is known (then [`GRACE`] more for the
/// others), or `until` passes. `None` for a server that did not answer by then (its task ends
/// by itself).
async fn fan_out<T, F, Fut>(
    runtime: &Handle,
    n: usize,
    until: Option<Instant>,
    job: F,
    wait: impl Fn(&[Option<T>]) -> Wait,
) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..n {
        let reply = job(i);
        let tx = tx.clone();
        runtime.spawn(async move {
            let _ = tx.send((i, reply.await));
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
            Some(u) => tokio::time::timeout_at(u.into(), rx.recv())
                .await
                .ok()
                .flatten(),
            None => rx.recv().await,
        };
        let Some((i, reply)) = next else { break };
        if let Some(slot) = replies.get_mut(i) {
            *slot = Some(reply);
        }
    }
    replies
}

fn votes<T>(replies: &[Option<T>], vote: impl Fn(&T) -> Vote) -> Vec<Option<Vote>> {
    replies.iter().map(|r| r.as_ref().map(&vote)).collect()
}

/// `cmd` on one server, within `limit` (and the client's command timeout).
async fn query(inner: Arc<Inner>, cmd: redis::Cmd, limit: Option<Duration>) -> Result<Value> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, inner.query(&cmd))
            .await
            .unwrap_or_else(|_| Err(Error::Redis(super::timed_out()))),
        None => inner.query(&cmd).await,
    }
}

/// Send `cmd` to every client; wait until all answered (`all`) or, without `all`, until the
/// outcome is known and [`GRACE`] more; but no longer than `until`.
async fn round_of_ones(
    runtime: &Handle,
    clients: &[Client],
    cmd: redis::Cmd,
    until: Option<Instant>,
    all: bool,
) -> Vec<Option<Result<Value>>> {
    let limit = until.map(budget);
    fan_out(
        runtime,
        clients.len(),
        until,
        |i| {
            let inner = clients.get(i).map(|c| Arc::clone(&c.inner));
            let cmd = cmd.clone();
            async move {
                match inner {
                    Some(inner) => query(inner, cmd, limit).await,
                    None => Err(quorum::no_servers()),
                }
            }
        },
        move |replies| match Tally::of(&votes(replies, quorum::one_vote)).wait() {
            Wait::Grace if all => Wait::More,
            wait => wait,
        },
    )
    .await
}

fn command_deadline(clients: &[Client]) -> Option<Instant> {
    clients
        .first()
        .and_then(|c| c.inner.command_timeout)
        .map(|t| Instant::now() + t)
}

fn runtime() -> Result<Handle> {
    Handle::try_current().map_err(|e| {
        Error::Redis(RedisError::from((
            redis::ErrorKind::ClientError,
            "dlock_client::aio needs a tokio runtime",
            e.to_string(),
        )))
    })
}

/// An exclusive lock held on a majority of N independent servers whose token a resource can
/// trust; see [`crate::QuorumLock`]. No `guard`: the resource checks the token itself.
#[derive(Clone)]
pub struct QuorumLock {
    clients: Vec<Client>,
    spec: Spec,
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
    pub async fn acquire(&self, wait: Option<Duration>) -> Result<QuorumLease> {
        let until = wait.map(|w| Instant::now() + w);
        loop {
            if let Some(lease) = self.attempt().await? {
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
            tokio::time::sleep(pause).await;
        }
    }

    /// One attempt: `None` when no majority granted and fenced in time (RELEASE was then sent
    /// to every server); the errors of [`acquire`](QuorumLock::acquire) after the same RELEASE.
    pub async fn try_acquire(&self) -> Result<Option<QuorumLease>> {
        self.attempt().await
    }

    async fn attempt(&self) -> Result<Option<QuorumLease>> {
        if self.clients.is_empty() {
            return Err(quorum::no_servers());
        }
        let runtime = runtime()?;
        // A fresh owner for each attempt, unless one is given: two leases of one lock object
        // (or its clones) never re-enter each other's holds, and a late RELEASE of a failed
        // attempt cannot end a hold of the next one.
        let owner = self.spec.owner.clone().unwrap_or_else(quorum::random_owner);
        let mut spec = self.spec.clone();
        spec.owner = Some(owner.clone());
        let ttl = self.spec.ttl();
        let sent = Instant::now();
        let deadline = state::deadline_after(sent, ttl);
        let limit = budget(deadline);
        let unknown: Vec<bool> = lock(&self.node_ids).iter().map(Option::is_none).collect();
        let cmd = spec.acquire_cmd(None);
        let mut replies = fan_out(
            &runtime,
            self.clients.len(),
            Some(deadline),
            |i| {
                let inner = self.clients.get(i).map(|c| Arc::clone(&c.inner));
                let read_id = unknown.get(i).copied().unwrap_or(false);
                let cmd = cmd.clone();
                let spec = spec.clone();
                async move {
                    let Some(inner) = inner else {
                        return Granted {
                            node_id: None,
                            reply: Err(quorum::no_servers()),
                        };
                    };
                    let node_id = if read_id {
                        match query(Arc::clone(&inner), quorum::info_cmd(), Some(limit)).await {
                            Ok(info) => quorum::parse_node_id(&info),
                            Err(e) => {
                                return Granted {
                                    node_id: None,
                                    reply: Err(e),
                                };
                            }
                        }
                    } else {
                        None
                    };
                    let reply = query(inner, cmd, Some(limit))
                        .await
                        .and_then(|r| Ok(spec.parse_grant(r)?.map(|(token, _)| token)));
                    Granted { node_id, reply }
                }
            },
            |replies| Tally::of(&quorum::acquire_votes(replies)).wait(),
        )
        .await;
        let checked = quorum::learn_node_ids(&mut lock(&self.node_ids), &replies);
        if let Err(e) = checked {
            self.release_all(&runtime, &owner).await;
            return Err(e);
        }
        if let Some(e) = quorum::config_error(&mut replies) {
            self.release_all(&runtime, &owner).await;
            return Err(e);
        }
        let grants = quorum::grants(&replies);
        if let Err(e) = quorum::check_grant_nodes(self.clients.len(), &grants) {
            self.release_all(&runtime, &owner).await;
            return Err(e);
        }
        let target = grants.iter().map(|(_, t)| *t).max().unwrap_or(0);
        if grants.len() < quorum::majority(self.clients.len()) || Instant::now() >= deadline {
            self.release_all(&runtime, &owner).await;
            return Ok(None);
        }
        let fenced = match self
            .fence(&runtime, &grants, &owner, target, deadline)
            .await
        {
            Ok(fenced) => fenced,
            Err(e) => {
                self.release_all(&runtime, &owner).await;
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
                QuorumLink::Async(targets),
                self.spec.keepalive(),
            );
            if let Some(first) = self.clients.first() {
                first.inner.register(&state, &runtime);
            }
            return Ok(Some(QuorumLease {
                clients: self.clients.clone(),
                state,
                runtime,
            }));
        }
        self.release_all(&runtime, &owner).await;
        Ok(None)
    }

    /// FENCE `target` on the servers that granted: whether a majority of all servers replied
    /// a token ≥ `target` before `deadline`; the first error a server answered (a FENCE
    /// refused as leading its clock too far) instead, as retrying would meet it again.
    async fn fence(
        &self,
        runtime: &Handle,
        grants: &[(usize, i64)],
        owner: &str,
        target: i64,
        deadline: Instant,
    ) -> Result<bool> {
        let inners: Vec<Arc<Inner>> = grants
            .iter()
            .filter_map(|(i, _)| self.clients.get(*i).map(|c| Arc::clone(&c.inner)))
            .collect();
        let cmd = quorum::fence_cmd(&self.spec.key, owner, target);
        let limit = budget(deadline);
        let need = quorum::majority(self.clients.len());
        let mut replies = fan_out(
            runtime,
            inners.len(),
            Some(deadline),
            |i| {
                let inner = inners.get(i).cloned();
                let cmd = cmd.clone();
                async move {
                    match inner {
                        Some(inner) => query(inner, cmd, Some(limit)).await,
                        None => Err(quorum::no_servers()),
                    }
                }
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
        )
        .await;
        if let Some(e) = quorum::server_error(&mut replies) {
            return Err(e);
        }
        Ok(Tally::of(&votes(&replies, |r| quorum::fence_vote(r, target))).yes >= need)
    }

    /// RELEASE on every server after a failed attempt (a grant may still be on its way).
    async fn release_all(&self, runtime: &Handle, owner: &str) {
        let until = Instant::now() + self.spec.ttl().min(Duration::from_secs(1));
        let until = command_deadline(&self.clients).map_or(until, |c| c.min(until));
        round_of_ones(
            runtime,
            &self.clients,
            spec::release_cmd(&self.spec.key, owner),
            Some(until),
            true,
        )
        .await;
    }
}

/// Renew a quorum lease from the keepalive task: EXTEND on every server at once, each on its
/// own kept connection and bounded by `io_deadline`. A majority of 1s moves the deadline; so
/// many 0s that no majority can be marks the lease lost; anything else is retried.
pub(super) async fn renew(lease: &LeaseState, targets: &[Arc<Target>], io_deadline: Instant) {
    let Ok(runtime) = Handle::try_current() else {
        return lease.retry_at(Instant::now() + RETRY);
    };
    let ttl = lease.ttl();
    let sent = Instant::now();
    let cmd = spec::extend_cmd(&lease.key, &lease.owner, ttl);
    let replies = fan_out(
        &runtime,
        targets.len(),
        Some(io_deadline),
        |i| {
            let target = targets.get(i).cloned();
            let cmd = cmd.clone();
            async move {
                match target {
                    Some(t) => t.extend(&cmd, io_deadline).await,
                    None => Vote::Failed,
                }
            }
        },
        |replies: &[Option<Vote>]| Tally::of(replies).wait(),
    )
    .await;
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
    async fn extend(&self, cmd: &redis::Cmd, io_deadline: Instant) -> Vote {
        let conn = lock(&self.conn).take();
        let mut c = match conn {
            Some(c) => c,
            None => match keepalive_connection(&self.redis, io_deadline).await {
                Ok(c) => c,
                Err(_) => return Vote::Failed,
            },
        };
        match within(Some(budget(io_deadline)), cmd.query_async::<i64>(&mut c)).await {
            Ok(n) => {
                *lock(&self.conn) = Some(c);
                if n == 1 { Vote::Yes } else { Vote::No }
            }
            Err(e) => {
                if !super::broken(&e) {
                    *lock(&self.conn) = Some(c);
                }
                Vote::Failed
            }
        }
    }
}

/// A quorum lock's lease (see [`crate::QuorumLease`]): no `guard`; dropping it spawns its
/// release on every server.
pub struct QuorumLease {
    clients: Vec<Client>,
    state: Arc<LeaseState>,
    runtime: Handle,
}

impl QuorumLease {
    lease_view!();

    /// EXTEND on every server (see [`crate::QuorumLease::extend`]).
    pub async fn extend(&self, ttl: Option<Duration>) -> Result<()> {
        self.check()?;
        if self.state.is_released() {
            return Err(Error::NotHeld {
                key: self.state.key.clone(),
            });
        }
        let ttl = ttl.unwrap_or_else(|| self.state.ttl());
        let sent = Instant::now();
        let replies = round_of_ones(
            &self.runtime,
            &self.clients,
            spec::extend_cmd(&self.state.key, &self.state.owner, ttl),
            command_deadline(&self.clients),
            false,
        )
        .await;
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

    /// Release: stops the keepalive, then RELEASE on every server (see
    /// [`crate::QuorumLease::release`]).
    pub async fn release(&self) -> Result<bool> {
        release(&self.runtime, &self.clients, &self.state).await
    }

    /// As [`release`](QuorumLease::release), but [`Error::NotHeld`] when no majority still had
    /// the lease.
    pub async fn release_strict(&self) -> Result<()> {
        if self.release().await? {
            Ok(())
        } else {
            Err(Error::NotHeld {
                key: self.state.key.clone(),
            })
        }
    }
}

async fn release(runtime: &Handle, clients: &[Client], state: &Arc<LeaseState>) -> Result<bool> {
    if !state.begin_release() {
        return Ok(state.release_result().unwrap_or(false));
    }
    if let Some(first) = clients.first() {
        first.inner.unregister(state);
    }
    while state.is_busy() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Once a majority answered, the rest get a grace period, not the command timeout: a
    // frozen server's RELEASE still goes out (its task carries on), but is not waited for.
    let replies = round_of_ones(
        runtime,
        clients,
        spec::release_cmd(&state.key, &state.owner),
        command_deadline(clients),
        false,
    )
    .await;
    let tally = Tally::of(&votes(&replies, quorum::one_vote));
    let held = if tally.majority() {
        Ok(true)
    } else if tally.yes + tally.failed + tally.pending >= quorum::majority(replies.len()) {
        Err(quorum::undecided(replies))
    } else {
        Ok(false)
    };
    state.finish_release(*held.as_ref().unwrap_or(&false));
    held
}

impl Drop for QuorumLease {
    fn drop(&mut self) {
        if self.state.is_released() {
            return;
        }
        let clients = self.clients.clone();
        let state = Arc::clone(&self.state);
        let runtime = self.runtime.clone();
        self.runtime.spawn(async move {
            let _ = release(&runtime, &clients, &state).await;
        });
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
