//! The whole dlock pattern with the `redis` crate: wait in line for the lock, work while
//! extending the lease, write to a resource that checks the fencing token, release.
//!
//! Run against a server with the module: `cargo run --example lock_pattern -- redis://127.0.0.1:6379/`

use redis::{Commands, Connection, RedisResult, Script};

/// The resource: a Redis key that remembers the highest fencing token it has accepted and
/// refuses writes carrying a lower one (a storage system would do the same check).
const FENCED_WRITE: &str = r#"
    local highest = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
    local token = tonumber(ARGV[1])
    if token < highest then
        return redis.error_reply('STALE token ' .. token .. ' is below ' .. highest)
    end
    redis.call('HSET', KEYS[1], 'token', token, 'data', ARGV[2])
    return 1
"#;

fn write_resource(con: &mut Connection, token: i64, data: &str) -> RedisResult<i64> {
    Script::new(FENCED_WRITE)
        .key("report:resource")
        .arg(token)
        .arg(data)
        .invoke(con)
}

/// Runs the pattern; returns what happened, one line per step.
pub fn run(url: &str) -> RedisResult<Vec<String>> {
    let mut con = redis::Client::open(url)?.get_connection()?;
    let mut log = Vec::new();

    // Wait up to 5 s for the lock, first come first served; None on timeout.
    let token: Option<i64> = redis::cmd("DLOCK.ACQUIRE")
        .arg("report:lock")
        .arg("worker-1")
        .arg(10_000)
        .arg("WAIT")
        .arg(5_000)
        .query(&mut con)?;
    let Some(token) = token else {
        log.push("lock busy".to_string());
        return Ok(log);
    };
    log.push("acquired".to_string());

    // Long work: keep the lease alive, and stop if it was lost.
    let extended: i64 = redis::cmd("DLOCK.EXTEND")
        .arg("report:lock")
        .arg("worker-1")
        .arg(10_000)
        .query(&mut con)?;
    log.push(
        if extended == 1 {
            "extended"
        } else {
            "lost the lock"
        }
        .to_string(),
    );

    // Every write carries the token; the resource rejects stale ones.
    write_resource(&mut con, token, "report v1")?;
    log.push("written".to_string());
    if let Err(e) = write_resource(&mut con, token - 1, "stale write") {
        log.push(format!("stale write refused: {}", e.code().unwrap_or("?")));
    }

    let released: i64 = redis::cmd("DLOCK.RELEASE")
        .arg("report:lock")
        .arg("worker-1")
        .query(&mut con)?;
    log.push(
        if released == 1 {
            "released"
        } else {
            "was not held"
        }
        .to_string(),
    );
    let data: String = con.hget("report:resource", "data")?;
    log.push(format!("resource holds '{data}'"));
    Ok(log)
}

#[allow(dead_code)]
fn main() -> RedisResult<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    for line in run(&url)? {
        println!("{line}");
    }
    Ok(())
}
