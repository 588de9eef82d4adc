"""Test harness: real redis-servers with the freshly built dlock module, on free loopback
ports, each in a temporary directory of its own, killed when the test is done.

The module comes from `DLOCK_MODULE` (default: the repository's target/release/libdlock.so),
the server binary from `REDIS_SERVER` (default `redis-server` on PATH).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import redis

REPO = Path(__file__).resolve().parents[3]
MODULE = os.environ.get("DLOCK_MODULE") or str(REPO / "target/release/libdlock.so")
REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, condition: Callable[[], Any], limit: float = 10.0) -> Any:
    """Poll `condition` every few milliseconds until it is truthy; its value."""
    deadline = time.monotonic() + limit
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
    return value


class Server:
    """A redis-server with the module loaded (or not, with `module=False`)."""

    def __init__(
        self, module: bool = True, *config: str, module_args: Sequence[str] = (),
        binary: str | None = None, env: dict[str, str] | None = None,
    ) -> None:
        """`binary` instead of REDIS_SERVER, `env` added to the server's environment (both
        kept for restarts)."""
        self.dir = tempfile.mkdtemp(prefix="dlock-py-")
        self.binary = binary or REDIS_SERVER
        self.env = {**os.environ, **env} if env else None
        self._args = ["--bind", "127.0.0.1", "--save", "", "--enable-debug-command", "yes",
                      "--dir", self.dir, "--logfile", "redis.log", *config]
        if module:
            self._args += ["--loadmodule", MODULE, *module_args]
        # Another process may take the probed port before the server binds it: retry.
        for _ in range(20):
            self.port = free_port()
            if self._launch():
                return
            self.kill()
        raise RuntimeError(f"redis-server did not start; see {self.dir}/redis.log")

    def _launch(self) -> bool:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), *self._args], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self._answers()

    def restart(self) -> None:
        """kill -9, then start again on the same port from the same directory (its AOF or
        RDB files, less whatever was not yet written to disk)."""
        self.kill()
        for _ in range(100):
            if self._launch():
                return
            self.kill()
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not restart; see {self.dir}/redis.log")

    def _answers(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with self.client() as probe:
                    return probe.info("server")["process_id"] == self.process.pid
            except redis.ConnectionError:
                time.sleep(0.01)
        return False

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, **options)

    def async_client(self, **options: Any) -> Any:
        import redis.asyncio

        return redis.asyncio.Redis(port=self.port, **options)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.thaw()
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def client_ids(r: redis.Redis, name: str) -> list[str]:
    """Ids of the connections named `name` (CLIENT LIST)."""
    return [c["id"] for c in r.client_list() if c["name"] == name]


def connection_count(r: redis.Redis) -> int:
    return len(r.client_list())


def calls(r: redis.Redis, command: str) -> int:
    """How many times the server ran `command` (INFO commandstats)."""
    return r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


class Monitor:
    """The commands the server runs, in order, from MONITOR."""

    def __init__(self, server: Server) -> None:
        self._client = server.client()
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self._client.ping()
        self._marker_client = server.client()

    def commands_until_now(self) -> list[str]:
        """Every command seen so far (up to a marker sent now), as 'NAME arg ...' lines."""
        marker = f"marker-{time.monotonic_ns()}"
        self._marker_client.echo(marker)
        seen = []
        for event in self._monitor.listen():
            if marker in event["command"]:
                break
            seen.append(event["command"])
        self._monitor.__exit__(None, None, None)
        self._client.close()
        self._marker_client.close()
        return seen
