"""Time the partitioned types (reminder ZIPs, SFMC objects, promoter ZIP) on a seeded campaign.

Run from the repository root: .venv/bin/python -m bench.zip_types [entries]
Starts its own SecantusDB and moto S3 (processes of their own) on free ports, seeds one
campaign, runs each type once through the real worker and prints wall time, rows, files, bytes
and the process's peak RSS growth. SecantusDB is far slower than MongoDB (a Python server):
read the numbers relative to the `fanlist` line, which reads the same entries once with the
plain CSV sink.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

from bench.benchlib import PARTITIONED_TYPES, moto_server, s3_settings, secantus_server
from export_service import logs
from export_service.dev.seed import SeedPlan, seed
from export_service.runtime import Services
from export_service.settings import Settings

TYPES = PARTITIONED_TYPES


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


async def sample_rss(peak: list[float]) -> None:
    """Resident memory every 20 ms (the seeding's own peak would hide an export's)."""
    while True:
        peak[0] = max(peak[0], rss_mib())
        await asyncio.sleep(0.02)


async def bench(mongo_uri: str, s3_endpoint: str, entries: int) -> None:
    settings = Settings(
        mongo_uri=mongo_uri,
        mongo_db="bench",
        **s3_settings(s3_endpoint),
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("entries", type=int, nargs="?", default=50_000)
    entries: int = parser.parse_args().entries
    logs.configure("console", "WARNING")
    with secantus_server() as uri, moto_server() as s3:
        asyncio.run(bench(uri, s3, entries))


if __name__ == "__main__":
    main()
