"""What the benchmarks share: the machine and versions, load, servers, tables and results."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from export_service.dev.embedded import (
    SecantusServer,
    free_port,
    launch,
    s3_command,
    stop_process,
)
from export_service.models import ExportType
from export_service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMMITTED_RESULTS = ROOT / "bench" / "results"
# A run writes here unless asked for the committed results, so trying a benchmark leaves the git
# tree as it was.
SCRATCH_RESULTS = Path(tempfile.gettempdir()) / "export-service-bench"

# The partitioned types, after `fanlist`: the one-file type that reads the same entries once,
# which their timings are read against.
PARTITIONED_TYPES = (
    ExportType.FANLIST,
    ExportType.REMINDER_EMAIL,
    ExportType.REMINDER_EMAIL_SAMPLE,
    ExportType.AUTO_REMINDER_EMAIL,
    ExportType.PROMOTER_EMAIL_OPT_IN,
)


def load() -> list[float]:
    """The 1/5/15-minute load averages: other work on the machine shows up here."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    versions = {"python": platform.python_version()}
    for package in ("pymongo", "SecantusDB", "moto", "aiobotocore", "aiohttp"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "cpu_model": model or platform.processor(),
        "platform": platform.platform(),
        "versions": versions,
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mb() -> float:
    return _status_mb("self", "VmRSS")


def process_peak_rss_mb(pid: int) -> float:
    """Another (running) process's peak resident set size."""
    return _status_mb(str(pid), "VmHWM")


def _status_mb(pid: str, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 (keeps objects in memory) in a process of its own on 127.0.0.1 (its memory and
    CPU are not the benchmark's); yields its endpoint URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as logs:
        process = launch(s3_command(port), port, "moto", Path(logs) / "s3.log")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(process)


@contextlib.contextmanager
def secantus_server(data_dir: Path | None = None) -> Iterator[str]:
    """SecantusDB (the embedded MongoDB-wire server) in a process of its own on 127.0.0.1;
    yields its URI.

    Its data lives in `data_dir` when given (kept, so a seeded database can be reused), else
    in a temporary directory.
    """
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-db-")))
        server = SecantusServer(data_dir)
        server.start()
        try:
            yield server.uri
        finally:
            server.stop()


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `export-service worker` use exactly these settings (quiet:
    warnings and errors only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_SERVICE_")}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env["EXPORT_SERVICE_" + name.upper()] = str(value)
    env["EXPORT_SERVICE_LOG_LEVEL"] = "WARNING"
    return env


def s3_settings(endpoint: str) -> dict[str, Any]:
    return {
        "s3_endpoint_url": endpoint,
        "s3_addressing_style": "path",
        "s3_access_key_id": "bench",
        "s3_secret_access_key": "bench",
    }


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine_table(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (
        f"machine: {info['cores']} cores, {info['memory_gib']} GiB, {info['cpu_model']}\n"
        f"versions: {versions}"
    )


def add_results_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write-results",
        action="store_true",
        help=f"write bench/results/NAME.json (committed) instead of {SCRATCH_RESULTS}/NAME.json",
    )


def write_results(name: str, data: dict[str, Any], committed: bool = False) -> Path:
    folder = COMMITTED_RESULTS if committed else SCRATCH_RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
