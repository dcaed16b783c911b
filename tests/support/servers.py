"""The real servers the tests run against, and their addresses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure

from export_service.dev.embedded import SecantusServer, free_port, wait_for_port

__all__ = ["ForkedMongo", "SecantusServer", "answers", "free_port", "port_of"]


async def answers(db: AsyncDatabase[Any]) -> bool:
    """Whether the server behind `db`'s client answers a ping now (for `until`)."""
    try:
        await db.command("ping")
    except ConnectionFailure:
        return False
    return True


def port_of(uri: str) -> int:
    port = urlsplit(uri).port
    assert port is not None, uri
    return port


LAUNCHER = """
import os, sys
import secantus.cli
# Imported once (about 1.3 s of numpy and shapely); each start is then a fork.
child = None
for line in sys.stdin:
    if child is not None:
        os.waitpid(child, 0)  # SIGKILLed by the test: gone before its port is reused
    child = os.fork()
    if child == 0:
        sys.stdin.close()
        os._exit(secantus.cli.main(sys.argv[1:]))
    print(child, flush=True)
"""


class ForkedMongo:
    """A SecantusDB whose restarts take a fork, not a fresh interpreter: a process that has
    imported the server forks one real server process per start. `kill()` SIGKILLs that
    server process; the data directory and the port stay."""

    def __init__(self, storage: Path) -> None:
        self.port = free_port()
        self.pid: int | None = None
        self.launcher = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "--host", "127.0.0.1", "--port", str(self.port),
             "--storage-path", str(storage / "data"), "--log-level", "ERROR",
             # Without it SecantusDB loses every write since its start on SIGKILL (its
             # journal is not flushed); MongoDB's journal keeps them.
             "--sync-on-commit"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=os.environ | {"OPENBLAS_NUM_THREADS": "1"},
        )  # fmt: skip

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        assert self.launcher.stdin is not None and self.launcher.stdout is not None
        self.launcher.stdin.write(b"start\n")
        self.launcher.stdin.flush()
        self.pid = int(self.launcher.stdout.readline())
        wait_for_port(self.port, self.launcher, "SecantusDB", 30)

    def kill(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self.pid = None

    def close(self) -> None:
        self.kill()
        self.launcher.kill()
        self.launcher.wait(10)
