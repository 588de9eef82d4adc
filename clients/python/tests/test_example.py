"""The README's example runs against a real server, so it cannot rot."""

import os
import subprocess
import sys
import unittest
from pathlib import Path

from .server import Server

PACKAGE = Path(__file__).resolve().parents[1]


class ExampleTest(unittest.TestCase):
    def test_the_lock_example_runs(self) -> None:
        server = Server()
        self.addCleanup(server.stop)
        env = dict(os.environ, PYTHONPATH=str(PACKAGE / "src"))
        run = subprocess.run(
            [sys.executable, str(PACKAGE / "examples/lock.py"), str(server.port)],
            capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertEqual(run.stdout.splitlines(), [
            "acquired, token is a number",
            "wrote v1",
            "still held after 1 s",
            "lost: stopping work",
            "write of v2 refused",
            "report:data is v1",
        ])


if __name__ == "__main__":
    unittest.main()
