"""End-to-end benchmark on the embedded servers: raw cursor drain vs the export through the worker.

SecantusDB (the embedded MongoDB-wire server) and moto's S3 each run as a process of their own.
One campaign of `--entries` entries is seeded with `export_service.seed.seed`. Then, per export
type:

* drain: everything the export reads, read and decoded and nothing else: the campaign and its
  markets, the spec's own preparation reads (e.g. the reminder types' plan pass), and every
  source cursor with the export's filter, projection, sort and batch size, as raw batches.
* export: one export through the worker (`worker.process()`: sweep, claim, count, rows, CSV or
  ZIP, S3 multipart upload, FINISHED), timed from the claim to the FINISHED write.

The target is export time <= 1.25 x drain time: the embedded server reads about 20-25 k
documents/s, so the exporter must add little on top of reading.

    .venv/bin/python bench/end_to_end.py
    .venv/bin/python bench/end_to_end.py --entries 20000 --types entries
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bson
from benchlib import (
    load,
    machine,
    machine_table,
    moto_server,
    peak_rss_mb,
    s3_settings,
    secantus_server,
    table,
    write_results,
)
from pipeline import project

from export_service import db as dbmod
from export_service.exporters import EXPORTERS
from export_service.exporters.runner import load_markets, read_cursor
from export_service.exporters.spec import Context, ExporterSpec, Source
from export_service.models import Export, ExportStatus, ExportType, utcnow
from export_service.runtime import Services
from export_service.seed import SeedPlan, generate, seed
from export_service.settings import Settings

CAMPAIGN = "bench-campaign"
ENTRIES_CHECKED = 2_000
TARGET_RATIO = 1.25
# One plain CSV type and one ZIP type; the joined types are run on a smaller campaign (see
# docs/benchmarks.md: their per-batch `$in` join is quadratic on the embedded server).
DEFAULT_TYPES = ["entries", "reminderEmail"]


async def _sources(spec: ExporterSpec, ctx: Context) -> list[Source]:
    if spec.sources is None:
        return [spec.source]
    return [source async for source in spec.sources(ctx)]


async def drain(
    services: Services, export_type: ExportType, date_key: str | None
) -> dict[str, Any]:
    """Read what the export reads, exactly as its cursors do, and nothing more."""
    spec = EXPORTERS[export_type]
    export = Export(
        id="bench-drain",
        campaign_id=CAMPAIGN,
        campaign_name="",
        export_type=export_type,
        status=ExportStatus.TRIGGERED,
        requester_user_id="bench",
        date_key=date_key,
        date={"triggered": utcnow()},
    )
    codec_options = services.db.codec_options
    started = time.perf_counter()
    campaign = await services.db["campaigns"].find_one({"_id": CAMPAIGN})
    assert campaign is not None
    ctx = Context(export=export, db=services.db, settings=services.settings, campaign=campaign)
    if spec.needs_markets:
        await load_markets(ctx)
    if spec.prepare is not None:
        await spec.prepare(ctx)
    prepared = time.perf_counter()
    documents = 0
    for source in await _sources(spec, ctx):
        ctx.source = source
        async for raw in read_cursor(source, ctx):
            documents += len(bson.decode_all(raw, codec_options))
    drained = time.perf_counter()
    # Not part of the drain (it reads no rows on MongoDB, where the index answers it), but the
    # export runs it first (DESIGN §5), so its cost is shown next to the export's.
    if spec.count is not None:
        await spec.count(ctx)
    return {
        "seconds": round(drained - started, 3),
        "prepare_seconds": round(prepared - started, 3),
        "documents": documents,
        "count_seconds": round(time.perf_counter() - drained, 3) if spec.count else None,
    }


async def export(
    services: Services, export_type: ExportType, date_key: str | None
) -> dict[str, Any]:
    created, _ = await services.repository.create(
        campaign_id=CAMPAIGN,
        campaign_name="Bench",
        export_type=export_type,
        requester_user_id="bench",
        date_key=date_key,
        include_all_markets=None,
    )
    started = time.perf_counter()
    done = await services.worker.process()
    seconds = time.perf_counter() - started
    assert done is not None and done.id == created.id
    if done.status is not ExportStatus.FINISHED:
        raise RuntimeError(f"{export_type.value} ended {done.status.value}: {done.error}")
    triggered, finished = done.date["triggered"], done.date["finished"]
    return {
        "seconds": round(seconds, 3),
        "claim_to_finished_seconds": round((finished - triggered).total_seconds(), 3),
        "rows": done.count,
        "files": len(done.files),
        "bytes": sum(f.bytes for f in done.files),
    }


async def recording_matches_server(services: Services, entries: int) -> bool:
    """Does bench/pipeline.py's recording look like what the server returns? Its projection
    emulation must give the documents the real `entries` query gives, batch for batch."""
    expected: list[dict[str, Any]] = []
    for name, docs in generate(SeedPlan(campaign_id=CAMPAIGN, entries=entries)):
        if name == "entries":
            expected.extend(docs)
            if len(expected) >= ENTRIES_CHECKED:
                break
    export = Export(
        id="bench-check",
        campaign_id=CAMPAIGN,
        campaign_name="",
        export_type=ExportType.ENTRIES,
        status=ExportStatus.TRIGGERED,
        requester_user_id="bench",
    )
    campaign = await services.db["campaigns"].find_one({"_id": CAMPAIGN})
    assert campaign is not None
    ctx = Context(export=export, db=services.db, settings=services.settings, campaign=campaign)
    spec = EXPORTERS[ExportType.ENTRIES]
    await load_markets(ctx)
    if spec.prepare is not None:
        await spec.prepare(ctx)
    projection = spec.source.fields(ctx) or {}
    first = await anext(read_cursor(spec.source, ctx))
    served = bson.decode_all(first, services.db.codec_options)[:ENTRIES_CHECKED]
    return served == [project(doc, projection) for doc in expected[: len(served)]]


async def run(args: argparse.Namespace, uri: str, s3: str) -> dict[str, Any]:
    settings = Settings(
        mongo_uri=uri,
        mongo_db="bench",
        **s3_settings(s3),
        bucket_exports="bench-exports",
        bucket_scoring="bench-scoring",
        bucket_vf_scoring="bench-vf-scoring",
        bucket_sfmc="bench-sfmc",
        # The embedded server answers nothing else while it builds a large result, heartbeats
        # included; with the default 5 s the driver would declare it down mid-export.
        mongo_timeout_ms=120_000,
    )
    results: dict[str, Any] = {"entries": args.entries, "batch_size": settings.batch_size}
    async with Services.open(settings, create_buckets=True) as services:
        started = time.perf_counter()
        seeded = await services.db["entries"].count_documents({"campaignId": CAMPAIGN})
        if seeded != args.entries:  # a kept --data-dir holds the campaign already
            await services.client.drop_database(settings.mongo_db)
            await dbmod.ensure_indexes(services.db, settings)
            counts = await seed(services.db, SeedPlan(campaign_id=CAMPAIGN, entries=args.entries))
        else:
            counts = {"reused": seeded}
        results["seed"] = {"seconds": round(time.perf_counter() - started, 1), "documents": counts}
        print(f"seeded {counts} in {results['seed']['seconds']} s", flush=True)
        # Exports of earlier runs in a kept database are history, like any service has.
        await services.db["exports"].delete_many({"status": {"$in": ["PENDING", "TRIGGERED"]}})
        results["recording_matches_server"] = await recording_matches_server(services, args.entries)
        print(f"pipeline recording matches the server: {results['recording_matches_server']}")
        wave = await services.db["codes"].find_one({"waveDateKey": {"$ne": None}})
        runs: list[dict[str, Any]] = []
        for name in args.types:
            export_type = ExportType(name)
            if export_type not in EXPORTERS:
                runs.append({"type": name, "skipped": "not registered in EXPORTERS"})
                continue
            date_key = (
                wave["waveDateKey"] if wave and export_type is ExportType.CODE_WAVES else None
            )
            for attempt in range(args.repeat):
                load_before = load()
                drained = await drain(services, export_type, date_key)
                exported = await export(services, export_type, date_key)
                ratio = round(exported["seconds"] / drained["seconds"], 2)
                count = drained["count_seconds"] or 0.0
                exported["ratio_without_count"] = round(
                    (exported["seconds"] - count) / drained["seconds"], 2
                )
                runs.append(
                    {
                        "type": name,
                        "attempt": attempt + 1,
                        "drain": drained,
                        "export": exported,
                        "ratio": ratio,
                        "target_met": ratio <= TARGET_RATIO,
                        "load_before": load_before,
                        "load_after": load(),
                    }
                )
                print(
                    f"  {name}: drain {drained['seconds']} s, export {exported['seconds']} s, "
                    f"ratio {ratio}",
                    flush=True,
                )
        results["runs"] = runs
        if args.data_dir is None:
            await services.client.drop_database(settings.mongo_db)
    results["bench_process_peak_rss_mb"] = peak_rss_mb()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--types", nargs="+", default=DEFAULT_TYPES)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--data-dir", type=Path, help="keep the database here and reuse its seeded campaign"
    )
    parser.add_argument("--results", default="end_to_end", help="bench/results/<name>.json")
    args = parser.parse_args()
    info = machine()
    with secantus_server(args.data_dir) as uri, moto_server() as s3:
        results = asyncio.run(run(args, uri, s3))
    headers = ["type", "drain s", "docs drained", "count s", "export s", "rows", "files", "MB",
               "export/drain", "<= 1.25", "(export-count)/drain", "load before",
               "load after"]  # fmt: skip
    body = []
    for r in results["runs"]:
        if "skipped" in r:
            body.append([r["type"], "skipped: " + r["skipped"], *[""] * 11])
            continue
        body.append(
            [r["type"], r["drain"]["seconds"], r["drain"]["documents"],
             r["drain"]["count_seconds"] or "-", r["export"]["seconds"],
             r["export"]["rows"], r["export"]["files"], round(r["export"]["bytes"] / 1e6, 1),
             r["ratio"], "yes" if r["target_met"] else "NO", r["export"]["ratio_without_count"],
             " ".join(map(str, r["load_before"])), " ".join(map(str, r["load_after"]))]
        )  # fmt: skip
    print(machine_table(info))
    print(f"seed: {results['entries']:,} entries in {results['seed']['seconds']} s")
    print(
        table(f"end to end on the embedded servers ({results['entries']:,} entries)", headers, body)
    )
    path = write_results(args.results, {"machine": info, **results})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
