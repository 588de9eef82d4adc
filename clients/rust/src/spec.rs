//! What a lock object asks the server for, as commands, and how replies read. Shared by the
//! blocking and the tokio client, so both send exactly the same commands.

use std::time::Duration;

use redis::{Cmd, Value};

use crate::error::{Error, Result};

/// The lease used, and kept alive, when no ttl is given (Redisson's watchdog rule).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// How much longer than a `WAIT` the blocking call's read timeout is.
pub(crate) const WAIT_MARGIN: Duration = Duration::from_secs(2);

/// How a lock is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    Exclusive,
    Shared,
    Semaphore { limit: u64, permits: u64 },
}

/// The settings of a lock object.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub key: String,
    pub ttl: Option<Duration>,
    pub owner: Option<String>,
    pub session: bool,
    pub keepalive: Option<bool>,
    pub mode: Mode,
}

impl Spec {
    pub fn new(key: &str, mode: Mode) -> Spec {
        Spec {
            key: key.to_string(),
            ttl: None,
            owner: None,
            session: false,
            keepalive: None,
            mode,
        }
    }

    /// The lease length sent with ACQUIRE.
    pub fn ttl(&self) -> Duration {
        self.ttl.unwrap_or(DEFAULT_TTL)
    }

    /// Kept alive when no ttl was given, or when asked explicitly.
    pub fn keepalive(&self) -> bool {
        self.keepalive.unwrap_or(self.ttl.is_none())
    }

    /// `DLOCK.ACQUIRE key owner ttl [mode] [WAIT ms] [SESSION]`; `wait` is `None` for no
    /// `WAIT`, `Some(None)` for waiting forever.
    pub fn acquire_cmd(&self, wait: Option<Option<Duration>>) -> Cmd {
        let mut c = redis::cmd("DLOCK.ACQUIRE");
        c.arg(&self.key)
            .arg(self.owner.as_deref().unwrap_or("*"))
            .arg(millis(self.ttl()));
        match &self.mode {
            Mode::Exclusive => {}
            Mode::Shared => {
                c.arg("SHARED");
            }
            Mode::Semaphore { limit, permits } => {
                c.arg("SEMAPHORE").arg(*limit).arg("PERMITS").arg(*permits);
            }
        }
        if let Some(wait) = wait {
            // WAIT 0 is forever on the server; a finite wait is at least 1 ms.
            c.arg("WAIT").arg(wait.map_or(0, millis));
        }
        if self.session {
            c.arg("SESSION");
        }
        c
    }

    /// The token and owner of a grant, or `None` for nil.
    pub fn parse_grant(&self, reply: Value) -> Result<Option<(i64, String)>> {
        let given = || self.owner.clone().unwrap_or_default();
        match reply {
            Value::Nil => Ok(None),
            Value::Int(token) => Ok(Some((token, given()))),
            Value::Array(items) if matches!(items.as_slice(), [_, _]) => {
                let (token, owner): (i64, String) = redis::from_redis_value(&Value::Array(items))?;
                Ok(Some((token, owner)))
            }
            other => Err(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "unexpected DLOCK.ACQUIRE reply",
                format!("{other:?}"),
            )))),
        }
    }

    /// The read timeout of an acquire: the command timeout without WAIT, the wait plus a
    /// margin with a finite one, none for a forever wait.
    pub fn read_timeout(
        wait: Option<Option<Duration>>,
        command_timeout: Option<Duration>,
    ) -> Option<Duration> {
        match wait {
            None => command_timeout,
            Some(None) => None,
            Some(Some(w)) => Some(w + WAIT_MARGIN),
        }
    }
}

/// A duration as whole milliseconds, at least 1 (a ttl or wait of 0 would mean something else).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(crate) fn extend_cmd(key: &str, owner: &str, ttl: Duration) -> Cmd {
    let mut c = redis::cmd("DLOCK.EXTEND");
    c.arg(key).arg(owner).arg(millis(ttl));
    c
}

pub(crate) fn release_cmd(key: &str, owner: &str) -> Cmd {
    let mut c = redis::cmd("DLOCK.RELEASE");
    c.arg(key).arg(owner);
    c
}

pub(crate) fn guard_cmd(key: &str, token: i64, command: impl redis::ToRedisArgs) -> Cmd {
    let mut c = redis::cmd("DLOCK.GUARD");
    c.arg(key).arg(token).arg(command);
    c
}
