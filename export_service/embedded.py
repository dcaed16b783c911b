"""Embedded servers for `dev` and a configuration-free start: SecantusDB and moto's S3.

Both run as child processes (SecantusDB is GPL-2.0 and is never imported here). A server already
listening on the configured port is reused, so `dev` in one terminal and `worker` in another
share one set of servers.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from export_service.settings import Settings

log = structlog.get_logger(__name__)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def mongo_command(port: int, storage: Path) -> list[str]:
    return [
        sys.executable, "-m", "secantus",
        "--host", "127.0.0.1", "--port", str(port),
        "--storage-path", str(storage), "--log-level", "WARNING",
    ]  # fmt: skip


def s3_command(port: int) -> list[str]:
    moto = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    return [moto, "-H", "127.0.0.1", "-p", str(port)]


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _start(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603


@contextlib.contextmanager
def embedded_servers(settings: Settings) -> Iterator[None]:
    """Start (or reuse) the embedded MongoDB-wire and S3 servers for as long as the block runs."""
    data = Path(settings.data_dir)
    started: list[subprocess.Popen[bytes]] = []
    try:
        if port_open(settings.embedded_mongo_port):
            log.info("embedded_reused", server="mongodb")
        else:
            proc = _start(
                mongo_command(settings.embedded_mongo_port, data / "mongo"), data / "mongo.log"
            )
            started.append(proc)
            wait_for_port(settings.embedded_mongo_port, proc, "SecantusDB", 60)
            log.info("embedded_started", server="mongodb",
                     port=settings.embedded_mongo_port)  # fmt: skip
        if settings.s3_endpoint_url is None:
            if port_open(settings.embedded_s3_port):
                log.info("embedded_reused", server="s3")
            else:
                proc = _start(s3_command(settings.embedded_s3_port), data / "s3.log")
                started.append(proc)
                wait_for_port(settings.embedded_s3_port, proc, "moto S3 server", 60)
                log.info("embedded_started", server="s3",
                         port=settings.embedded_s3_port)  # fmt: skip
        yield
    finally:
        for proc in reversed(started):
            stop_process(proc)
