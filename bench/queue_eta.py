"""How far off the queue ETA (contract §9) is: predicted start vs. actual start.

One campaign of `--entries` entries (`export_service.dev.seed`) on the embedded servers. First
`--warmup` runs of each type build the history the estimate reads. Then `--queued` exports of
those types (cycling) are queued at once, each answer's `queue.etaSeconds` noted, and the
worker runs them in this process; the error is `date.triggered - date.created - etaSeconds`.

    .venv/bin/python -m bench.queue_eta --entries 20000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from bench.benchlib import (
    add_results_flag,
    machine,
    moto_server,
    s3_settings,
    secantus_server,
    write_results,
)
from export_service.dev.seed import SeedPlan, seed
from export_service.models import ExportType
from export_service.runtime import Services
from export_service.settings import Settings

CAMPAIGN = "eta-campaign"
TYPES = [
    ExportType.ENTRIES,
    ExportType.CODES,
    ExportType.FANLIST,
    ExportType.ARTIST_OPT_IN,
    ExportType.VERIFIED_ENTRIES,
    ExportType.LIVENATION_OPT_IN,
]


async def create(services: Services, export_type: ExportType) -> str:
    export, _ = await services.repository.create(
        campaign_id=CAMPAIGN,
        campaign_name="ETA",
        export_type=export_type,
        requester_user_id="bench",
        date_key=None,
        include_all_markets=None,
    )
    return export.id


async def measure(settings: Settings, entries: int, warmup: int, queued: int) -> dict[str, object]:
    async with Services.open(settings, create_buckets=True) as services:
        try:
            await seed(services.db, SeedPlan(campaign_id=CAMPAIGN, entries=entries, markets=4))
            for _ in range(warmup):
                for export_type in TYPES:
                    await create(services, export_type)
                    await services.worker.drain()
            predicted: dict[str, float | None] = {}
            for i in range(queued):
                export_id = await create(services, TYPES[i])
                export = await services.repository.get(export_id)
                assert export is not None
                views = await services.estimates.views([export])
                predicted[export_id] = views.get(export_id, {}).get("etaSeconds")
            await services.worker.drain()
            rows: list[dict[str, Any]] = []
            for export_id, eta in predicted.items():
                done = await services.repository.get(export_id)
                assert done is not None
                waited = (done.date["triggered"] - done.date["created"]).total_seconds()
                rows.append(
                    {"type": done.export_type.value, "eta": eta, "waited": round(waited, 2),
                     "error": None if eta is None else round(waited - eta, 2)}
                )  # fmt: skip
            errors = [abs(float(r["error"])) for r in rows if r["error"] is not None]
            return {
                "entries": entries,
                "rows": rows,
                "abs_error_median_s": round(statistics.median(errors), 2) if errors else None,
                "abs_error_max_s": round(max(errors), 2) if errors else None,
                "waited_max_s": max(float(r["waited"]) for r in rows),
            }
        finally:
            await services.client.drop_database(settings.mongo_db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--queued", type=int, default=len(TYPES), help="at most one per type")
    add_results_flag(parser)
    args = parser.parse_args()
    with secantus_server() as uri, moto_server() as s3:
        settings = Settings(
            mongo_uri=uri, mongo_db="eta", jwt_secret="bench-secret-long-enough-for-hs256",
            log_level="WARNING", mongo_timeout_ms=120_000, **s3_settings(s3),
        )  # fmt: skip
        result = asyncio.run(measure(settings, args.entries, args.warmup, args.queued))
    result["machine"] = machine()
    for row in result["rows"]:  # type: ignore[attr-defined]
        print(row)
    print({k: v for k, v in result.items() if k not in ("rows", "machine")})
    print(write_results("queue_eta", result, args.write_results))


if __name__ == "__main__":
    main()
