"""Session-bound locks and fenced writes with redis-py.

A leader holds its lock with SESSION, so the lock goes the moment its connection does, and
writes only through DLOCK.GUARD, so a leader that lost the lock cannot write any more.

Run against a server with the module:  python3 examples/python/session_and_guard.py [port]
"""
import sys

import redis


def main(port):
    leader = redis.Redis(port=port, decode_responses=True)
    standby = redis.Redis(port=port, decode_responses=True)

    # The hold lives as long as this connection (and at most 30 s without EXTEND).
    token = leader.execute_command("DLOCK.ACQUIRE", "jobs:leader", "node-a", 30_000, "SESSION")
    print("node-a leads")

    # Writes go through the lock: run only while jobs:leader is held with this token.
    leader.execute_command("DLOCK.GUARD", "jobs:leader", token, "SET", "jobs:config", "v1")
    print("node-a wrote v1")

    # node-a's process dies: its connection closes, and the lock goes at once instead of
    # when the 30 s lease runs out. The standby, waiting up to 5 s, gets it.
    leader.close()
    new_token = standby.execute_command(
        "DLOCK.ACQUIRE", "jobs:leader", "node-b", 30_000, "SESSION", "WAIT", 5_000
    )
    print("node-b leads, with a newer token" if new_token > token else "token went backwards")

    # A write from the old leader's token is refused; the new leader's goes through.
    try:
        standby.execute_command("DLOCK.GUARD", "jobs:leader", token, "SET", "jobs:config", "stale")
    except redis.ResponseError as e:
        print("old token refused: " + str(e).split(":")[1].strip())
    standby.execute_command("DLOCK.GUARD", "jobs:leader", new_token, "SET", "jobs:config", "v2")
    print("jobs:config is " + standby.get("jobs:config"))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6379)
