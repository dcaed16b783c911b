"""The real servers the tests run against: SecantusDB as a child process of its own."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from export_service.embedded import free_port, mongo_command, stop_process, wait_for_port

__all__ = ["MongoServer", "free_port", "port_of"]


def port_of(uri: str) -> int:
    port = urlsplit(uri).port
    assert port is not None, uri
    return port


class MongoServer:
    """A SecantusDB process that can be stopped and started again on the same port and data."""

    def __init__(self, storage: Path) -> None:
        self.port = free_port()
        self.storage = storage
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        with (self.storage / "server.log").open("ab") as out:
            self.proc = subprocess.Popen(
                mongo_command(self.port, self.storage / "data"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.proc, "SecantusDB", 60)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)
