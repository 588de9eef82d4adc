"""The sync client through a Redis Cluster client and a Sentinel-discovered master."""

from __future__ import annotations

import os
import subprocess
import unittest

import redis
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from redis_dlock import Lock, NotHeld

from .server import REDIS_SERVER, Server, free_port, wait_until


class ClusterTest(unittest.TestCase):
    def setUp(self) -> None:
        self.server = Server(True, "--cluster-enabled", "yes")
        self.addCleanup(self.server.stop)
        self.server.client().execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        wait_until("the one-node cluster to serve every slot",
                   lambda: self.server.client().cluster("info")["cluster_state"] == "ok")
        self.rc = RedisCluster(host="127.0.0.1", port=self.server.port)
        self.addCleanup(self.rc.close)

    def test_locks_keepalive_and_hash_tagged_guards_work_through_the_cluster_client(self) -> None:
        with Lock(self.rc, "{acct:7}:lock", 0.3, keepalive=True).acquire(wait=1) as lease:
            self.assertEqual(lease.guard("INCRBY", "{acct:7}:balance", 10), 10)
            self.assertFalse(lease.lost.wait(0.5))
            with self.assertRaises(redis.ResponseError) as caught:
                lease.guard("INCRBY", "other:balance", 10)
            self.assertEqual(str(caught.exception), "Keys in request don't hash to the same slot")
        self.assertIsNone(self.rc.execute_command("DLOCK.INFO", "{acct:7}:lock"))


class SentinelTest(unittest.TestCase):
    def setUp(self) -> None:
        self.master = Server()
        self.addCleanup(self.master.stop)
        port = free_port()
        config = os.path.join(self.master.dir, "sentinel.conf")
        with open(config, "w") as f:
            f.write(f"port {port}\nbind 127.0.0.1\n"
                    f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n")
        self.sentinel_process = subprocess.Popen(
            [REDIS_SERVER, config, "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self.sentinel_process.wait)
        self.addCleanup(self.sentinel_process.kill)
        self.sentinel = Sentinel([("127.0.0.1", port)])
        wait_until("the sentinel to answer", self._answers)

    def _answers(self) -> bool:
        try:
            return bool(self.sentinel.discover_master("mymaster"))
        except (redis.ConnectionError, redis.sentinel.MasterNotFoundError):
            return False

    def test_a_sentinel_master_client_works_as_is(self) -> None:
        r = self.sentinel.master_for("mymaster")
        with Lock(r, "jobs:leader", 0.3, keepalive=True, session=True) as lease:
            self.assertFalse(lease.lost.wait(0.5))
            self.assertEqual(lease.guard("SET", "jobs:config", "v1"), b"OK")
        self.assertTrue(lease.released)
        self.assertFalse(lease.lost.is_set())
        with self.assertRaises(NotHeld):
            lease.guard("SET", "jobs:config", "v2")
        r.close()


if __name__ == "__main__":
    unittest.main()
