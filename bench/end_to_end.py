"""End-to-end benchmark on the embedded servers: raw cursor drain vs the export through the worker.

SecantusDB (the embedded MongoDB-wire server) and moto's S3 each run as a process of their own.
One campaign of `--entries` entries is seeded with `export_service.dev.seed.seed`. Then, per export
type:

* export: one export through the worker (`worker.process()`: sweep, claim, count, rows, CSV or
  ZIP, S3 multipart upload, FINISHED), timed from the claim to the FINISHED write. A command
  listener records every read it sends to the source collections.
* drain: those reads sent again (same filter, projection, sort and batch size: the campaign, its
  markets, the preparation reads such as the reminder types' plan pass, every source cursor and
  the join cursors) and every document they return read and decoded, nothing else. The
  preliminary count is left out of the drain (on MongoDB an index answers it) and timed alone.

The target is export time <= 1.25 x drain time: the embedded server reads about 20-25 k
documents/s, so the exporter must add little on top of reading. A check first compares the
`entries` query's first batch with what bench/pipeline.py's recording would hold.

    .venv/bin/python -m bench.end_to_end
    .venv/bin/python -m bench.end_to_end --entries 20000 --types entries
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import bson
from pymongo import monitoring

from bench.benchlib import (
    add_results_flag,
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
from bench.pipeline import project
from export_service import db as dbmod
from export_service.dev.seed import SeedPlan, generate, seed
from export_service.exporters import EXPORTERS
from export_service.exporters.runner import load_markets, read_cursor
from export_service.exporters.spec import Context
from export_service.models import Export, ExportStatus, ExportType
from export_service.runtime import Services
from export_service.settings import Settings

CAMPAIGN = "bench-campaign"
ENTRIES_CHECKED = 2_000
TARGET_RATIO = 1.25


class Reads(monitoring.CommandListener):
    """The reads of source collections sent while `on` is set (queue bookkeeping left out), how
    long the server took for the preliminary count among them, and when every command of the
    database (bookkeeping included) started and ended, for the export's phases."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.on = False
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.count_seconds = 0.0
        # (started, ended, collection) of every command answered while `on`, perf_counter times.
        self.timeline: list[tuple[float, float, str]] = []
        self._counts: set[int] = set()
        self._started: dict[int, tuple[float, str]] = {}

    def reset(self) -> None:
        self.commands, self.count_seconds, self._counts = [], 0.0, set()
        self.timeline, self._started = [], {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if not self.on or event.database_name != self.database:
            return
        collection = event.command.get("collection" if name == "getMore" else name)
        if isinstance(collection, str):
            self._started[event.request_id] = (time.perf_counter(), collection)
        if name not in READS:
            return
        if event.command[name] not in QUEUE:
            command = copy.deepcopy(dict(event.command))
            self.commands.append((name, command))
            if is_count(name, command):
                self._counts.add(event.request_id)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if (began := self._started.pop(event.request_id, None)) is not None:
            self.timeline.append((began[0], time.perf_counter(), began[1]))
        if event.request_id in self._counts:
            self._counts.discard(event.request_id)
            self.count_seconds += event.duration_micros / 1e6

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._started.pop(event.request_id, None)
        self._counts.discard(event.request_id)

    def phases(self, started: float, ended: float) -> dict[str, Any]:
        """Where an export's time went, from the commands it sent: `head` from its start to its
        first read of a source collection (sweep, claim), `tail` from the answer to its last
        source read to its end (the last batches' encoding and upload, completing the objects,
        the ending writes), and its round trips to the queue's collection with their time."""
        source = [(a, b) for a, b, collection in self.timeline if collection not in QUEUE]
        queue = [(a, b) for a, b, collection in self.timeline if collection in QUEUE]
        first = min((a for a, _ in source), default=None)
        last = max((b for _, b in source), default=None)
        return {
            "head_seconds": round(first - started, 3) if first is not None else None,
            "tail_seconds": round(ended - last, 3) if last is not None else None,
            "queue_round_trips": len(queue),
            "queue_seconds": round(sum(b - a for a, b in queue), 3),
            "queue_round_trips_after_rows": (
                sum(1 for a, _ in queue if a >= last) if last is not None else 0
            ),
        }


# The queue's bookkeeping collections (everything else the export reads is source data).
QUEUE = ("exports", "webhook_events")
READS = ("find", "aggregate")


def is_count(name: str, command: dict[str, Any]) -> bool:
    """A count: an aggregate that ends in one group of everything."""
    if name != "aggregate" or not command["pipeline"]:
        return False
    last = command["pipeline"][-1]
    return "$group" in last and last["$group"].get("_id") in (1, None)


async def drain(services: Services, commands: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Send the export's reads again (same filter, projection, sort, batch size) and read every
    document they return, decoded, doing nothing else; its counts are left out."""
    codec_options = services.db.codec_options
    documents = 0
    started = time.perf_counter()
    for name, command in commands:
        if is_count(name, command):
            continue
        collection = services.db[command[name]]
        batch_size = command.get("batchSize") or (command.get("cursor") or {}).get("batchSize", 0)
        if name == "find":
            sort = command.get("sort")
            cursor = collection.find_raw_batches(
                command.get("filter", {}),
                command.get("projection"),
                sort=list(sort.items()) if sort else None,
                batch_size=batch_size,
                limit=abs(command.get("limit", 0)),
                skip=command.get("skip", 0),
                hint=command.get("hint"),
            )
        else:
            cursor = await collection.aggregate_raw_batches(
                command["pipeline"], batchSize=batch_size or None
            )
        async for raw in cursor:
            documents += len(bson.decode_all(cast(bytes, raw), codec_options))
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "queries": sum(1 for name, command in commands if not is_count(name, command)),
        "documents": documents,
    }


async def count_seconds(
    services: Services, export_type: ExportType, date_key: str | None
) -> float | None:
    """The preliminary count alone, as the export runs it before its first row."""
    spec = EXPORTERS[export_type]
    if spec.count is None:
        return None
    export = Export(
        id="bench-count",
        campaign_id=CAMPAIGN,
        campaign_name="",
        export_type=export_type,
        status=ExportStatus.TRIGGERED,
        requester_user_id="bench",
        date_key=date_key,
    )
    campaign = await services.db["campaigns"].find_one({"_id": CAMPAIGN})
    assert campaign is not None
    ctx = Context(export=export, db=services.db, settings=services.settings, campaign=campaign)
    if spec.needs_markets:
        await load_markets(ctx)
    if spec.prepare is not None:
        await spec.prepare(ctx)
    started = time.perf_counter()
    await spec.count(ctx)
    return round(time.perf_counter() - started, 3)


async def export(
    services: Services, reads: Reads, export_type: ExportType, date_key: str | None
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
    ended = time.perf_counter()
    seconds = ended - started
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
        "phases": reads.phases(started, ended),
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


async def naive(uri: str, db: str, s3: str, bucket: str) -> dict[str, Any]:
    """bench/naive.py in a process of its own (its time is measured inside it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.naive", "--uri", uri, "--db", db, "--campaign", CAMPAIGN,
        "--s3", s3, "--bucket", bucket, stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"bench.naive exited {process.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


async def measure(
    services: Services,
    reads: Reads,
    args: argparse.Namespace,
    export_type: ExportType,
    date_key: str | None,
    attempt: int,
    s3: str,
) -> dict[str, Any]:
    """One attempt: the export, the drain of its reads, its count alone and (for `entries`)
    the naive script, back to back, in an order that rotates with the attempt (whatever runs
    first or last in a series is not always the same one)."""
    load_before = load()
    settings = services.settings
    exported: dict[str, Any] = {}
    drained: dict[str, Any] = {}
    result: dict[str, Any] = {"type": export_type.value, "attempt": attempt + 1}

    async def run_export() -> None:
        reads.on = True
        reads.reset()
        exported.update(await export(services, reads, export_type, date_key))
        reads.on = False
        exported["count_seconds"] = round(reads.count_seconds, 3)

    async def run_drain() -> None:
        # The export's reads; on the first attempt the export must come first to have them.
        drained.update(await drain(services, reads.commands))
        drained["count_seconds"] = await count_seconds(services, export_type, date_key)

    async def run_naive() -> None:
        uri = settings.mongo_uri.get_secret_value() if settings.mongo_uri else ""
        result["naive"] = await naive(uri, settings.mongo_db, s3, settings.bucket_exports)

    steps = [run_export, run_drain]
    if export_type is ExportType.ENTRIES and not args.no_naive:
        steps.append(run_naive)
    if attempt > 0:  # the drain needs the reads of an export: the first attempt starts with it
        shift = attempt % len(steps)
        steps = steps[shift:] + steps[:shift]
    for step in steps:
        await step()
    without = exported["seconds"] - exported["count_seconds"]
    result.update(
        drain=drained,
        export=exported,
        ratio=round(exported["seconds"] / drained["seconds"], 3),
        ratio_without_count=round(without / drained["seconds"], 3),
        load_before=load_before,
        load_after=load(),
    )
    if "naive" in result:
        result["naive"]["ratio"] = round(result["naive"]["seconds"] / drained["seconds"], 3)
    return result


def _median(
    runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]
) -> float | None:
    values = [v for r in runs if (v := get(r)) is not None]
    return round(statistics.median(values), 3) if values else None


def phase(key: str) -> Callable[[dict[str, Any]], float | None]:
    def get(run: dict[str, Any]) -> float | None:
        value: float | None = run["export"]["phases"][key]
        return value

    return get


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per type, the medians over its attempts."""
    out: list[dict[str, Any]] = []
    for name in dict.fromkeys(r["type"] for r in runs if "skipped" not in r):
        mine = [r for r in runs if r["type"] == name and "skipped" not in r]

        def med(get: Callable[[dict[str, Any]], float | None], mine: Any = mine) -> float | None:
            return _median(mine, get)

        out.append(
            {
                "type": name,
                "attempts": len(mine),
                "drain_seconds": med(lambda r: r["drain"]["seconds"]),
                "documents_drained": mine[0]["drain"]["documents"],
                "count_in_export_seconds": med(lambda r: r["export"]["count_seconds"]),
                "count_alone_seconds": med(lambda r: r["drain"]["count_seconds"]),
                "export_seconds": med(lambda r: r["export"]["seconds"]),
                "rows": mine[0]["export"]["rows"],
                "files": mine[0]["export"]["files"],
                "ratio": med(lambda r: r["ratio"]),
                "ratio_without_count": med(lambda r: r["ratio_without_count"]),
                "naive_ratio": med(lambda r: r["naive"]["ratio"] if "naive" in r else None),
                "phases": {key: med(phase(key)) for key in mine[0]["export"]["phases"]},
                "loads": [r["load_before"][0] for r in mine],
            }
        )
    return out


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
    reads = Reads(settings.mongo_db)
    monitoring.register(reads)  # every client opened from here on
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
        if services.encoders is not None:
            await services.encoders.start()  # as a worker's loop does when it starts
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
                runs.append(
                    await measure(services, reads, args, export_type, date_key, attempt, s3)
                )
                r = runs[-1]
                print(
                    f"  {name} #{attempt + 1}: drain {r['drain']['seconds']} s, export "
                    f"{r['export']['seconds']} s (count in it {r['export']['count_seconds']} s), "
                    f"ratio {r['ratio']} / without count {r['ratio_without_count']}"
                    + (f", naive {r['naive']['ratio']}" if "naive" in r else "")
                    + f"; head {r['export']['phases']['head_seconds']} s, tail "
                    f"{r['export']['phases']['tail_seconds']} s, "
                    f"{r['export']['phases']['queue_round_trips']} queue round trips "
                    f"({r['export']['phases']['queue_seconds']} s)"
                    + f", load {r['load_before'][0]}",
                    flush=True,
                )
            # What is measured so far, so that a run stopped midway keeps it.
            partial = {**results, "runs": runs, "summary": summary(runs), "partial": True}
            write_results(args.results, partial, args.write_results)
        results["runs"] = runs
        results["summary"] = summary(runs)
        if args.data_dir is None:
            await services.client.drop_database(settings.mongo_db)
    results["bench_process_peak_rss_mb"] = peak_rss_mb()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--types", nargs="+", default=[t.value for t in EXPORTERS])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-naive", action="store_true", help="skip bench/naive.py")
    parser.add_argument(
        "--data-dir", type=Path, help="keep the database here and reuse its seeded campaign"
    )
    parser.add_argument("--results", default="end_to_end", help="results file name (NAME.json)")
    add_results_flag(parser)
    args = parser.parse_args()
    info = machine()
    with secantus_server(args.data_dir) as uri, moto_server() as s3:
        results = asyncio.run(run(args, uri, s3))
    headers = ["type", "attempts", "drain s", "docs drained", "count s (in export)", "export s",
               "rows", "files", "export/drain", "(export-count)/drain", "naive/drain",
               "load before"]  # fmt: skip
    body = [
        [r["type"], r["attempts"], r["drain_seconds"], r["documents_drained"],
         "-" if not r["count_in_export_seconds"] else r["count_in_export_seconds"],
         r["export_seconds"], r["rows"], r["files"], r["ratio"], r["ratio_without_count"],
         "-" if r["naive_ratio"] is None else r["naive_ratio"],
         " ".join(map(str, r["loads"]))]
        for r in results["summary"]
    ]  # fmt: skip
    print(machine_table(info))
    print(f"seed: {results['entries']:,} entries in {results['seed']['seconds']} s")
    title = f"end to end on the embedded servers ({results['entries']:,} entries), medians"
    print(table(title, headers, body))
    path = write_results(args.results, {"machine": info, **results}, args.write_results)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
