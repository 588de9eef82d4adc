//! What the quorum locks of the blocking and the tokio client share, without I/O: majorities,
//! the counting of replies, owner ids, node ids and the retry backoff.

use std::time::Duration;

use redis::{Cmd, Value};

use crate::error::{Error, Result};

/// How long a round still waits for the servers that have not answered once its outcome is
/// known (so that a fast round FENCEs, extends and releases every server that is up, while a
/// frozen minority does not hold it up).
pub(crate) const GRACE: Duration = Duration::from_millis(50);

/// The random pause between two acquire attempts: from this long...
const BACKOFF_MIN_MS: u64 = 10;
/// ...to this long.
const BACKOFF_MAX_MS: u64 = 60;

/// More than half of `n` servers.
pub(crate) fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// A random 128-bit owner id, in hex: the same one is sent to every server (`*` would let
/// each server generate its own).
pub(crate) fn random_owner() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The pause before the next acquire attempt, at random so that contenders spread out.
pub(crate) fn backoff() -> Duration {
    Duration::from_millis(rand::random_range(BACKOFF_MIN_MS..BACKOFF_MAX_MS))
}

/// `DLOCK.FENCE key owner token`.
pub(crate) fn fence_cmd(key: &str, owner: &str, token: i64) -> Cmd {
    let mut c = redis::cmd("DLOCK.FENCE");
    c.arg(key).arg(owner).arg(token);
    c
}

/// `INFO dlock`, which carries `dlock_node_id`.
pub(crate) fn info_cmd() -> Cmd {
    let mut c = redis::cmd("INFO");
    c.arg("dlock");
    c
}

/// `dlock_node_id` from an `INFO dlock` reply (`None` when absent).
pub(crate) fn parse_node_id(reply: &Value) -> Option<i64> {
    let info: String = redis::from_redis_value(reply).ok()?;
    info.lines()
        .find_map(|l| l.trim().strip_prefix("dlock_node_id:"))
        .and_then(|id| id.trim().parse().ok())
}

/// [`Error::DuplicateNodeId`] for the first two servers known to share a node id.
pub(crate) fn check_node_ids(ids: &[Option<i64>]) -> Result<()> {
    for (a, id) in ids.iter().enumerate() {
        let Some(id) = id else { continue };
        let twin = ids
            .iter()
            .enumerate()
            .skip(a + 1)
            .find(|(_, other)| *other == &Some(*id));
        if let Some((b, _)) = twin {
            return Err(Error::DuplicateNodeId {
                node_id: *id,
                servers: (a, b),
            });
        }
    }
    Ok(())
}

/// One server's answer in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vote {
    /// Granted, fenced, extended, released (a reply of the kind asked for).
    Yes,
    /// The server answered, and not so (nil, 0, a lower token).
    No,
    /// An error: the server may or may not have done it.
    Failed,
}

/// The votes of a round so far (`None`: no answer yet).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tally {
    pub yes: usize,
    pub no: usize,
    pub failed: usize,
    pub pending: usize,
}

impl Tally {
    pub fn of<'a>(votes: impl IntoIterator<Item = &'a Option<Vote>>) -> Tally {
        let mut t = Tally {
            yes: 0,
            no: 0,
            failed: 0,
            pending: 0,
        };
        for vote in votes {
            match vote {
                Some(Vote::Yes) => t.yes += 1,
                Some(Vote::No) => t.no += 1,
                Some(Vote::Failed) => t.failed += 1,
                None => t.pending += 1,
            }
        }
        t
    }

    fn n(&self) -> usize {
        self.yes + self.no + self.failed + self.pending
    }

    /// A majority said yes.
    pub fn majority(&self) -> bool {
        self.yes >= majority(self.n())
    }

    /// So many said no that a majority of yes can no longer come, whatever the failed ones did.
    pub fn refused(&self) -> bool {
        self.no > self.n() - majority(self.n())
    }

    /// How long to go on waiting for replies: until all came, or [`GRACE`] more once the
    /// outcome is known either way (a server that answers late is not left out when it is
    /// merely slow: it is FENCEd, extended or released with the others).
    pub fn wait(&self) -> Wait {
        if self.pending == 0 {
            Wait::Stop
        } else if self.majority() || self.yes + self.pending < majority(self.n()) {
            Wait::Grace
        } else {
            Wait::More
        }
    }
}

/// Whether a round waits for more replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The outcome is still open.
    More,
    /// The outcome is known: wait [`GRACE`] more for the others.
    Grace,
    /// Nothing left to wait for.
    Stop,
}

/// One server's reply to a round of ACQUIREs: its node id when it was read in this round, and
/// the grant's token (`None` for nil).
pub(crate) struct Granted {
    pub node_id: Option<i64>,
    pub reply: Result<Option<i64>>,
}

impl Granted {
    pub fn vote(&self) -> Vote {
        match self.reply {
            Ok(Some(_)) => Vote::Yes,
            Ok(None) => Vote::No,
            Err(_) => Vote::Failed,
        }
    }
}

/// The votes of a round of ACQUIREs; an error counts as a refusal (a round is not retried on
/// one server).
pub(crate) fn acquire_votes(replies: &[Option<Granted>]) -> Vec<Option<Vote>> {
    replies
        .iter()
        .map(|r| {
            r.as_ref().map(|g| match g.vote() {
                Vote::Failed => Vote::No,
                v => v,
            })
        })
        .collect()
}

/// Take the node ids read in a round into `known`, and check them.
pub(crate) fn learn_node_ids(known: &mut [Option<i64>], replies: &[Option<Granted>]) -> Result<()> {
    for (slot, reply) in known.iter_mut().zip(replies) {
        if let Some(id) = reply.as_ref().and_then(|r| r.node_id) {
            *slot = Some(id);
        }
    }
    check_node_ids(known)
}

/// A configuration error a server answered (the module not loaded there): returned at once
/// rather than counted as a refusal.
pub(crate) fn config_error(replies: &mut [Option<Granted>]) -> Option<Error> {
    replies.iter_mut().find_map(|r| match r {
        Some(Granted {
            reply: reply @ Err(Error::ModuleNotLoaded { .. }),
            ..
        }) => std::mem::replace(reply, Ok(None)).err(),
        _ => None,
    })
}

/// The servers that granted, with their tokens.
pub(crate) fn grants(replies: &[Option<Granted>]) -> Vec<(usize, i64)> {
    replies
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Some(Granted {
                reply: Ok(Some(token)),
                ..
            }) => Some((i, *token)),
            _ => None,
        })
        .collect()
}

/// The low bits of a token: the `dlock.node-id` of the server that issued it.
const NODE_MASK: i64 = 0xF;

/// [`Error::DuplicateNodeId`] when two grants of a round carry the same node id in their
/// tokens' low bits: the servers' ids were read once, and this catches an id changed since (a
/// restart with another id, `CONFIG SET dlock.node-id`), before such tokens are fenced.
pub(crate) fn check_grant_nodes(n: usize, grants: &[(usize, i64)]) -> Result<()> {
    let mut ids = vec![None; n];
    for (server, token) in grants {
        if let Some(slot) = ids.get_mut(*server) {
            *slot = Some(token & NODE_MASK);
        }
    }
    check_node_ids(&ids)
}

/// The first error a server answered to a round (a FENCE refused because the token leads
/// that server's clock by more than `dlock.max-token-lead`, `WRONGTYPE`, ...): what the caller
/// gets, after the attempt is released, rather than a retry that would fail the same way. A
/// connection error, a timeout or a server still loading is no answer and is not returned.
pub(crate) fn server_error(replies: &mut [Option<Result<Value>>]) -> Option<Error> {
    replies.iter_mut().find_map(|r| match r {
        Some(reply @ Err(_)) if reply.as_ref().err().is_some_and(is_answer) => {
            std::mem::replace(reply, Ok(Value::Nil)).err()
        }
        _ => None,
    })
}

fn is_answer(e: &Error) -> bool {
    match e {
        Error::Redis(e) => {
            e.code().is_some()
                && !matches!(
                    e.kind(),
                    redis::ErrorKind::BusyLoadingError
                        | redis::ErrorKind::TryAgain
                        | redis::ErrorKind::ClusterDown
                        | redis::ErrorKind::MasterDown
                )
        }
        Error::ModuleNotLoaded { .. } => true,
        _ => false,
    }
}

/// A FENCE reply counts when it is a token at least `target`.
pub(crate) fn fence_vote(reply: &Result<Value>, target: i64) -> Vote {
    match reply {
        Ok(Value::Int(token)) if *token >= target => Vote::Yes,
        Ok(_) => Vote::No,
        Err(_) => Vote::Failed,
    }
}

/// An EXTEND or RELEASE reply: 1 is yes.
pub(crate) fn one_vote(reply: &Result<Value>) -> Vote {
    match reply {
        Ok(Value::Int(1)) => Vote::Yes,
        Ok(_) => Vote::No,
        Err(_) => Vote::Failed,
    }
}

/// The error of a round that reached no majority either way: the first server error, or a
/// timeout when the servers did not answer in time.
pub(crate) fn undecided(replies: Vec<Option<Result<Value>>>) -> Error {
    replies
        .into_iter()
        .flatten()
        .find_map(std::result::Result::err)
        .unwrap_or_else(|| {
            Error::Redis(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no majority of the quorum's servers answered in time",
            )))
        })
}

/// The error for a quorum lock made from no server.
pub(crate) fn no_servers() -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::ClientError,
        "a quorum lock needs at least one server",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majorities() {
        assert_eq!(
            [1, 2, 3, 4, 5].map(majority),
            [1, 2, 2, 3, 3],
            "more than half"
        );
    }

    #[test]
    fn tallies_decide_as_soon_as_they_can() {
        use Vote::*;
        let t = Tally::of(&[Some(Yes), Some(Yes), None]);
        assert!(t.majority() && t.wait() == Wait::Grace);
        let t = Tally::of(&[Some(No), Some(No), None]);
        assert!(t.refused() && t.wait() == Wait::Grace);
        let t = Tally::of(&[Some(Failed), Some(Failed), None]);
        assert!(!t.refused() && t.wait() == Wait::Grace);
        let t = Tally::of(&[Some(Yes), Some(Failed), None]);
        assert_eq!(t.wait(), Wait::More);
        let t = Tally::of(&[Some(Yes), Some(No), Some(Yes)]);
        assert!(t.majority() && t.wait() == Wait::Stop);
    }

    #[test]
    fn node_ids_must_differ() {
        assert!(check_node_ids(&[Some(1), None, Some(2)]).is_ok());
        match check_node_ids(&[Some(1), Some(2), None, Some(2)]) {
            Err(Error::DuplicateNodeId { node_id, servers }) => {
                assert_eq!((node_id, servers), (2, (1, 3)));
            }
            other => panic!("{other:?}"),
        }
        let info = Value::BulkString(b"# dlock\r\ndlock_fences:0\r\ndlock_node_id:7\r\n".to_vec());
        assert_eq!(parse_node_id(&info), Some(7));
    }

    #[test]
    fn grants_must_come_from_distinct_nodes() {
        assert!(check_grant_nodes(3, &[(0, 0x101), (2, 0x203)]).is_ok());
        match check_grant_nodes(3, &[(0, 0x101), (1, 0x211), (2, 0x303)]) {
            Err(Error::DuplicateNodeId { node_id, servers }) => {
                assert_eq!((node_id, servers), (1, (0, 1)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_errors_are_answers_and_connection_errors_are_not() {
        let io = || {
            Err(Error::Redis(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ))))
        };
        let lead = || {
            Err(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::ResponseError,
                "An error was signalled by the server",
                "token leads this server's clock".to_string(),
            ))))
        };
        assert!(server_error(&mut [None, Some(io()), Some(Ok(Value::Int(7)))]).is_none());
        let mut replies = [Some(io()), Some(Ok(Value::Int(7))), Some(lead())];
        match server_error(&mut replies) {
            Some(Error::Redis(e)) => assert_eq!(e.kind(), redis::ErrorKind::ResponseError),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn owners_are_128_bit_hex_and_differ() {
        let (a, b) = (random_owner(), random_owner());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
