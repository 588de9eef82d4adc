//! The blocking client: [`Client`], the lock objects and [`Lease`], a guard that releases on
//! drop. One keepalive thread per [`Client`] serves all its leases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Connection, ConnectionLike, FromRedisValue, ToRedisArgs, Value};

pub(crate) mod quorum;

pub use quorum::{QuorumLease, QuorumLock};

use crate::error::{Error, Result, is_fence_refusal};
use crate::spec::{self, Mode, Spec};
use crate::state::{
    self, IoBound, LeaseState, QuorumLink, RETRY, Registry, SessionConn, Work, lock,
};

/// The name the keepalive connection gives itself (`CLIENT SETNAME`), to find it in
/// `CLIENT LIST`.
pub const KEEPALIVE_CONNECTION_NAME: &str = "dlock-keepalive";

/// The default read timeout of commands that do not wait (ACQUIRE without WAIT, RELEASE,
/// EXTEND, GUARD).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_IDLE_CONNECTIONS: usize = 4;

/// Where connections come from: one server, a Redis Cluster, or the master that Sentinel
/// names when the connection is made.
#[derive(Clone)]
pub(crate) enum Backend {
    Single(redis::Client),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterClient),
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<Mutex<redis::sentinel::SentinelClient>>),
}

/// A blocking connection of either kind.
pub(crate) enum Conn {
    Single(Connection),
    #[cfg(feature = "cluster")]
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Backend {
    fn connect(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Backend::Single(c) => c.get_connection_with_timeout(timeout).map(Conn::Single),
            #[cfg(feature = "cluster")]
            Backend::Cluster(c) => c
                .get_connection_with_config(
                    redis::cluster::ClusterConfig::new().set_connection_timeout(timeout),
                )
                .map(|c| Conn::Cluster(Box::new(c))),
            // Asked anew for every connection, so that new ones follow a failover.
            #[cfg(feature = "sentinel")]
            Backend::Sentinel(s) => {
                let master = lock(s).get_client()?;
                master
                    .get_connection_with_timeout(timeout)
                    .map(Conn::Single)
            }
        }
    }
}

impl Conn {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.set_read_timeout(timeout),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.set_read_timeout(timeout),
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.set_write_timeout(timeout),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.set_write_timeout(timeout),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Conn::Single(c) => c.is_open(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.is_open(),
        }
    }

    fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(c) => c,
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.as_mut(),
        }
    }
}

/// A handle on one Redis server (or Sentinel-discovered master), or on a Redis Cluster, for
/// locks: it keeps a few idle connections for commands and runs the background threads of all
/// leases taken through it. Cloning is cheap and shares everything.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    redis: Backend,
    command_timeout: Option<Duration>,
    idle: Mutex<Vec<Conn>>,
    keepalive: Arc<Keepalive>,
}

/// The background threads' shared state: the leases, and a condition to wake them.
///
/// Two threads serve all the leases of a client: the keepalive thread renews them (and may
/// sit in a socket read, whose timeout the kernel keeps only roughly), and the deadline
/// thread, which does no I/O, marks them lost at their deadline whatever the other is doing.
struct Keepalive {
    registry: Mutex<Registry>,
    wake: Condvar,
    threads: Mutex<Threads>,
    /// The client is gone: the threads end without lingering.
    closing: AtomicBool,
}

/// How long the background threads wait for a new lease once the last one is gone before they
/// end: a program that takes one lease after another does not start and join two threads
/// for each (which cost more than its ACQUIRE and RELEASE).
const LINGER: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Threads {
    keepalive: Option<JoinHandle<()>>,
    deadline: Option<JoinHandle<()>>,
}

impl Client {
    /// A handle on the server `redis` connects to, with [`DEFAULT_COMMAND_TIMEOUT`].
    pub fn new(redis: redis::Client) -> Client {
        Client::with_command_timeout(redis, Some(DEFAULT_COMMAND_TIMEOUT))
    }

    /// A handle on `url` (`redis://host:port/db`).
    pub fn open(url: &str) -> Result<Client> {
        Ok(Client::new(redis::Client::open(url)?))
    }

    /// A handle on a Redis Cluster: each command goes to the node serving its key (see the
    /// README on hash tags for `guard`).
    #[cfg(feature = "cluster")]
    pub fn cluster(cluster: redis::cluster::ClusterClient) -> Client {
        Client::from_backend(Backend::Cluster(cluster), Some(DEFAULT_COMMAND_TIMEOUT))
    }

    /// A handle on the master that `sentinel` (built with [`SentinelServerType::Master`])
    /// names: every new connection asks the sentinels for the current master, so after a
    /// failover new commands, waits and the keepalive's reconnections go to the new one.
    ///
    /// [`SentinelServerType::Master`]: redis::sentinel::SentinelServerType::Master
    #[cfg(feature = "sentinel")]
    pub fn sentinel(sentinel: redis::sentinel::SentinelClient) -> Client {
        Client::from_backend(
            Backend::Sentinel(Arc::new(Mutex::new(sentinel))),
            Some(DEFAULT_COMMAND_TIMEOUT),
        )
    }

    /// A handle whose non-waiting commands give up after `timeout` (`None`: never).
    pub fn with_command_timeout(redis: redis::Client, timeout: Option<Duration>) -> Client {
        Client::from_backend(Backend::Single(redis), timeout)
    }

    fn from_backend(redis: Backend, timeout: Option<Duration>) -> Client {
        Client {
            inner: Arc::new(ClientInner {
                redis,
                command_timeout: timeout,
                idle: Mutex::new(Vec::new()),
                keepalive: Arc::new(Keepalive {
                    registry: Mutex::new(Registry::default()),
                    wake: Condvar::new(),
                    threads: Mutex::new(Threads::default()),
                    closing: AtomicBool::new(false),
                }),
            }),
        }
    }

    /// An exclusive lock on `key`.
    pub fn lock(&self, key: &str) -> Lock {
        Lock::new(self, key)
    }

    /// Whether the background threads run now (they end by themselves when no lease is
    /// left).
    pub fn keepalive_running(&self) -> bool {
        let registry = lock(&self.inner.keepalive.registry);
        registry.running || registry.watching
    }
}

impl ClientInner {
    fn connection(&self, read_timeout: Option<Duration>) -> Result<Conn> {
        let idle = lock(&self.idle).pop();
        let c = match idle {
            Some(c) if c.is_open() => c,
            _ => self.redis.connect(CONNECT_TIMEOUT)?,
        };
        c.set_read_timeout(read_timeout)?;
        c.set_write_timeout(self.command_timeout)?;
        Ok(c)
    }

    /// Run `cmd` on an idle connection (read timeout `read_timeout`), which goes back to the
    /// idle list unless it failed below the protocol (a timed-out reply may still arrive).
    fn query(&self, cmd: &redis::Cmd, read_timeout: Option<Duration>) -> Result<Value> {
        let mut c = self.connection(read_timeout)?;
        let reply = cmd.query::<Value>(c.like());
        match &reply {
            Err(e) if e.is_io_error() || e.is_unrecoverable_error() => {}
            _ => {
                let mut idle = lock(&self.idle);
                if idle.len() < MAX_IDLE_CONNECTIONS {
                    idle.push(c);
                }
            }
        }
        Ok(reply?)
    }

    fn register(&self, lease: &Arc<LeaseState>) {
        let ka = &self.keepalive;
        let mut registry = lock(&ka.registry);
        registry.add(Arc::clone(lease));
        let start_keepalive = !registry.running;
        let start_deadline = !registry.watching;
        registry.running = true;
        registry.watching = true;
        drop(registry);
        ka.wake.notify_all();
        if !(start_keepalive || start_deadline) {
            return;
        }
        let mut threads = lock(&ka.threads);
        if start_keepalive {
            // The previous thread marked itself stopped and is returning: join it first.
            if let Some(old) = threads.keepalive.take() {
                let _ = old.join();
            }
            let shared = Arc::clone(ka);
            let redis = self.redis.clone();
            threads.keepalive = spawn("dlock-keepalive", move || keepalive_loop(&shared, &redis));
            if threads.keepalive.is_none() {
                // No thread: the lease still ends at its deadline, it is just not renewed.
                lock(&ka.registry).running = false;
            }
        }
        if start_deadline {
            if let Some(old) = threads.deadline.take() {
                let _ = old.join();
            }
            let shared = Arc::clone(ka);
            threads.deadline = spawn("dlock-deadline", move || deadline_loop(&shared));
            if threads.deadline.is_none() {
                // is_lost and wait_lost still see the deadline; only the push signals wait
                // for the keepalive thread.
                lock(&ka.registry).watching = false;
            }
        }
    }

    fn unregister(&self, lease: &Arc<LeaseState>) {
        lock(&self.keepalive.registry).remove(lease);
        self.keepalive.wake.notify_all();
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        // Every lease holds the client, so none is left: the threads end now; join them.
        self.keepalive.closing.store(true, Ordering::Relaxed);
        self.keepalive.wake.notify_all();
        let threads = std::mem::take(&mut *lock(&self.keepalive.threads));
        let me = std::thread::current().id();
        for handle in [threads.keepalive, threads.deadline].into_iter().flatten() {
            // The last handle may be dropped by a callback on one of these threads, which is
            // returning anyway: it cannot join itself.
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f).ok()
}

/// Wait up to `LINGER` for a new lease (or the client's end).
fn linger<'a>(ka: &'a Keepalive, registry: MutexGuard<'a, Registry>) -> MutexGuard<'a, Registry> {
    ka.wake
        .wait_timeout(registry, LINGER)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}

/// The deadline thread: sleeps until the next lease's lost signal is due, marks it lost, and
/// returns when no lease is left (after `LINGER`). It does no I/O, so a frozen server cannot
/// delay it.
fn deadline_loop(ka: &Keepalive) {
    let mut registry = lock(&ka.registry);
    let mut lingered = false;
    loop {
        if registry.leases.is_empty() {
            if lingered || ka.closing.load(Ordering::Relaxed) {
                registry.watching = false;
                return;
            }
            lingered = true;
            registry = linger(ka, registry);
            continue;
        }
        lingered = false;
        let (lost, next) = registry.overdue(Instant::now());
        if !lost.is_empty() {
            drop(registry);
            lost.iter().for_each(|l| l.mark_lost());
            registry = lock(&ka.registry);
            continue;
        }
        let wait = next.map_or(Duration::from_secs(3600), |n| {
            n.saturating_duration_since(Instant::now())
        });
        registry = ka
            .wake
            .wait_timeout(registry, wait)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// The keepalive thread: renews due leases on its own connection, marks lost the ones whose
/// deadline comes, sleeps in between, and returns when it has no lease left (after `LINGER`).
fn keepalive_loop(ka: &Keepalive, redis: &Backend) {
    let mut conn: Option<Conn> = None;
    let mut lingered = false;
    loop {
        let work = {
            let mut registry = lock(&ka.registry);
            loop {
                match registry.plan(Instant::now(), IoBound::UntilLost) {
                    Work::Exit if !lingered && !ka.closing.load(Ordering::Relaxed) => {
                        lingered = true;
                        registry = linger(ka, registry);
                    }
                    Work::Idle(wake) => {
                        lingered = false;
                        registry = match wake {
                            Some(at) => {
                                let wait = at.saturating_duration_since(Instant::now());
                                ka.wake
                                    .wait_timeout(registry, wait)
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .0
                            }
                            None => ka
                                .wake
                                .wait(registry)
                                .unwrap_or_else(PoisonError::into_inner),
                        };
                    }
                    Work::Exit => {
                        registry.running = false;
                        return;
                    }
                    work => {
                        lingered = false;
                        break work;
                    }
                }
            }
        };
        match work {
            Work::Lost(leases) => leases.iter().for_each(|l| l.mark_lost()),
            Work::Renew { lease, io_deadline } => {
                if lease.session {
                    renew_session(&lease, io_deadline);
                } else if let QuorumLink::Sync(targets) = &lease.quorum {
                    quorum::renew(&lease, targets, io_deadline);
                } else {
                    renew(&lease, io_deadline, redis, &mut conn);
                }
                lease.set_busy(false);
            }
            Work::Idle(_) | Work::Exit => {}
        }
    }
}

/// The time left before `deadline`, or a timeout error when none is (a zero socket timeout
/// would mean no timeout at all).
fn budget(deadline: Instant) -> redis::RedisResult<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(1) {
        return Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no time left before the lease's deadline",
        )));
    }
    Ok(left)
}

fn keepalive_connection(redis: &Backend, io_deadline: Instant) -> redis::RedisResult<Conn> {
    let mut c = redis.connect(budget(io_deadline)?)?;
    set_timeouts(&c, io_deadline)?;
    // Named so it can be told apart in CLIENT LIST (on a cluster, on the node it lands on).
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(KEEPALIVE_CONNECTION_NAME)
        .query::<()>(c.like())?;
    Ok(c)
}

fn set_timeouts(c: &Conn, io_deadline: Instant) -> redis::RedisResult<()> {
    let left = budget(io_deadline)?;
    c.set_read_timeout(Some(left))?;
    c.set_write_timeout(Some(left))
}

/// One EXTEND on the keepalive connection, every read bounded by `io_deadline`, so that a
/// frozen server cannot hold the thread past the moment some lease must be marked lost.
fn renew(lease: &LeaseState, io_deadline: Instant, redis: &Backend, conn: &mut Option<Conn>) {
    let Some(mut c) = conn
        .take()
        .or_else(|| keepalive_connection(redis, io_deadline).ok())
    else {
        return lease.retry_at(Instant::now() + RETRY);
    };
    let ttl = lease.ttl();
    let sent = Instant::now();
    let reply = set_timeouts(&c, io_deadline)
        .and_then(|()| spec::extend_cmd(&lease.key, &lease.owner, ttl).query::<i64>(c.like()));
    match reply {
        Ok(1) => {
            *conn = Some(c);
            lease.extended(sent, ttl);
        }
        Ok(_) => {
            *conn = Some(c);
            lease.lose_when_idle();
        }
        // Below the protocol, or a timeout: drop the connection and reconnect at once.
        Err(e) if e.is_io_error() || e.is_unrecoverable_error() => lease.retry_at(Instant::now()),
        // A server error (LOADING, READONLY during a failover, ...): retry shortly.
        Err(_) => {
            *conn = Some(c);
            lease.retry_at(Instant::now() + RETRY);
        }
    }
}

/// Renew or check a session lease on its own connection: losing that connection means the
/// server released the lease, so any error below the protocol marks it lost at once.
fn renew_session(lease: &LeaseState, io_deadline: Instant) {
    let SessionConn::Sync(slot) = &lease.conn else {
        return lease.lose_when_idle();
    };
    let mut slot = lock(slot);
    let Some(c) = slot.as_mut() else {
        drop(slot);
        return lease.lose_when_idle();
    };
    let ttl = lease.ttl();
    let sent = Instant::now();
    let reply = set_timeouts(c, io_deadline).and_then(|()| {
        if lease.keepalive {
            spec::extend_cmd(&lease.key, &lease.owner, ttl).query::<i64>(c.like())
        } else {
            redis::cmd("PING").query::<String>(c.like()).map(|_| 1)
        }
    });
    match reply {
        Ok(1) if lease.keepalive => lease.extended(sent, ttl),
        Ok(1) => lease.checked(sent),
        Ok(_) => {
            drop(slot);
            lease.lose_when_idle();
        }
        Err(e) if e.is_io_error() || e.is_unrecoverable_error() => {
            *slot = None;
            drop(slot);
            lease.lose_when_idle();
        }
        Err(_) => lease.retry_at(Instant::now() + RETRY),
    }
}

/// An exclusive lock (or, from [`ReadWriteLock`], a shared or exclusive view of one).
///
/// Settings follow Redisson's rule: without [`ttl`](Lock::ttl) a lease lasts 30 s and is kept
/// alive in the background; with one it lasts exactly that long unless
/// [`keepalive(true)`](Lock::keepalive) is set.
#[derive(Clone)]
pub struct Lock {
    client: Client,
    spec: Spec,
}

impl Lock {
    /// An exclusive lock on `key`, with the defaults (30 s lease, kept alive, server-generated
    /// owner, no session).
    pub fn new(client: &Client, key: &str) -> Lock {
        Lock {
            client: client.clone(),
            spec: Spec::new(key, Mode::Exclusive),
        }
    }

    /// Leases of exactly `ttl`, not renewed unless [`keepalive(true)`](Lock::keepalive).
    pub fn ttl(mut self, ttl: Duration) -> Lock {
        self.spec.ttl = Some(ttl);
        self
    }

    /// Take the lock as `owner` instead of a server-generated id.
    pub fn owner(mut self, owner: &str) -> Lock {
        self.spec.owner = Some(owner.to_string());
        self
    }

    /// Tie each lease to a dedicated connection it owns (`SESSION`): the server releases it
    /// when that connection is lost, and the lease is then marked lost.
    pub fn session(mut self, session: bool) -> Lock {
        self.spec.session = session;
        self
    }

    /// Renew leases in the background (the default exactly when no ttl is given).
    pub fn keepalive(mut self, keepalive: bool) -> Lock {
        self.spec.keepalive = Some(keepalive);
        self
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.spec.key
    }

    /// Wait in the server's queue for the lock: `None` waits forever, `Some(d)` up to `d`
    /// ([`Error::NotAcquired`] when the wait ends without a grant). A grant that came after
    /// waiting is restarted with an EXTEND, and its deadline counts from that (also
    /// `NotAcquired` should the server no longer have it by then).
    pub fn acquire(&self, wait: Option<Duration>) -> Result<Lease> {
        match self.request(Some(wait))? {
            Some(lease) => Ok(lease),
            None => Err(Error::NotAcquired {
                key: self.spec.key.clone(),
            }),
        }
    }

    /// Take the lock if it is free now; `None` when it is not.
    pub fn try_acquire(&self) -> Result<Option<Lease>> {
        self.request(None)
    }

    fn request(&self, wait: Option<Option<Duration>>) -> Result<Option<Lease>> {
        let client = &self.client.inner;
        let cmd = self.spec.acquire_cmd(wait);
        let read_timeout = Spec::read_timeout(wait, client.command_timeout);
        let ttl = self.spec.ttl();
        let (sent, reply, mut session) = if self.spec.session {
            // A session lease lives on a connection of its own, kept for its lifetime.
            let mut c = client.redis.connect(CONNECT_TIMEOUT)?;
            c.set_read_timeout(read_timeout)?;
            let sent = Instant::now();
            let reply = cmd.query::<Value>(c.like())?;
            c.set_read_timeout(client.command_timeout)?;
            (sent, reply, Some(c))
        } else {
            let sent = Instant::now();
            (sent, client.query(&cmd, read_timeout)?, None)
        };
        let Some((token, owner)) = self.spec.parse_grant(reply)? else {
            return Ok(None);
        };
        let mut sent = sent;
        if state::granted_late(sent, ttl) {
            // Granted after waiting, at an unknown moment since `sent`: restart the lease with
            // an EXTEND, so that its deadline counts from a known send time.
            let extend = spec::extend_cmd(&self.spec.key, &owner, ttl);
            sent = Instant::now();
            let reply = match session.as_mut() {
                Some(c) => extend.query::<Value>(c.like()).map_err(Error::from),
                None => client.query(&extend, client.command_timeout),
            }?;
            if reply != Value::Int(1) {
                // The hold ended before the EXTEND came: nothing was acquired.
                return Ok(None);
            }
        }
        let state = LeaseState::new(
            self.spec.key.clone(),
            owner,
            token,
            ttl,
            sent,
            session.map_or(SessionConn::None, |c| {
                SessionConn::Sync(Mutex::new(Some(c)))
            }),
            QuorumLink::None,
            self.spec.keepalive(),
        );
        client.register(&state);
        Ok(Some(Lease {
            client: self.client.clone(),
            state,
        }))
    }
}

/// A read-write lock: [`read`](ReadWriteLock::read) gives the shared view, [`write`](ReadWriteLock::write)
/// the exclusive one, on the same key.
#[derive(Clone)]
pub struct ReadWriteLock {
    base: Lock,
}

impl ReadWriteLock {
    /// A read-write lock on `key`, with the defaults of [`Lock::new`].
    pub fn new(client: &Client, key: &str) -> ReadWriteLock {
        ReadWriteLock {
            base: Lock::new(client, key),
        }
    }

    /// Apply lock settings (ttl, owner, session, keepalive) to both views.
    pub fn configure(mut self, settings: impl FnOnce(Lock) -> Lock) -> ReadWriteLock {
        self.base = settings(self.base);
        self
    }

    /// The shared (read) view: `SHARED` holds.
    pub fn read(&self) -> Lock {
        let mut lock = self.base.clone();
        lock.spec.mode = Mode::Shared;
        lock
    }

    /// The exclusive (write) view.
    pub fn write(&self) -> Lock {
        let mut lock = self.base.clone();
        lock.spec.mode = Mode::Exclusive;
        lock
    }
}

/// A counting semaphore of `limit` permits; each lease takes [`permits`](Semaphore::permits)
/// of them (default 1).
#[derive(Clone)]
pub struct Semaphore {
    lock: Lock,
}

impl Semaphore {
    /// A semaphore on `key` with `limit` permits in all.
    pub fn new(client: &Client, key: &str, limit: u64) -> Semaphore {
        let mut lock = Lock::new(client, key);
        lock.spec.mode = Mode::Semaphore { limit, permits: 1 };
        Semaphore { lock }
    }

    /// Take `n` permits per lease.
    pub fn permits(mut self, n: u64) -> Semaphore {
        if let Mode::Semaphore { permits, .. } = &mut self.lock.spec.mode {
            *permits = n;
        }
        self
    }

    /// Apply lock settings (ttl, owner, session, keepalive).
    pub fn configure(mut self, settings: impl FnOnce(Lock) -> Lock) -> Semaphore {
        self.lock = settings(self.lock);
        self
    }

    /// As [`Lock::acquire`].
    pub fn acquire(&self, wait: Option<Duration>) -> Result<Lease> {
        self.lock.acquire(wait)
    }

    /// As [`Lock::try_acquire`].
    pub fn try_acquire(&self) -> Result<Option<Lease>> {
        self.lock.try_acquire()
    }
}

/// A held lease: the fencing token, the owner, the local validity deadline, and the lost
/// signal. Dropping it releases it (errors ignored: a lease the server cannot be told about
/// ends at its ttl).
pub struct Lease {
    client: Client,
    state: Arc<LeaseState>,
}

impl Lease {
    lease_view!();

    /// Block until the lease is lost (true) or it is released or `timeout` passes (false);
    /// `None` waits without limit. Returns at the deadline by itself.
    pub fn wait_lost(&self, timeout: Option<Duration>) -> bool {
        self.state.wait_lost(timeout)
    }

    /// Renew the lease for `ttl` (or its current ttl); when the server no longer has it the
    /// lease is marked lost and [`Error::LockLost`] returned.
    pub fn extend(&self, ttl: Option<Duration>) -> Result<()> {
        self.check()?;
        if self.state.is_released() {
            return Err(Error::NotHeld {
                key: self.state.key.clone(),
            });
        }
        let ttl = ttl.unwrap_or_else(|| self.state.ttl());
        let cmd = spec::extend_cmd(&self.state.key, &self.state.owner, ttl);
        let sent = Instant::now();
        let reply = self
            .client
            .inner
            .query(&cmd, self.client.inner.command_timeout)?;
        if i64::from_redis_value(&reply)? == 1 {
            self.state.extended(sent, ttl);
            Ok(())
        } else {
            self.state.mark_lost();
            Err(self.lost_error().into())
        }
    }

    /// Release the lease: stops its keepalive first (no EXTEND can follow), then RELEASE.
    /// Returns whether the server still had it. A second call does nothing and returns the
    /// first call's answer.
    pub fn release(&self) -> Result<bool> {
        if !self.state.begin_release() {
            return Ok(self.state.release_result().unwrap_or(false));
        }
        self.client.inner.unregister(&self.state);
        self.state.wait_idle();
        let held = self.send_release();
        self.state.finish_release(*held.as_ref().unwrap_or(&false));
        held
    }

    /// As [`release`](Lease::release), but [`Error::NotHeld`] when the server no longer had
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

    fn send_release(&self) -> Result<bool> {
        let cmd = spec::release_cmd(&self.state.key, &self.state.owner);
        if self.state.session {
            // RELEASE on the session connection, then close it.
            let SessionConn::Sync(slot) = &self.state.conn else {
                return Ok(false);
            };
            let conn = lock(slot).take();
            let Some(mut c) = conn else {
                return Ok(false);
            };
            return Ok(cmd.query::<i64>(c.like())? == 1);
        }
        let reply = self
            .client
            .inner
            .query(&cmd, self.client.inner.command_timeout)?;
        Ok(i64::from_redis_value(&reply)? == 1)
    }

    /// Run `command` through `DLOCK.GUARD key token command...`: refused locally (without
    /// sending) when the lease is lost or expired, and a server refusal marks it lost; both
    /// give [`Error::LockLost`].
    pub fn guard<T: FromRedisValue>(&self, command: impl ToRedisArgs) -> Result<T> {
        if !self.state.valid() {
            return Err(self.lost_error().into());
        }
        let cmd = spec::guard_cmd(&self.state.key, self.state.token, command);
        match self
            .client
            .inner
            .query(&cmd, self.client.inner.command_timeout)
        {
            Ok(v) => Ok(T::from_redis_value(&v)?),
            Err(Error::Redis(e)) if is_fence_refusal(&e) => {
                self.state.mark_lost();
                Err(self.lost_error().into())
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.state.key)
            .field("owner", &self.state.owner)
            .field("token", &self.state.token)
            .field("lost", &self.state.is_lost())
            .finish()
    }
}
