"""Time the partitioned types (reminder ZIPs, SFMC objects, promoter ZIP) on a seeded campaign.

Run from the repository root: .venv/bin/python bench/zip_types.py [entries]
Starts its own SecantusDB and moto S3 on free ports, seeds one campaign, runs each type once
through the real worker and prints wall time, rows, files, bytes and the process's peak RSS
growth. SecantusDB is far slower than MongoDB (a Python server): read the numbers relative to
the `fanlist` line, which reads the same entries once with the plain CSV sink.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moto.server import ThreadedMotoServer

from export_service import logs
from export_service.embedded import stop_process, wait_for_port
from export_service.models import ExportType
from export_service.runtime import Services
from export_service.seed import SeedPlan, seed
from export_service.settings import Settings

TYPES = (
    ExportType.FANLIST,
    ExportType.REMINDER_EMAIL,
    ExportType.REMINDER_EMAIL_SAMPLE,
    ExportType.AUTO_REMINDER_EMAIL,
    ExportType.PROMOTER_EMAIL_OPT_IN,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


async def sample_rss(peak: list[float]) -> None:
    """Resident memory every 20 ms (the seeding's own peak would hide an export's)."""
    while True:
        peak[0] = max(peak[0], rss_mib())
        await asyncio.sleep(0.02)


async def bench(mongo_port: int, s3_port: int, entries: int) -> None:
    settings = Settings(
        mongo_uri=f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true",
        mongo_db="bench",
        s3_endpoint_url=f"http://127.0.0.1:{s3_port}",
        s3_addressing_style="path",
        s3_access_key_id="bench",
        s3_secret_access_key="bench",
        jwt_secret="bench-secret-bench-secret-bench-secret",
        log_level="WARNING",
        log_format="json",
    )
    async with Services.open(settings, create_buckets=True) as services:
        started = time.perf_counter()
        plan = SeedPlan(campaign_id="bench", entries=entries)
        await seed(services.db, plan)
        print(f"seeded {entries:,} entries in {time.perf_counter() - started:.1f} s")
        for export_type in TYPES:
            await services.repository.create(
                campaign_id="bench",
                campaign_name="Bench",
                export_type=export_type,
                requester_user_id="bench",
                date_key=None,
                include_all_markets=None,
            )
            before = rss_mib()
            peak = [before]
            sampler = asyncio.create_task(sample_rss(peak))
            started = time.perf_counter()
            (done,) = await services.worker.drain()
            wall = time.perf_counter() - started
            sampler.cancel()
            size = sum(f.bytes for f in done.files)
            print(
                f"{export_type.value:22} {done.status.value:8} {wall:6.1f} s  rows={done.count:>7,}"
                f"  files={len(done.files):>3}  bytes={size:>11,}"
                f"  RSS {before:.0f} MiB, peak +{peak[0] - before:.0f} MiB"
            )


def main() -> None:
    entries = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logs.configure("console", "WARNING")
    mongo_port, s3_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bench-secantus-") as data:
        mongo = subprocess.Popen(
            [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(mongo_port),
             "--storage-path", data, "--log-level", "WARNING"],
        )  # fmt: skip
        s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
        s3.start()
        try:
            wait_for_port(mongo_port, mongo, "SecantusDB", 60)
            asyncio.run(bench(mongo_port, s3_port, entries))
        finally:
            s3.stop()
            stop_process(mongo)


if __name__ == "__main__":
    main()
