// Quorum-lock cycles from Node for the benchmark's `quorum` section: node-redlock (v5, on
// ioredis) on the servers listed, printing one line of JSON with the same fields as
// driver.py (cycles/s, p50 and p99 of acquire and of release, in ms).
//
//   NODE_PATH=target/bench/node/node_modules node driver.cjs --ports 7001,7002,7003 \
//     --seconds 3 [--contenders 4]
//
// One contender: acquire → release on a key of its own, one attempt each (retryCount 0).
// Several: concurrent loops on one key (one connection per server, shared, as an application
// would), each acquire → hold 1 ms → release → think 1 ms, acquiring with redlock's default
// retries (10, every 200 ± 100 ms); only granted acquires are timed. Leases are 10 s.

"use strict";

const { performance } = require("node:perf_hooks");
const Redis = require("ioredis");
const Redlock = require("redlock").default;

const TTL_MS = 10_000;
const HOLD_MS = 1;
const THINK_MS = 1;

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) {
    return null;
  }
  return sorted[Math.min(Math.floor(sorted.length * p), sorted.length - 1)];
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const ports = option("ports", "").split(",").filter(Boolean).map(Number);
  const seconds = Number(option("seconds", "3"));
  const contenders = Number(option("contenders", "1"));
  const contended = contenders > 1;
  const clients = ports.map((port) => new Redis({ host: "127.0.0.1", port }));
  await Promise.all(clients.map((c) => c.ping()));
  const redlock = new Redlock(clients, contended ? {} : { retryCount: 0 });
  // Redlock emits an error event per refused vote; without a listener Node would throw.
  redlock.on("error", () => {});
  const prefix = `bench:node:${Math.random().toString(16).slice(2, 10)}`;
  const keys = Array.from({ length: contenders }, (_, n) => (contended ? prefix : `${prefix}:${n}`));
  // Connections and scripts before the clock starts.
  await (await redlock.acquire([keys[0]], TTL_MS)).release();

  const acquires = [];
  const releases = [];
  let failed = 0;
  const start = performance.now();
  const end = start + seconds * 1000;
  async function loop(key) {
    while (performance.now() < end) {
      const started = performance.now();
      let lock;
      try {
        lock = await redlock.acquire([key], TTL_MS);
      } catch {
        failed += 1;
        continue;
      }
      const granted = performance.now();
      if (contended) {
        await sleep(HOLD_MS);
      }
      const releasing = performance.now();
      await lock.release();
      const released = performance.now();
      acquires.push(granted - started);
      releases.push(released - releasing);
      if (contended) {
        await sleep(THINK_MS);
      }
    }
  }
  await Promise.all(keys.map(loop));
  const took = (performance.now() - start) / 1000;
  console.log(JSON.stringify({
    client: "node-redlock",
    servers: clients.length,
    contenders,
    cycles: acquires.length,
    failed,
    seconds: Number(took.toFixed(3)),
    cycles_per_s: acquires.length / took,
    acquire_p50_ms: percentile(acquires, 0.5),
    acquire_p99_ms: percentile(acquires, 0.99),
    release_p50_ms: percentile(releases, 0.5),
    release_p99_ms: percentile(releases, 0.99),
  }));
  await Promise.all(clients.map((c) => c.quit()));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
