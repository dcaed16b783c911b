"""Exporter pipeline benchmark: the `entries` export with no database in the loop.

A recorded source replays realistic BSON batches from memory as fast as the exporter asks:
entries made by `export_service.dev.seed.generate`, projected the way the `entries` query projects
them and BSON-encoded once, in batches of `batch_size`. Everything after the cursor is the real
thing: the runner (`run_export`, with the recording as its batch reader) hands each raw batch
to its encoders, which decode it, build the rows and CSV-encode them, and streams the CSV to a
moto S3 server with a multipart upload and sha256. `entries` runs as the worker does, with an
encoder process per usable CPU (`encoding/processes.py`); `entries-in-process` runs the same
encoder in the worker process (`EXPORT_SERVICE_ENCODER_PROCESSES=0`).

The baseline is the straightforward exporter, written here: it reads the entries as stored
(`fields` and `date` sub-documents, the service's projection before issue 5), with one `await`
and one `csv.DictWriter.writerow` per row, the service's per-cell formatting helpers and the
same upload. `--variants baseline-same-input` runs that loop on the exporter's own projection
instead, to separate what the projection buys from what the batch pipeline buys. Every variant
must write byte-identical files.

Each run is a child process, so its peak RSS (`ru_maxrss`) is the exporter's alone, plus the
peak (`VmHWM`) of each of its encoder processes, summed; its CPU time includes theirs. moto runs
in a process of its own. The recording (`--pool` distinct entries, cycled to reach the row
count) is held by the child, so its size is part of every run's RSS and is reported.

    .venv/bin/python -m bench.pipeline                     # 100 k and 1 M rows
    .venv/bin/python -m bench.pipeline --rows 100000 --variants entries entries-in-process
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import io
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import bson
from pymongo import AsyncMongoClient

from bench.benchlib import (
    ROOT,
    add_results_flag,
    current_rss_mb,
    load,
    machine,
    machine_table,
    moto_server,
    peak_rss_mb,
    process_peak_rss_mb,
    s3_settings,
    table,
    write_results,
)
from export_service.dev.seed import SeedPlan, generate
from export_service.encoding.formatting import cell, date, text, upper
from export_service.encoding.processes import EncoderProcesses, default_processes
from export_service.exporters.entries import ENTRIES, entry_columns
from export_service.exporters.runner import Unsupervised, run_export
from export_service.exporters.spec import Context, Source
from export_service.models import Export, ExportStatus, ExportType
from export_service.settings import Settings
from export_service.storage import Storage

CAMPAIGN = "bench-campaign"
BUCKET = "bench-exports"
TARGET_ROWS_PER_S = 200_000
TARGET_SPEEDUP = 3.0
TARGET_RSS_MB = 200.0
TARGET_RSS_GROWTH = 0.10

_MISSING = object()


# ---- the recording -----------------------------------------------------------------------


def _resolve(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


def _evaluate(doc: dict[str, Any], expression: Any) -> Any:
    if isinstance(expression, str) and expression.startswith("$"):
        return _resolve(doc, expression[1:])
    if isinstance(expression, list):  # an array literal: a missing value is null in it
        values = (_evaluate(doc, item) for item in expression)
        return [None if value is _MISSING else value for value in values]
    if isinstance(expression, dict) and "$getField" in expression:
        spec = expression["$getField"]
        parent = _evaluate(doc, spec["input"])
        field = spec["field"]
        name = field["$literal"] if isinstance(field, dict) else field
        return parent.get(name, _MISSING) if isinstance(parent, dict) else _MISSING
    raise ValueError(f"the recorder does not know this expression: {expression!r}")


def project(doc: dict[str, Any], projection: dict[str, Any]) -> dict[str, Any]:
    """What a MongoDB find with this projection returns for `doc` (the forms the specs use)."""
    out: dict[str, Any] = {"_id": doc["_id"]}
    for key, spec in projection.items():
        if key == "_id" and spec in (0, False):
            del out["_id"]
        elif spec is True or spec == 1:
            value = _resolve(doc, key)
            if value is not _MISSING:
                *parents, leaf = key.split(".")
                target = out
                for parent in parents:
                    target = target.setdefault(parent, {})
                target[leaf] = value
        else:
            value = _evaluate(doc, spec)
            if value is not _MISSING:
                out[key] = value
    return out


def _context(campaign: dict[str, Any], markets: list[dict[str, Any]], settings: Settings) -> Any:
    export = Export(
        id="bench-export",
        campaign_id=CAMPAIGN,
        campaign_name=str(campaign.get("name", "")),
        export_type=ExportType.ENTRIES,
        status=ExportStatus.TRIGGERED,
        requester_user_id="bench",
    )
    # Never connected: the context needs a database handle for its codec options only.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?directConnection=true", connect=False, tz_aware=False
    )
    ctx = Context(export=export, db=client["bench"], settings=settings, campaign=campaign)
    ctx.markets = {m["_id"]: m for m in markets}
    return ctx, client


# What a straightforward exporter asks for: the entry's fields as stored (the service's
# projection before issue 5).
NESTED_PROJECTION = {
    "userId": 1,
    "marketId": 1,
    "additionalMarkets": 1,
    "locale": 1,
    "countryCode": 1,
    "fields": 1,
    "date.created": 1,
}


async def _record(pool: int, directory: Path) -> dict[str, Any]:
    """Seed data projected like the `entries` query (`exporter.pickle`) and like a
    straightforward query (`nested.pickle`), BSON-encoded in cursor batches."""
    settings = Settings()
    campaign: dict[str, Any] = {}
    markets: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for name, docs in generate(SeedPlan(campaign_id=CAMPAIGN, entries=pool)):
        if name == "campaigns":
            campaign = docs[0]
        elif name == "markets":
            markets.extend(docs)
        elif name == "entries":
            entries.extend(docs)
    ctx, client = _context(campaign, markets, settings)
    assert ENTRIES.prepare is not None
    await ENTRIES.prepare(ctx)
    await client.close()
    size = settings.batch_size
    sizes: dict[str, float] = {}
    projections = {"exporter": ENTRIES.source.fields(ctx) or {}, "nested": NESTED_PROJECTION}
    for name, projection in projections.items():
        batches = [
            b"".join(bson.encode(project(doc, projection)) for doc in entries[i : i + size])
            for i in range(0, len(entries), size)
        ]
        with (directory / f"{name}.pickle").open("wb") as out:
            pickle.dump({"campaign": campaign, "markets": markets, "batches": batches}, out)
        sizes[name] = round(sum(map(len, batches)) / 1e6, 1)
    return {
        "pool_entries": pool,
        "batch_size": size,
        "recording_mb": sizes,
        "projections": projections,
    }


# ---- one run (child process) -------------------------------------------------------------


def _replayer(batches: list[bytes], rows: int, batch_size: int) -> Any:
    async def read(source: Source, ctx: Context) -> AsyncGenerator[bytes]:
        for i in range(rows // batch_size):
            yield batches[i % len(batches)]

    return read


def _nested_values(ctx: Context, doc: dict[str, Any]) -> list[Any]:
    fields = doc.get("fields") or {}
    return [
        doc["_id"],
        doc.get("userId"),
        fields.get("email"),
        fields.get("first_name"),
        fields.get("last_name"),
        fields.get("phone"),
        fields.get("postal_code"),
        doc.get("countryCode"),
        doc.get("locale"),
        doc.get("marketId"),
        (doc.get("date") or {}).get("created"),
        *(fields.get(pid) for pid in ctx.lookups["preference_ids"]),
    ]


async def _baseline(
    ctx: Context, storage: Storage, batches: list[bytes], rows: int, batch_size: int
) -> tuple[int, str, int]:
    """One await and one DictWriter.writerow per row; the same cells, the same upload."""

    async def documents() -> AsyncGenerator[dict[str, Any]]:
        for i in range(rows // batch_size):
            for doc in bson.decode_all(batches[i % len(batches)], ctx.db.codec_options):
                yield doc

    columns = list(entry_columns(ctx))
    writer = storage.writer(
        BUCKET, "baseline.csv", acl=None, content_type="text/csv", on_start=_no_op
    )
    buffer = io.StringIO()
    out = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n")
    out.writeheader()
    count = 0
    async for doc in documents():
        # The exporter's projection holds the values in column order; the nested one is read
        # the way the service's row function read it before.
        values = doc["v"] if "v" in doc else _nested_values(ctx, doc)
        entry_id, user, email, first, last, phone, postal = values[:7]
        country, locale, market_id, created, *answers = values[7:]
        row = {
            "entry_id": cell(entry_id),
            "user_id": cell(user),
            "email": cell(email),
            "first_name": text(first),
            "last_name": text(last),
            "phone": cell(phone),
            "postal_code": text(postal),
            "country_code": upper(country),
            "locale": text(locale),
            "market_id": cell(market_id),
            "market_name": text(ctx.market_name(market_id)),
            "created_at": date(created),
        }
        for pid, answer in zip(ctx.lookups["preference_ids"], answers, strict=True):
            row[pid] = text(answer)
        out.writerow(row)
        count += 1
        if buffer.tell() >= 1 << 20:
            await writer.write(buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate(0)
    await writer.write(buffer.getvalue().encode())
    written = await writer.close()
    return count, written.sha256, written.bytes


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _no_op(upload_id: str | None) -> None:
    return None


def _time_s3_calls(storage: Storage) -> dict[str, float]:
    """Seconds spent per S3 operation, awaited or in flight (moto's share of the wall time)."""
    spent: dict[str, float] = {}
    call = storage.call

    async def timed(operation: str, **params: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call(operation, **params)
        finally:
            spent[operation] = spent.get(operation, 0.0) + time.perf_counter() - started

    storage.call = timed  # type: ignore[method-assign]
    return spent


# variant → the recording it reads.
VARIANTS = {
    "entries": "exporter",
    "entries-in-process": "exporter",
    "baseline": "nested",
    "baseline-same-input": "exporter",
}


async def _child(variant: str, rows: int, recordings: Path, endpoint: str) -> dict[str, Any]:
    with (recordings / f"{VARIANTS[variant]}.pickle").open("rb") as data:
        recorded = pickle.load(data)
    batches: list[bytes] = recorded["batches"]
    settings = Settings(**s3_settings(endpoint), bucket_exports=BUCKET)
    if rows % settings.batch_size:
        raise SystemExit(f"--rows must be a multiple of the batch size {settings.batch_size}")
    ctx, client = _context(recorded["campaign"], recorded["markets"], settings)
    async with Storage.open(settings, endpoint, ("bench", "bench")) as storage:
        await storage.ensure_buckets([BUCKET])
        assert ENTRIES.prepare is not None
        await ENTRIES.prepare(ctx)
        s3_seconds = _time_s3_calls(storage)
        # `entries` runs as the worker does: encoder processes on every usable CPU (started
        # before the clock, as a worker starts them with its first export).
        processes = default_processes() if variant == "entries" else 0
        encoders = EncoderProcesses(processes) if processes else None
        if encoders is not None:
            await encoders.start()
        rss_before = current_rss_mb()
        load_before = load()
        children_cpu0 = _children_cpu()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if variant.startswith("entries"):
            # Markets are in the context already and counting needs a database: both off.
            spec = dataclasses.replace(ENTRIES, needs_markets=False, count=None, prepare=None)

            files, count = await run_export(
                spec,
                ctx,
                Unsupervised(),
                storage,
                read=_replayer(batches, rows, settings.batch_size),
                encoders=encoders,
            )
            sha256, size, key = files[0].sha256, files[0].bytes, files[0].key
        else:
            count, sha256, size = await _baseline(ctx, storage, batches, rows, settings.batch_size)
            key = "baseline.csv"
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        # The children's peaks while they run; their CPU once they have exited (and been
        # waited for, which is when the kernel adds it to ours).
        children_rss = [process_peak_rss_mb(pid) for pid in encoders.pids] if encoders else []
        if encoders is not None:
            await encoders.close()
        children_cpu = _children_cpu() - children_cpu0
        cpu += children_cpu
        # moto joins the parts in Python at completion (seconds for 200 MB; S3 does it
        # server-side): reported, and left out of the exporter's own rate.
        complete = s3_seconds.get("complete_multipart_upload", 0.0)
        stored = await storage.client.head_object(Bucket=BUCKET, Key=key)
        assert stored["ContentLength"] == size, "the object on S3 is not what was written"
    await client.close()
    return {
        "variant": variant,
        "rows": count,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "rows_per_s_total": round(count / wall),
        "s3_complete_seconds": round(complete, 3),
        "rows_per_s": round(count / (wall - complete)),
        # Less sensitive to other work on the machine than wall time (not immune: a busy
        # machine also slows each CPU-second through shared caches).
        "rows_per_cpu_s": round(count / cpu),
        "s3_seconds": {k: round(v, 3) for k, v in s3_seconds.items()},
        "bytes": size,
        "sha256": sha256,
        "encoder_processes": processes,
        "children_cpu_seconds": round(children_cpu, 3),
        "rss_at_start_mb": rss_before,
        "worker_peak_rss_mb": peak_rss_mb(),
        "encoder_peak_rss_mb": children_rss,
        # The worker and its encoder processes together (each one's peak, summed: an upper
        # bound, as the peaks need not coincide and shared library pages count in each).
        "peak_rss_mb": round(peak_rss_mb() + sum(children_rss), 1),
        "load_before": load_before,
        "load_after": load(),
    }


# ---- orchestration -----------------------------------------------------------------------


def _run_child(variant: str, rows: int, recording: Path, endpoint: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.pipeline", "--child", variant, str(rows),
               str(recording), endpoint]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant} at {rows} rows failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _verdicts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["variant"], r["rows"]): r for r in runs}
    sizes = sorted({r["rows"] for r in runs})
    verdicts: dict[str, Any] = {}
    entries = [by[("entries", n)] for n in sizes if ("entries", n) in by]
    if entries:
        verdicts["rows_per_s >= 200k"] = all(r["rows_per_s"] >= TARGET_ROWS_PER_S for r in entries)
        verdicts["peak_rss <= 200 MB"] = all(r["peak_rss_mb"] <= TARGET_RSS_MB for r in entries)
    if len(entries) >= 2:
        low, high = entries[0]["peak_rss_mb"], entries[-1]["peak_rss_mb"]
        verdicts["rss_growth"] = round(high / low - 1, 3)
        verdicts["rss within 10%"] = abs(high / low - 1) <= TARGET_RSS_GROWTH
    both = [n for n in sizes if ("entries", n) in by and ("baseline", n) in by]
    speedups = {
        n: round(by[("entries", n)]["rows_per_s"] / by[("baseline", n)]["rows_per_s"], 2)
        for n in both
    }
    if speedups:
        verdicts["speedup_vs_baseline"] = speedups
        verdicts["cpu_speedup_vs_baseline"] = {
            n: round(
                by[("entries", n)]["rows_per_cpu_s"] / by[("baseline", n)]["rows_per_cpu_s"], 2
            )
            for n in both
        }
        verdicts[">= 3x baseline"] = all(s >= TARGET_SPEEDUP for s in speedups.values())
    # Every variant wrote the same file at each size.
    verdicts["identical files"] = all(
        len({r["sha256"] for r in runs if r["rows"] == n}) == 1 for n in sizes
    )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--pool", type=int, default=20_000, help="distinct entries recorded")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=["entries", "entries-in-process", "baseline"],
    )
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "ROWS", "RECORDING", "S3"))
    add_results_flag(parser)
    args = parser.parse_args()
    if args.child:
        variant, rows, recording, endpoint = args.child
        print(json.dumps(asyncio.run(_child(variant, int(rows), Path(recording), endpoint))))
        return

    info = machine()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        recording_path = Path(tmp)
        recording = asyncio.run(_record(args.pool, recording_path))
        with moto_server() as endpoint:
            for rows in args.rows:
                for variant in args.variants:
                    run = _run_child(variant, rows, recording_path, endpoint)
                    runs.append(run)
                    print(f"  {variant} {rows:,} rows: {run['rows_per_s']:,} rows/s", flush=True)
    verdicts = _verdicts(runs)
    headers = ["variant", "rows", "encoders", "seconds", "cpu s", "moto complete s", "rows/s",
               "rows/s incl. complete", "rows/cpu-s", "MB written", "RSS start MB",
               "worker peak MB", "encoders peak MB", "peak RSS MB", "load before",
               "load after"]  # fmt: skip
    body = [
        [r["variant"], r["rows"], r["encoder_processes"], r["seconds"], r["cpu_seconds"],
         r["s3_complete_seconds"], r["rows_per_s"], r["rows_per_s_total"], r["rows_per_cpu_s"],
         round(r["bytes"] / 1e6, 1), r["rss_at_start_mb"], r["worker_peak_rss_mb"],
         " + ".join(map(str, r["encoder_peak_rss_mb"])) or "-", r["peak_rss_mb"],
         " ".join(map(str, r["load_before"])), " ".join(map(str, r["load_after"]))]
        for r in runs
    ]  # fmt: skip
    print(machine_table(info))
    print(
        f"recording: {recording['pool_entries']:,} distinct entries in batches of "
        f"{recording['batch_size']:,}; MB of BSON held in memory: {recording['recording_mb']}"
    )
    print(table("exporter pipeline (no database)", headers, body))
    for name, verdict in verdicts.items():
        print(f"  {name}: {verdict}")
    path = write_results(
        "pipeline",
        {"machine": info, "recording": recording, "runs": runs, "verdicts": verdicts},
        args.write_results,
    )
    print(f"results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
