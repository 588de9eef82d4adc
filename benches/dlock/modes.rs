//! Shared locks against a read-write lock built the way Redisson builds one: a hash of holders
//! with a `mode` field plus a timeout key per read hold, taken and released by Lua scripts
//! (`EVALSHA`). Measured in the same run, from 8 connections pipelining 32 acquire/release
//! pairs at a time on 1000 keys, each connection its own holder: all reads, and a read-heavy
//! mix of 90% reads and 10% writes.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use super::common::{Connection, Server, cmd};
use super::report::{Figure, median};
use super::{Sizes, flushall};

/// Redisson's read-lock acquire (RedissonReadLock.tryLockInnerAsync): KEYS[1] the lock hash,
/// KEYS[2] the read holds' timeout key prefix; ARGV the lease, the holder id, the id of a
/// write hold by the same holder.
const READ_LOCK: &str = "\
local mode = redis.call('hget', KEYS[1], 'mode'); \
if (mode == false) then \
  redis.call('hset', KEYS[1], 'mode', 'read'); \
  redis.call('hset', KEYS[1], ARGV[2], 1); \
  redis.call('set', KEYS[2] .. ':1', 1); \
  redis.call('pexpire', KEYS[2] .. ':1', ARGV[1]); \
  redis.call('pexpire', KEYS[1], ARGV[1]); \
  return nil; \
end; \
if (mode == 'read') or (mode == 'write' and redis.call('hexists', KEYS[1], ARGV[3]) == 1) then \
  local ind = redis.call('hincrby', KEYS[1], ARGV[2], 1); \
  local key = KEYS[2] .. ':' .. ind; \
  redis.call('set', key, 1); \
  redis.call('pexpire', key, ARGV[1]); \
  local remainTime = redis.call('pttl', KEYS[1]); \
  redis.call('pexpire', KEYS[1], math.max(remainTime, ARGV[1])); \
  return nil; \
end; \
return redis.call('pttl', KEYS[1]);";

/// Redisson's read-lock release (RedissonReadLock.unlockInnerAsync): KEYS[1] the lock hash,
/// KEYS[2] the release channel, KEYS[3] this holder's timeout key prefix, KEYS[4] the lock's
/// key prefix; ARGV the unlock message and the holder id.
const READ_UNLOCK: &str = "\
local mode = redis.call('hget', KEYS[1], 'mode'); \
if (mode == false) then redis.call('publish', KEYS[2], ARGV[1]); return 1; end; \
local lockExists = redis.call('hexists', KEYS[1], ARGV[2]); \
if (lockExists == 0) then return nil; end; \
local counter = redis.call('hincrby', KEYS[1], ARGV[2], -1); \
if (counter == 0) then redis.call('hdel', KEYS[1], ARGV[2]); end; \
redis.call('del', KEYS[3] .. ':' .. (counter+1)); \
if (redis.call('hlen', KEYS[1]) > 1) then \
  local maxRemainTime = -3; \
  local keys = redis.call('hkeys', KEYS[1]); \
  for n, key in ipairs(keys) do \
    counter = tonumber(redis.call('hget', KEYS[1], key)); \
    if type(counter) == 'number' then \
      for i=counter, 1, -1 do \
        local remainTime = redis.call('pttl', KEYS[4] .. ':' .. key .. ':rwlock_timeout:' .. i); \
        maxRemainTime = math.max(remainTime, maxRemainTime); \
      end; \
    end; \
  end; \
  if maxRemainTime > 0 then redis.call('pexpire', KEYS[1], maxRemainTime); return 0; end; \
  if mode == 'write' then return 0; end; \
end; \
redis.call('del', KEYS[1]); \
redis.call('publish', KEYS[2], ARGV[1]); \
return 1;";

/// Redisson's write-lock acquire (RedissonWriteLock.tryLockInnerAsync).
const WRITE_LOCK: &str = "\
local mode = redis.call('hget', KEYS[1], 'mode'); \
if (mode == false) then \
  redis.call('hset', KEYS[1], 'mode', 'write'); \
  redis.call('hset', KEYS[1], ARGV[2], 1); \
  redis.call('pexpire', KEYS[1], ARGV[1]); \
  return nil; \
end; \
if (mode == 'write') then \
  if (redis.call('hexists', KEYS[1], ARGV[2]) == 1) then \
    redis.call('hincrby', KEYS[1], ARGV[2], 1); \
    local currentExpire = redis.call('pttl', KEYS[1]); \
    redis.call('pexpire', KEYS[1], currentExpire + ARGV[1]); \
    return nil; \
  end; \
end; \
return redis.call('pttl', KEYS[1]);";

/// Redisson's write-lock release (RedissonWriteLock.unlockInnerAsync).
const WRITE_UNLOCK: &str = "\
local mode = redis.call('hget', KEYS[1], 'mode'); \
if (mode == false) then redis.call('publish', KEYS[2], ARGV[1]); return 1; end; \
if (mode == 'write') then \
  local lockExists = redis.call('hexists', KEYS[1], ARGV[3]); \
  if (lockExists == 0) then return nil; \
  else \
    local counter = redis.call('hincrby', KEYS[1], ARGV[3], -1); \
    if (counter > 0) then redis.call('pexpire', KEYS[1], ARGV[2]); return 0; \
    else \
      redis.call('hdel', KEYS[1], ARGV[3]); \
      if (redis.call('hlen', KEYS[1]) == 1) then \
        redis.call('del', KEYS[1]); redis.call('publish', KEYS[2], ARGV[1]); \
      else \
        redis.call('hset', KEYS[1], 'mode', 'read'); \
      end; \
      return 1; \
    end; \
  end; \
end; \
return nil;";

/// Keys of the read-heavy mix, its connections, and the pipeline depth.
const MIX_KEYS: u64 = 1_000;
const MIX_CONNECTIONS: usize = 8;
const MIX_PIPELINE: usize = 32;

fn load(c: &mut Connection, script: &str) -> String {
    cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query(c)
        .expect("SCRIPT LOAD")
}

struct Scripts {
    read_lock: String,
    read_unlock: String,
    write_lock: String,
    write_unlock: String,
}

pub fn modes(server: &Server, c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let scripts = Scripts {
        read_lock: load(c, READ_LOCK),
        read_unlock: load(c, READ_UNLOCK),
        write_lock: load(c, WRITE_LOCK),
        write_unlock: load(c, WRITE_UNLOCK),
    };
    let mixes = [
        (0, "shared acquire+release pairs (all reads"),
        (10, "read-heavy mix (90% read, 10% write"),
    ];
    for (write_percent, name) in mixes {
        let (mut dlock, mut lua) = (vec![], vec![]);
        for _ in 0..sizes.rounds {
            for (side, results) in [(true, &mut dlock), (false, &mut lua)] {
                flushall(c);
                results.push(pairs_per_second(
                    server,
                    &scripts,
                    side,
                    write_percent,
                    sizes,
                ));
            }
        }
        figures.push(Figure {
            name: format!("{name}, 1000 keys, 8 connections x32) vs Redisson-style Lua (pairs/s)"),
            unit: "pairs/s",
            dlock: median(dlock),
            baseline: Some(median(lua)),
            target: None,
            others: vec![],
        });
    }
}

/// Acquire/release pairs per second: each connection pipelines `MIX_PIPELINE` pairs at a
/// time on random keys, `write_percent` of them exclusive, each connection its own holder.
fn pairs_per_second(
    server: &Server,
    scripts: &Scripts,
    dlock: bool,
    write_percent: u64,
    sizes: &Sizes,
) -> f64 {
    let pairs_per_connection = (sizes.requests_pipelined / 4) as usize / MIX_CONNECTIONS;
    let start = Arc::new(Barrier::new(MIX_CONNECTIONS + 1));
    let threads: Vec<_> = (0..MIX_CONNECTIONS)
        .map(|connection| {
            let mut c = server.client();
            let start = Arc::clone(&start);
            let scripts = (
                scripts.read_lock.clone(),
                scripts.read_unlock.clone(),
                scripts.write_lock.clone(),
                scripts.write_unlock.clone(),
            );
            thread::spawn(move || {
                let owner = format!("holder-{connection}");
                let mut state = connection as u64 * 7919 + 1;
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                start.wait();
                let mut done = 0;
                while done < pairs_per_connection {
                    let mut pipe = redis::pipe();
                    for _ in 0..MIX_PIPELINE {
                        let key = format!("mix:{}", next() % MIX_KEYS);
                        let write = next() % 100 < write_percent;
                        add_pair(&mut pipe, &key, &owner, write, dlock, &scripts);
                    }
                    let _: Vec<redis::Value> = pipe.query(&mut c).expect("mix pipeline");
                    done += MIX_PIPELINE;
                }
            })
        })
        .collect();
    start.wait();
    let started = Instant::now();
    for t in threads {
        t.join().expect("mix connection");
    }
    (pairs_per_connection * MIX_CONNECTIONS) as f64 / started.elapsed().as_secs_f64()
}

fn add_pair(
    pipe: &mut redis::Pipeline,
    key: &str,
    owner: &str,
    write: bool,
    dlock: bool,
    (read_lock, read_unlock, write_lock, write_unlock): &(String, String, String, String),
) {
    let ttl = 30_000;
    if dlock {
        let acquire = pipe.cmd("DLOCK.ACQUIRE").arg(key).arg(owner).arg(ttl);
        if !write {
            acquire.arg("SHARED");
        }
        pipe.cmd("DLOCK.RELEASE").arg(key).arg(owner);
        return;
    }
    let prefix = format!("{{{key}}}");
    let timeouts = format!("{prefix}:{owner}:rwlock_timeout");
    let channel = format!("redisson_rwlock:{prefix}");
    if write {
        pipe.cmd("EVALSHA")
            .arg(write_lock)
            .arg(1)
            .arg(key)
            .arg(ttl)
            .arg(format!("{owner}:write"));
        pipe.cmd("EVALSHA")
            .arg(write_unlock)
            .arg(2)
            .arg(key)
            .arg(&channel)
            .arg(0)
            .arg(ttl)
            .arg(format!("{owner}:write"));
    } else {
        pipe.cmd("EVALSHA")
            .arg(read_lock)
            .arg(2)
            .arg(key)
            .arg(&timeouts)
            .arg(ttl)
            .arg(owner)
            .arg(format!("{owner}:write"));
        pipe.cmd("EVALSHA")
            .arg(read_unlock)
            .arg(4)
            .arg(key)
            .arg(&channel)
            .arg(&timeouts)
            .arg(&prefix)
            .arg(0)
            .arg(owner);
    }
}
