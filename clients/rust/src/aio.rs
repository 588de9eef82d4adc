//! The tokio client: the same objects as the blocking one, with `async` acquire, extend,
//! release and guard. One keepalive task per [`Client`] serves all its leases.
//!
//! A [`Lease`] dropped without [`release`](Lease::release) spawns its release on the runtime
//! it was acquired on (so it also releases when the task holding it is cancelled). If that
//! release cannot reach the server, the lease simply ends at its ttl; nobody else is harmed,
//! because its fencing token and the lease bound what it can still do.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError, RedisResult, ToRedisArgs, Value};
use redis::{Cmd, Pipeline, RedisFuture};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub(crate) mod quorum;

pub use quorum::{QuorumLease, QuorumLock};

use crate::error::{Error, Result, is_fence_refusal};
use crate::spec::{self, Mode, Spec};
use crate::state::{
    self, IoBound, LeaseState, QuorumLink, RETRY, Registry, SessionConn, Work, lock,
};
use crate::sync::{DEFAULT_COMMAND_TIMEOUT, KEEPALIVE_CONNECTION_NAME};

/// An async connection of either kind (both are cheap to clone: handles on one driver).
#[derive(Clone)]
pub(crate) enum AConn {
    Single(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for AConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AConn::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            AConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "cluster")]
            AConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AConn::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            AConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where connections come from, as the blocking client's `Backend`; the Sentinel client sits
/// behind an async mutex, since a lookup awaits with it.
#[derive(Clone)]
pub(crate) enum Backend {
    Single(redis::Client),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterClient),
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<tokio::sync::Mutex<redis::sentinel::SentinelClient>>),
}

impl Backend {
    async fn connect_async(&self) -> RedisResult<AConn> {
        let config = AsyncConnectionConfig::new().set_connection_timeout(CONNECT_TIMEOUT);
        match self {
            Backend::Single(c) => c
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(AConn::Single),
            #[cfg(feature = "cluster")]
            Backend::Cluster(c) => c.get_async_connection().await.map(AConn::Cluster),
            // Asked anew for every connection, so that new ones follow a failover. The lookup
            // has no timeout of its own (it also connects to the master to check its role):
            // bound it, so a frozen sentinel or master cannot hold the caller.
            #[cfg(feature = "sentinel")]
            Backend::Sentinel(s) => {
                within(Some(CONNECT_TIMEOUT), async {
                    let master = s.lock().await.async_get_client().await?;
                    master
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(AConn::Single)
                })
                .await
            }
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on one Redis server (or Sentinel-discovered master), or on a Redis Cluster, for
/// locks, for tokio: it keeps one multiplexed connection for commands and runs the keepalive task of all leases
/// taken through it. Cloning is cheap and shares everything.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Backend,
    command_timeout: Option<Duration>,
    conn: tokio::sync::Mutex<Option<AConn>>,
    keepalive: Arc<Keepalive>,
}

struct Keepalive {
    registry: Mutex<Registry>,
    wake: Notify,
    task: Mutex<Option<JoinHandle<()>>>,
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no reply in time",
    ))
}

/// `fut`, given up with a timeout error after `limit` (`None`: no limit).
async fn within<T>(
    limit: Option<Duration>,
    fut: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    match limit {
        None => fut.await,
        Some(limit) => tokio::time::timeout(limit, fut)
            .await
            .unwrap_or_else(|_| Err(timed_out())),
    }
}

fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_unrecoverable_error()
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

    /// A handle on a Redis Cluster: each command goes to the node serving its key.
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
            Backend::Sentinel(Arc::new(tokio::sync::Mutex::new(sentinel))),
            Some(DEFAULT_COMMAND_TIMEOUT),
        )
    }

    /// A handle whose non-waiting commands give up after `timeout` (`None`: never).
    pub fn with_command_timeout(redis: redis::Client, timeout: Option<Duration>) -> Client {
        Client::from_backend(Backend::Single(redis), timeout)
    }

    fn from_backend(redis: Backend, timeout: Option<Duration>) -> Client {
        Client {
            inner: Arc::new(Inner {
                redis,
                command_timeout: timeout,
                conn: tokio::sync::Mutex::new(None),
                keepalive: Arc::new(Keepalive {
                    registry: Mutex::new(Registry::default()),
                    wake: Notify::new(),
                    task: Mutex::new(None),
                }),
            }),
        }
    }

    /// An exclusive lock on `key`.
    pub fn lock(&self, key: &str) -> Lock {
        Lock::new(self, key)
    }

    /// Whether the keepalive task runs now (it ends by itself when no lease is left).
    pub fn keepalive_running(&self) -> bool {
        lock(&self.inner.keepalive.registry).running
    }

    /// Wait for the keepalive task to end once no lease is left, and close the command
    /// connection.
    pub async fn close(&self) {
        let task = lock(&self.inner.keepalive.task).take();
        if let Some(task) = task {
            self.inner.keepalive.wake.notify_one();
            let _ = task.await;
        }
        *self.inner.conn.lock().await = None;
    }
}

impl Inner {
    async fn connection(&self) -> RedisResult<AConn> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.dedicated().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn dedicated(&self) -> RedisResult<AConn> {
        self.redis.connect_async().await
    }

    async fn query(&self, cmd: &redis::Cmd) -> Result<Value> {
        let mut c = self.connection().await?;
        let reply = within(self.command_timeout, cmd.query_async::<Value>(&mut c)).await;
        if let Err(e) = &reply
            && broken(e)
        {
            *self.conn.lock().await = None;
        }
        Ok(reply?)
    }

    fn register(&self, lease: &Arc<LeaseState>, runtime: &tokio::runtime::Handle) {
        let ka = &self.keepalive;
        let mut registry = lock(&ka.registry);
        registry.add(Arc::clone(lease));
        if registry.running {
            drop(registry);
            ka.wake.notify_one();
            return;
        }
        registry.running = true;
        drop(registry);
        let task = runtime.spawn(keepalive_task(Arc::clone(ka), self.redis.clone()));
        // The previous task marked itself stopped and has returned or is returning.
        *lock(&ka.task) = Some(task);
    }

    fn unregister(&self, lease: &Arc<LeaseState>) {
        lock(&self.keepalive.registry).remove(lease);
        self.keepalive.wake.notify_one();
    }
}

/// The keepalive task: as the blocking client's thread, with every command bounded by the
/// time left before some lease must be marked lost.
async fn keepalive_task(ka: Arc<Keepalive>, redis: Backend) {
    let mut conn: Option<AConn> = None;
    loop {
        let work = {
            let mut registry = lock(&ka.registry);
            match registry.plan(Instant::now(), IoBound::Before(Duration::from_millis(2))) {
                Work::Exit => {
                    registry.running = false;
                    return;
                }
                work => work,
            }
        };
        match work {
            Work::Lost(leases) => leases.iter().for_each(|l| l.mark_lost()),
            Work::Renew { lease, io_deadline } => {
                if lease.session {
                    renew_session(&lease, io_deadline).await;
                } else if let QuorumLink::Async(targets) = &lease.quorum {
                    quorum::renew(&lease, targets, io_deadline).await;
                } else {
                    renew(&lease, io_deadline, &redis, &mut conn).await;
                }
                lease.set_busy(false);
            }
            // A stored permit makes a lease registered meanwhile wake this at once.
            Work::Idle(Some(at)) => {
                tokio::select! {
                    () = ka.wake.notified() => {}
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            Work::Idle(None) => ka.wake.notified().await,
            Work::Exit => return,
        }
    }
}

fn budget(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

async fn keepalive_connection(redis: &Backend, io_deadline: Instant) -> RedisResult<AConn> {
    within(Some(budget(io_deadline)), async {
        let mut c = redis.connect_async().await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(KEEPALIVE_CONNECTION_NAME)
            .query_async::<()>(&mut c)
            .await?;
        Ok(c)
    })
    .await
}

async fn renew(
    lease: &LeaseState,
    io_deadline: Instant,
    redis: &Backend,
    conn: &mut Option<AConn>,
) {
    let mut c = match conn.take() {
        Some(c) => c,
        None => match keepalive_connection(redis, io_deadline).await {
            Ok(c) => c,
            Err(_) => return lease.retry_at(Instant::now() + RETRY),
        },
    };
    let ttl = lease.ttl();
    let sent = Instant::now();
    let cmd = spec::extend_cmd(&lease.key, &lease.owner, ttl);
    match within(Some(budget(io_deadline)), cmd.query_async::<i64>(&mut c)).await {
        Ok(1) => {
            *conn = Some(c);
            lease.extended(sent, ttl);
        }
        Ok(_) => {
            *conn = Some(c);
            lease.lose_when_idle();
        }
        Err(e) if broken(&e) => lease.retry_at(Instant::now()),
        Err(_) => {
            *conn = Some(c);
            lease.retry_at(Instant::now() + RETRY);
        }
    }
}

async fn renew_session(lease: &LeaseState, io_deadline: Instant) {
    let SessionConn::Async(slot) = &lease.conn else {
        return lease.lose_when_idle();
    };
    let conn = lock(slot).clone();
    let Some(mut c) = conn else {
        return lease.lose_when_idle();
    };
    let ttl = lease.ttl();
    let sent = Instant::now();
    let reply = within(Some(budget(io_deadline)), async {
        if lease.keepalive {
            spec::extend_cmd(&lease.key, &lease.owner, ttl)
                .query_async::<i64>(&mut c)
                .await
        } else {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(|_| 1)
        }
    })
    .await;
    match reply {
        Ok(1) if lease.keepalive => lease.extended(sent, ttl),
        Ok(1) => lease.checked(sent),
        Ok(_) => lease.lose_when_idle(),
        Err(e) if broken(&e) => {
            *lock(slot) = None;
            lease.lose_when_idle();
        }
        Err(_) => lease.retry_at(Instant::now() + RETRY),
    }
}

/// Kills the waiting connection of an acquire whose future was dropped (task cancelled), so
/// the server takes it out of the queue instead of granting a lock nobody would hold.
struct CancelWait {
    redis: Backend,
    client_id: Option<i64>,
}

impl Drop for CancelWait {
    fn drop(&mut self) {
        let (Some(id), Ok(rt)) = (self.client_id, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let redis = self.redis.clone();
        rt.spawn(async move {
            if let Ok(mut c) = redis.connect_async().await {
                let _: RedisResult<Value> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .query_async(&mut c)
                    .await;
            }
        });
    }
}

/// Releases a grant from a spawned task when dropped with an owner still set: an acquire
/// future cancelled between the grant and the lease it would have returned.
struct ReleaseOnDrop {
    redis: Backend,
    key: String,
    owner: Option<String>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let (Some(owner), Ok(rt)) = (self.owner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let redis = self.redis.clone();
        let cmd = spec::release_cmd(&self.key, &owner);
        rt.spawn(async move {
            if let Ok(mut c) = redis.connect_async().await {
                let _: RedisResult<Value> = cmd.query_async(&mut c).await;
            }
        });
    }
}

/// An exclusive lock (or, from [`ReadWriteLock`], a shared or exclusive view of one); see
/// [`crate::Lock`] for the settings.
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

    /// Tie each lease to a dedicated connection it owns (`SESSION`).
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

    /// Wait in the server's queue: `None` forever, `Some(d)` up to `d`
    /// ([`Error::NotAcquired`] when the wait ends without a grant). A grant that came after
    /// waiting is restarted with an EXTEND, and its deadline counts from that (also
    /// `NotAcquired` should the server no longer have it by then). Cancelling the future
    /// takes the request out of the server's queue, or releases a grant already made.
    pub async fn acquire(&self, wait: Option<Duration>) -> Result<Lease> {
        match self.request(Some(wait)).await? {
            Some(lease) => Ok(lease),
            None => Err(Error::NotAcquired {
                key: self.spec.key.clone(),
            }),
        }
    }

    /// Take the lock if it is free now; `None` when it is not.
    pub async fn try_acquire(&self) -> Result<Option<Lease>> {
        self.request(None).await
    }

    async fn request(&self, wait: Option<Option<Duration>>) -> Result<Option<Lease>> {
        let client = &self.client.inner;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::Redis(RedisError::from((
                redis::ErrorKind::ClientError,
                "dlock_client::aio needs a tokio runtime",
                e.to_string(),
            )))
        })?;
        let cmd = self.spec.acquire_cmd(wait);
        let limit = Spec::read_timeout(wait, client.command_timeout);
        let ttl = self.spec.ttl();
        let (sent, reply, conn) = if self.spec.session || wait.is_some() {
            // Waiting (and session) requests get a connection of their own: a blocked
            // request must not hold up other commands, and dropping it must leave the queue.
            let mut c = client.dedicated().await?;
            let mut cancel = CancelWait {
                redis: client.redis.clone(),
                client_id: None,
            };
            // CLIENT ID names the one connection it runs on: not usable through a cluster
            // connection, where dropping the connection is what takes the request out.
            if wait.is_some() && matches!(c, AConn::Single(_)) {
                let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut c).await?;
                cancel.client_id = Some(id);
            }
            let sent = Instant::now();
            let reply = within(limit, cmd.query_async::<Value>(&mut c)).await?;
            cancel.client_id = None;
            (sent, reply, Some(c))
        } else {
            let sent = Instant::now();
            (sent, client.query(&cmd).await?, None)
        };
        let Some((token, owner)) = self.spec.parse_grant(reply)? else {
            return Ok(None);
        };
        let (mut sent, mut conn) = (sent, conn);
        if state::granted_late(sent, ttl) {
            // Granted after waiting, at an unknown moment since `sent`: restart the lease with
            // an EXTEND, so that its deadline counts from a known send time.
            let extend = spec::extend_cmd(&self.spec.key, &owner, ttl);
            // Should this future be dropped during the EXTEND, the grant is released.
            let mut undo = ReleaseOnDrop {
                redis: client.redis.clone(),
                key: self.spec.key.clone(),
                owner: Some(owner.clone()),
            };
            sent = Instant::now();
            let reply = match conn.as_mut() {
                Some(c) => within(client.command_timeout, extend.query_async::<Value>(c))
                    .await
                    .map_err(Error::from),
                None => client.query(&extend).await,
            };
            undo.owner = None;
            if reply? != Value::Int(1) {
                // The hold ended before the EXTEND came: nothing was acquired.
                return Ok(None);
            }
        }
        let session = if self.spec.session { conn } else { None };
        let state = LeaseState::new(
            self.spec.key.clone(),
            owner,
            token,
            ttl,
            sent,
            session.map_or(SessionConn::None, |c| {
                SessionConn::Async(Mutex::new(Some(c)))
            }),
            QuorumLink::None,
            self.spec.keepalive(),
        );
        client.register(&state, &runtime);
        Ok(Some(Lease {
            client: self.client.clone(),
            state,
            runtime,
        }))
    }
}

/// A read-write lock: [`read`](ReadWriteLock::read) gives the shared view,
/// [`write`](ReadWriteLock::write) the exclusive one, on the same key.
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
    pub async fn acquire(&self, wait: Option<Duration>) -> Result<Lease> {
        self.lock.acquire(wait).await
    }

    /// As [`Lock::try_acquire`].
    pub async fn try_acquire(&self) -> Result<Option<Lease>> {
        self.lock.try_acquire().await
    }
}

/// A held lease (see [`crate::Lease`]); dropping it spawns its release.
pub struct Lease {
    client: Client,
    state: Arc<LeaseState>,
    runtime: tokio::runtime::Handle,
}

impl Lease {
    lease_view!();

    /// Renew the lease for `ttl` (or its current ttl); [`Error::LockLost`] (and the lease
    /// marked lost) when the server no longer has it.
    pub async fn extend(&self, ttl: Option<Duration>) -> Result<()> {
        self.check()?;
        if self.state.is_released() {
            return Err(Error::NotHeld {
                key: self.state.key.clone(),
            });
        }
        let ttl = ttl.unwrap_or_else(|| self.state.ttl());
        let cmd = spec::extend_cmd(&self.state.key, &self.state.owner, ttl);
        let sent = Instant::now();
        let reply = self.client.inner.query(&cmd).await?;
        if i64::from_redis_value(&reply)? == 1 {
            self.state.extended(sent, ttl);
            Ok(())
        } else {
            self.state.mark_lost();
            Err(self.lost_error().into())
        }
    }

    /// Release: stops the keepalive first (no EXTEND can follow), then RELEASE. Returns
    /// whether the server still had it; a second call does nothing and returns the first
    /// answer.
    pub async fn release(&self) -> Result<bool> {
        release(&self.client.inner, &self.state).await
    }

    /// As [`release`](Lease::release), but [`Error::NotHeld`] when the server no longer had
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

    /// Run `command` through `DLOCK.GUARD` with this lease's token: refused locally when the
    /// lease is lost or expired, and a server refusal marks it lost ([`Error::LockLost`]).
    pub async fn guard<T: FromRedisValue>(&self, command: impl ToRedisArgs) -> Result<T> {
        if !self.state.valid() {
            return Err(self.lost_error().into());
        }
        let cmd = spec::guard_cmd(&self.state.key, self.state.token, command);
        match self.client.inner.query(&cmd).await {
            Ok(v) => Ok(T::from_redis_value(&v)?),
            Err(Error::Redis(e)) if is_fence_refusal(&e) => {
                self.state.mark_lost();
                Err(self.lost_error().into())
            }
            Err(e) => Err(e),
        }
    }
}

async fn release(client: &Inner, state: &Arc<LeaseState>) -> Result<bool> {
    if !state.begin_release() {
        return Ok(state.release_result().unwrap_or(false));
    }
    client.unregister(state);
    // The keepalive task's command for this lease, if one is under way, ends by its deadline.
    while state.is_busy() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let held = send_release(client, state).await;
    state.finish_release(*held.as_ref().unwrap_or(&false));
    held
}

async fn send_release(client: &Inner, state: &LeaseState) -> Result<bool> {
    let cmd = spec::release_cmd(&state.key, &state.owner);
    if let SessionConn::Async(slot) = &state.conn {
        let conn = lock(slot).take();
        let Some(mut c) = conn else {
            return Ok(false);
        };
        let reply = within(client.command_timeout, cmd.query_async::<i64>(&mut c)).await?;
        return Ok(reply == 1);
    }
    let reply = client.query(&cmd).await?;
    Ok(i64::from_redis_value(&reply)? == 1)
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.state.is_released() {
            return;
        }
        let client = Arc::clone(&self.client.inner);
        let state = Arc::clone(&self.state);
        self.runtime.spawn(async move {
            let _ = release(&client, &state).await;
        });
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
