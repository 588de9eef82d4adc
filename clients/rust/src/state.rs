//! A lease's state and the keepalive schedule, without I/O: the blocking thread and the tokio
//! task both plan with this and only differ in how they send commands.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The lost signal fires this long before the deadline, so that a late wake-up of the
/// scheduler still signals before it.
pub(crate) const LOST_EARLY: Duration = Duration::from_millis(3);

/// How long a renewing command may wait for its reply, at most.
#[derive(Clone, Copy)]
pub(crate) enum IoBound {
    /// Until the first lease's lost signal is due: another thread times that signal (the
    /// blocking client, whose socket timeouts the kernel keeps only roughly: up to 1/8 late).
    UntilLost,
    /// Until this long before it: the same task times the signal (tokio, whose timers are
    /// precise to the millisecond).
    Before(Duration),
}

/// No command is started with less time than this for its reply.
const MIN_IO: Duration = Duration::from_millis(5);

/// How often a session lease's connection is checked (or its ttl/3 when shorter).
pub(crate) const SESSION_CHECK: Duration = Duration::from_millis(250);

/// The pause before retrying an EXTEND that got a server error or could not connect.
pub(crate) const RETRY: Duration = Duration::from_millis(20);

/// The clock drift allowed for a lease of `ttl`: ttl/100 + 2 ms.
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// The local validity deadline of a lease of `ttl` whose request was sent at `sent`.
pub(crate) fn deadline_after(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl.saturating_sub(drift(ttl))
}

/// Whether a grant whose request was sent at `sent` came so late (after waiting in the queue)
/// that the lease must be restarted with an EXTEND: the server started it at an unknown moment
/// since `sent`, and a deadline counted from `sent` would be too early, possibly past.
pub(crate) fn granted_late(sent: Instant, ttl: Duration) -> bool {
    sent.elapsed() > drift(ttl)
}

type Callback = Box<dyn FnOnce() + Send>;

/// The dedicated connection a session lease owns (`None` for other leases).
pub(crate) enum SessionConn {
    None,
    Sync(Mutex<Option<crate::sync::Conn>>),
    #[cfg(feature = "tokio")]
    Async(Mutex<Option<crate::aio::AConn>>),
}

/// The servers a quorum lease is renewed on, all at once (`None` for other leases).
pub(crate) enum QuorumLink {
    None,
    Sync(Vec<Arc<crate::sync::quorum::Target>>),
    #[cfg(feature = "tokio")]
    Async(Vec<Arc<crate::aio::quorum::Target>>),
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A callback that panicked must not take every later lease operation down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Inner {
    pub ttl: Duration,
    pub deadline: Instant,
    /// When the scheduler should next renew (or check the session of) this lease.
    pub next_due: Option<Instant>,
    pub lost: bool,
    pub released: Option<bool>,
    /// The scheduler is sending a command for this lease right now.
    pub busy: bool,
    /// The scheduler found the lease lost while busy with it: signalled once it is not,
    /// so that a callback may release the lease without waiting for itself.
    pending_lost: bool,
    releasing: bool,
    callbacks: Vec<Callback>,
}

/// Everything the lease object, the scheduler and the lost signal share.
pub(crate) struct LeaseState {
    pub key: String,
    pub owner: String,
    pub token: i64,
    pub session: bool,
    pub conn: SessionConn,
    pub quorum: QuorumLink,
    pub keepalive: bool,
    inner: Mutex<Inner>,
    changed: Condvar,
    #[cfg(feature = "tokio")]
    lost_tx: tokio::sync::watch::Sender<bool>,
}

impl LeaseState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: String,
        owner: String,
        token: i64,
        ttl: Duration,
        sent: Instant,
        conn: SessionConn,
        quorum: QuorumLink,
        keepalive: bool,
    ) -> Arc<LeaseState> {
        let state = LeaseState {
            key,
            owner,
            token,
            session: !matches!(conn, SessionConn::None),
            conn,
            quorum,
            keepalive,
            inner: Mutex::new(Inner {
                ttl,
                deadline: deadline_after(sent, ttl),
                next_due: None,
                lost: false,
                released: None,
                busy: false,
                pending_lost: false,
                releasing: false,
                callbacks: Vec::new(),
            }),
            changed: Condvar::new(),
            #[cfg(feature = "tokio")]
            lost_tx: tokio::sync::watch::Sender::new(false),
        };
        {
            let mut inner = state.lock();
            inner.next_due = state.due_after(sent, ttl);
        }
        Arc::new(state)
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// When a lease renewed (or checked) at `at` is next due.
    fn due_after(&self, at: Instant, ttl: Duration) -> Option<Instant> {
        if self.session {
            Some(at + (ttl / 3).min(SESSION_CHECK))
        } else if self.keepalive {
            Some(at + ttl / 3)
        } else {
            None
        }
    }

    pub fn deadline(&self) -> Instant {
        self.lock().deadline
    }

    pub fn ttl(&self) -> Duration {
        self.lock().ttl
    }

    pub fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    /// Lost: marked so, or past the deadline while not released. The deadline is checked here
    /// too, so this is exact whenever the scheduler wakes.
    pub fn is_lost(&self) -> bool {
        let inner = self.lock();
        inner.lost || (inner.released.is_none() && Instant::now() >= inner.deadline)
    }

    pub fn valid(&self) -> bool {
        let inner = self.lock();
        !inner.lost
            && inner.released.is_none()
            && !inner.releasing
            && Instant::now() < inner.deadline
    }

    pub fn is_released(&self) -> bool {
        let inner = self.lock();
        inner.released.is_some() || inner.releasing
    }

    /// A successful EXTEND of `ttl` sent at `sent`. A reply that comes after the deadline
    /// cannot bring the lease back (`is_lost` already says it is lost): it is marked lost.
    pub fn extended(&self, sent: Instant, ttl: Duration) {
        let due = self.due_after(sent, ttl);
        let mut inner = self.lock();
        if inner.lost {
            return;
        }
        if Instant::now() >= inner.deadline {
            if inner.busy {
                inner.pending_lost = true;
                return;
            }
            drop(inner);
            return self.mark_lost();
        }
        inner.ttl = ttl;
        inner.deadline = deadline_after(sent, ttl);
        inner.next_due = due;
    }

    /// A successful session check at `at`.
    pub fn checked(&self, at: Instant) {
        let ttl = self.ttl();
        let due = self.due_after(at, ttl);
        self.lock().next_due = due;
    }

    pub fn retry_at(&self, at: Instant) {
        self.lock().next_due = Some(at);
    }

    pub fn set_busy(&self, busy: bool) {
        let pending = {
            let mut inner = self.lock();
            inner.busy = busy;
            !busy && std::mem::take(&mut inner.pending_lost)
        };
        self.changed.notify_all();
        if pending {
            self.mark_lost();
        }
    }

    /// Mark the lease lost once the scheduler is done with it (see `pending_lost`).
    pub fn lose_when_idle(&self) {
        self.lock().pending_lost = true;
    }

    /// Mark the lease lost (once; never after release) and tell everyone waiting.
    pub fn mark_lost(&self) {
        let callbacks = {
            let mut inner = self.lock();
            if inner.lost || inner.released.is_some() || inner.releasing {
                return;
            }
            inner.lost = true;
            std::mem::take(&mut inner.callbacks)
        };
        self.changed.notify_all();
        #[cfg(feature = "tokio")]
        self.lost_tx.send_replace(true);
        for callback in callbacks {
            // A callback that panics (the panic hook prints it) must not take the keepalive or
            // deadline thread down with it, which serves every lease of the client, nor keep
            // the callbacks after it from running.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback));
        }
    }

    /// Run `callback` once when the lease is lost (at once if it already is).
    pub fn on_lost(&self, callback: Callback) {
        {
            let mut inner = self.lock();
            let lost = inner.lost || (inner.released.is_none() && Instant::now() >= inner.deadline);
            if !lost {
                inner.callbacks.push(callback);
                return;
            }
        }
        self.mark_lost();
        callback();
    }

    /// Block until the lease is lost (true), or released or `timeout` passes (false). Returns at
    /// the deadline by itself, whatever the scheduler is doing.
    pub fn wait_lost(&self, timeout: Option<Duration>) -> bool {
        let until = timeout.map(|t| Instant::now() + t);
        let mut inner = self.lock();
        loop {
            let now = Instant::now();
            if inner.lost || (inner.released.is_none() && !inner.releasing && now >= inner.deadline)
            {
                return true;
            }
            if inner.released.is_some() || inner.releasing {
                return false;
            }
            let mut wake = inner.deadline;
            if let Some(until) = until {
                if now >= until {
                    return false;
                }
                wake = wake.min(until);
            }
            let (guard, _) = self
                .changed
                .wait_timeout(inner, wake.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner);
            inner = guard;
        }
    }

    #[cfg(feature = "tokio")]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.lost_tx.subscribe()
    }

    /// Start releasing: false when a release already started (the second call does nothing).
    pub fn begin_release(&self) -> bool {
        let mut inner = self.lock();
        if inner.releasing || inner.released.is_some() {
            return false;
        }
        inner.releasing = true;
        drop(inner);
        self.changed.notify_all();
        true
    }

    /// Whether the scheduler is sending a command for this lease.
    #[cfg(feature = "tokio")]
    pub fn is_busy(&self) -> bool {
        self.lock().busy
    }

    /// Block until the scheduler is done with this lease (it no longer picks it up once
    /// `begin_release` ran).
    pub fn wait_idle(&self) {
        let mut inner = self.lock();
        while inner.busy {
            inner = self
                .changed
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub fn finish_release(&self, held: bool) {
        let mut inner = self.lock();
        inner.releasing = false;
        inner.released = Some(held);
        drop(inner);
        self.changed.notify_all();
    }

    /// What the first release returned, once it finished.
    pub fn release_result(&self) -> Option<bool> {
        self.lock().released
    }
}

/// What the scheduler should do next.
pub(crate) enum Work {
    /// Mark these lost (outside the registry's lock: callbacks may call back in).
    Lost(Vec<Arc<LeaseState>>),
    /// Renew this lease (EXTEND, or PING a session lease that is not kept alive); replies
    /// must come before `io_deadline`, the earliest point at which some lease is lost.
    Renew {
        lease: Arc<LeaseState>,
        io_deadline: Instant,
    },
    /// Nothing due: sleep until then (or until a lease comes or goes).
    Idle(Option<Instant>),
    /// No leases left: the scheduler ends.
    Exit,
}

/// The leases one client's scheduler serves.
#[derive(Default)]
pub(crate) struct Registry {
    pub leases: Vec<Arc<LeaseState>>,
    /// The renewing thread or task runs.
    pub running: bool,
    /// The blocking client's deadline thread runs.
    pub watching: bool,
}

impl Registry {
    pub fn add(&mut self, lease: Arc<LeaseState>) {
        self.leases.push(lease);
    }

    pub fn remove(&mut self, lease: &Arc<LeaseState>) {
        self.leases.retain(|l| !Arc::ptr_eq(l, lease));
    }

    /// For a timer apart from the renewing I/O: the leases whose lost signal is due now (busy
    /// ones too, whatever their command is doing), taken out, and when the next one is due.
    pub fn overdue(&mut self, now: Instant) -> (Vec<Arc<LeaseState>>, Option<Instant>) {
        let mut lost = Vec::new();
        let mut next: Option<Instant> = None;
        self.leases.retain(|l| {
            let inner = l.lock();
            if inner.lost || inner.releasing || inner.released.is_some() {
                return false;
            }
            let lost_at = inner
                .deadline
                .checked_sub(LOST_EARLY)
                .unwrap_or(inner.deadline);
            if now >= lost_at {
                lost.push(Arc::clone(l));
                false
            } else {
                next = Some(next.map_or(lost_at, |n| n.min(lost_at)));
                true
            }
        });
        (lost, next)
    }

    pub fn plan(&mut self, now: Instant, bound: IoBound) -> Work {
        self.leases.retain(|l| {
            let inner = l.lock();
            !inner.lost && !inner.releasing && inner.released.is_none()
        });
        let mut lost = Vec::new();
        self.leases.retain(|l| {
            let inner = l.lock();
            if !inner.busy && now + LOST_EARLY >= inner.deadline {
                lost.push(Arc::clone(l));
                false
            } else {
                true
            }
        });
        if !lost.is_empty() {
            return Work::Lost(lost);
        }
        if self.leases.is_empty() {
            return Work::Exit;
        }
        let lost_at = |deadline: Instant| deadline.checked_sub(LOST_EARLY).unwrap_or(deadline);
        let first_lost = self
            .leases
            .iter()
            .map(|l| lost_at(l.lock().deadline))
            .min()
            .unwrap_or(now);
        // One thread serves every lease: no command may run into the moment the first of
        // them must be marked lost.
        let left = first_lost.saturating_duration_since(now);
        let io_budget = match bound {
            IoBound::UntilLost => left,
            IoBound::Before(margin) => left.saturating_sub(margin),
        };
        let io_open = io_budget >= MIN_IO;
        let io_deadline = now + io_budget;
        let mut due: Option<(Instant, &Arc<LeaseState>)> = None;
        let mut wake = first_lost;
        for l in &self.leases {
            let inner = l.lock();
            if inner.busy || !io_open {
                continue;
            }
            if let Some(next) = inner.next_due {
                wake = wake.min(next);
                if next <= now && due.is_none_or(|(d, _)| next < d) {
                    due = Some((next, l));
                }
            }
        }
        match due {
            Some((_, lease)) => {
                let lease = Arc::clone(lease);
                lease.lock().busy = true;
                Work::Renew { lease, io_deadline }
            }
            None => Work::Idle(Some(wake)),
        }
    }
}
