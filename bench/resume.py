"""An `entries` export whose worker is SIGKILLed half-way: resumed vs restarted (contract §14).

Run from the repository root:

    .venv/bin/python -m bench.resume                          # 100 k entries, one round (~4 min)
    .venv/bin/python -m bench.resume --data-dir /tmp/bench-resume-db --repeat 2
    .venv/bin/python -m bench.resume --plot docs/resume.png   # needs the `bench` extra

Starts SecantusDB and moto, seeds one campaign (entries only), then per round runs three
exports of the same data, each through real `export-service worker` processes:

* **uninterrupted**: one worker, claim to `FINISHED`;
* **resumed**: a worker is SIGKILLed once `progress.processed` reaches `--kill-at` (half) of the
  rows; a second worker takes the export back after the heartbeat timeout and resumes it from
  its last checkpoint (the parts on S3, the cursor after `lastId`, the hash state);
* **restarted**: the same kill, then the checkpoint is removed from the export before the
  second worker takes it, which then does what the service did before resuming existed: it
  aborts the upload and starts from row 0 (the same code path as an upload that vanished).

Time to `FINISHED` of an interrupted export = the first run (its claim to the kill) + the
second run (its claim to `FINISHED`), each from the times the workers recorded; the time in
between (the second worker's start, which waits for the kill, plus the heartbeat timeout, 1 s
here, and the claim) is the same for both and is reported on its own. Each is given as a
ratio to the uninterrupted export of the same round.

What SecantusDB costs (a Python server: its count reads every matching document, and a query
builds its whole result before the first batch) is measured apart, in this process, on an idle
server after the round: the exporter's preliminary count, and a drain of the exact cursor each
run opens (the full one, and the resumed one after `lastId`), raw batches, nothing decoded.
Run time less those is the exporter's share (an upper bound on it: reading overlaps encoding).
All three files must be byte-identical (sha256, bytes, rows), or the benchmark fails.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.benchlib import (
    add_results_flag,
    load,
    machine,
    machine_table,
    moto_server,
    s3_settings,
    secantus_server,
    table,
    worker_env,
    write_results,
)
from export_service.dev.seed import SeedPlan, generate
from export_service.exporters import spec_for
from export_service.exporters.runner import load_markets, read_cursor
from export_service.exporters.spec import Context
from export_service.models import Export, ExportType, utcnow
from export_service.runtime import Services
from export_service.settings import Settings

Doc = dict[str, Any]

CAMPAIGN = "bench-resume"
MODES = ("uninterrupted", "resumed", "restarted")
# Seeding only what an entries export reads keeps the setup to about a minute at 100 k.
ENTRIES_COLLECTIONS = ("campaigns", "markets", "promoters", "entries")


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "export_service.cli", "worker"],
        env=worker_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


async def seed_entries(services: Services, entries: int) -> float:
    started = time.perf_counter()
    plan = SeedPlan(campaign_id=CAMPAIGN, entries=entries)
    for name, batch in generate(plan, 5_000):
        if name in ENTRIES_COLLECTIONS:
            await services.db[name].insert_many(batch, ordered=False)
    return round(time.perf_counter() - started, 1)


async def one_export(services: Services, settings: Settings, mode: str, kill_at: float) -> Doc:
    export, _ = await services.repository.create(
        campaign_id=CAMPAIGN,
        campaign_name="Bench",
        export_type=ExportType.ENTRIES,
        requester_user_id="bench",
        date_key=None,
        include_all_markets=None,
    )
    exports = services.db["exports"]
    result: Doc = {"mode": mode, "load_before": load()}
    worker = start_worker(settings)
    try:
        if mode != "uninterrupted":
            while True:
                doc = await exports.find_one({"_id": export.id})
                assert doc is not None and doc["status"] in ("PENDING", "TRIGGERED"), doc
                progress = doc.get("progress") or {}
                total, processed = progress.get("total"), progress.get("processed", 0)
                if total and processed >= kill_at * total:
                    break
                await asyncio.sleep(0.01)
            worker.send_signal(signal.SIGKILL)
            killed = utcnow()
            worker.wait(10)
            doc = await exports.find_one({"_id": export.id})
            assert doc is not None and doc["status"] == "TRIGGERED", doc
            checkpoint = doc.get("checkpoint") or {}
            result.update(
                first_run_seconds=(killed - doc["date"]["triggered"]).total_seconds(),
                processed_at_kill=(doc.get("progress") or {}).get("processed"),
                checkpoint_rows=checkpoint.get("rows"),
                checkpoint_parts=len(checkpoint.get("parts") or []),
                last_id=checkpoint.get("lastId"),
            )
            if mode == "restarted":
                await exports.update_one({"_id": export.id}, {"$unset": {"checkpoint": ""}})
            if mode == "resumed" and not checkpoint:
                raise SystemExit("killed before the first checkpoint: use more --entries")
            # Started only now: SecantusDB answers one request at a time, so while it counts
            # (seconds) a running worker's beats wait, and a second worker would judge it dead.
            worker = start_worker(settings)
        while True:
            doc = await exports.find_one({"_id": export.id})
            assert doc is not None
            if doc["status"] not in ("PENDING", "TRIGGERED"):
                break
            await asyncio.sleep(0.02)
    finally:
        stop_worker(worker)
    assert doc["status"] == "FINISHED", doc.get("error")
    (file,) = doc["files"]
    run_seconds = (doc["date"]["finished"] - doc["date"]["triggered"]).total_seconds()
    result.update(
        export_id=export.id,
        attempts=doc["attempts"],
        resumed_from=doc.get("resumedFrom"),
        run_seconds=run_seconds,
        sha256=file["sha256"],
        bytes=file["bytes"],
        rows=file["rows"],
        load_after=load(),
    )
    if mode == "uninterrupted":
        result["seconds"] = run_seconds
    else:
        result["seconds"] = result["first_run_seconds"] + run_seconds
        result["between_runs_seconds"] = (doc["date"]["triggered"] - killed).total_seconds()
    if mode == "resumed":
        assert result["resumed_from"] == result["checkpoint_rows"], result
    else:
        assert result["resumed_from"] is None, result
    return result


async def database_share(
    services: Services, settings: Settings, export_id: str, after_id: Any
) -> Doc:
    """What SecantusDB alone takes for the reads of one run: the preliminary count and a drain
    of its cursor (after `after_id` for a resumed run), raw batches, nothing decoded."""
    spec = spec_for(ExportType.ENTRIES)
    assert spec is not None and spec.count is not None
    doc = await services.db["exports"].find_one({"_id": export_id})
    campaign = await services.db["campaigns"].find_one({"_id": CAMPAIGN})
    assert doc is not None and campaign is not None
    ctx = Context(export=Export.from_doc(doc), db=services.db, settings=settings, campaign=campaign)
    if spec.needs_markets:
        await load_markets(ctx)
    if spec.prepare is not None:
        await spec.prepare(ctx)
    count_seconds = 0.0
    if after_id is None:
        # A resumed run takes the first run's count from its checkpoint: it does not count.
        started = time.perf_counter()
        await spec.count(ctx)
        count_seconds = time.perf_counter() - started
    ctx = dataclasses.replace(ctx, resume_after=after_id)
    started = time.perf_counter()
    received = 0
    async for batch in read_cursor(spec.source, ctx):
        received += len(batch)
    return {
        "count_seconds": round(count_seconds, 3),
        "drain_seconds": round(time.perf_counter() - started, 3),
        "drain_bytes": received,
    }


async def run(args: argparse.Namespace, uri: str, s3: str) -> Doc:
    settings = Settings(
        mongo_uri=uri,
        # A kept --data-dir keeps its campaign under one name; else one database per run.
        mongo_db="bench_resume" if args.data_dir else f"bench_resume_{os.getpid()}",
        # The minimum S3 part size: a checkpoint per 5 MiB (~26 k rows here).
        s3_part_size_bytes=5 * 1024 * 1024,
        # Progress (what the kill waits on) every 100 ms; a dead worker's export is taken
        # back after 1 s.
        heartbeat_interval_millis=100,
        heartbeat_timeout_millis=1000,
        polling_interval_millis=50,
        **s3_settings(s3),
    )
    rounds: list[list[Doc]] = []
    async with Services.open(settings, create_buckets=True) as services:
        # A kept database may hold the unfinished exports of a stopped run: not ours to run.
        await services.db["exports"].delete_many({"status": {"$in": ["PENDING", "TRIGGERED"]}})
        seeded = await services.db["entries"].count_documents({"campaignId": CAMPAIGN})
        seed_seconds = None
        if seeded not in (0, args.entries):
            raise SystemExit(f"{args.data_dir} holds {seeded:,} entries: use another --data-dir")
        if seeded == 0:  # else a kept --data-dir holds the campaign already
            seed_seconds = await seed_entries(services, args.entries)
            print(f"seeded {args.entries:,} entries in {seed_seconds} s", flush=True)
        for _ in range(args.repeat):
            runs = []
            for mode in MODES:
                result = await one_export(services, settings, mode, args.kill_at)
                runs.append(result)
                print(
                    f"{mode:<14} {result['seconds']:6.2f} s  resumedFrom "
                    f"{result['resumed_from']}  load {load()[0]}",
                    flush=True,
                )
            # Idle now: what the database alone takes for the reads of a whole run, and of
            # the resumed run (after the checkpoint's `lastId`).
            full = await database_share(services, settings, runs[0]["export_id"], None)
            for result in runs:
                result["db_last_run"] = full
                if result["mode"] == "resumed":
                    result["db_last_run"] = await database_share(
                        services, settings, result["export_id"], result["last_id"]
                    )
            base = runs[0]
            for result in runs:
                result["ratio"] = round(result["seconds"] / base["seconds"], 3)
                db = result["db_last_run"]
                result["exporter_last_run_seconds"] = round(
                    result["run_seconds"] - db["count_seconds"] - db["drain_seconds"], 3
                )
                # Byte-identical, or the comparison means nothing.
                assert (result["sha256"], result["bytes"], result["rows"]) == (
                    base["sha256"],
                    base["bytes"],
                    base["rows"],
                ), result
            rounds.append(runs)
        if args.data_dir is None:
            await services.client.drop_database(settings.mongo_db)
    return {
        "entries": args.entries,
        "kill_at": args.kill_at,
        "part_size_bytes": settings.s3_part_size_bytes,
        "batch_size": settings.batch_size,
        "seed_seconds": seed_seconds,
        "rounds": rounds,
    }


SEGMENTS = (
    ("first run, to the kill", "tab:gray"),
    ("count (SecantusDB)", "tab:red"),
    ("cursor reads (SecantusDB)", "tab:orange"),
    ("exporter (rest of the run)", "tab:blue"),
)


def plot(data: Doc, path: Path, title: str) -> None:
    """One bar per export of every round, each round against its own uninterrupted export: on
    a loaded machine the rounds differ, and the chart shows by how much."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        (f"round {i + 1}: {r['mode']}", r, runs[0]["seconds"])
        for i, runs in enumerate(data["rounds"])
        for r in runs
    ]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(bars)))
    for y, (_label, result, base) in enumerate(reversed(bars)):
        db = result["db_last_run"]
        widths = [
            result.get("first_run_seconds", 0.0),
            db["count_seconds"],
            db["drain_seconds"],
            max(0.0, result["exporter_last_run_seconds"]),
        ]
        left = 0.0
        for (label, color), width in zip(SEGMENTS, widths, strict=True):
            ax.barh(y, width / base, left=left, color=color, label=label if y == 0 else None)
            left += width / base
        ax.text(left + 0.02, y, f"{result['ratio']:.2f}x", va="center", fontsize=8)
    ax.set_yticks(range(len(bars)), [label for label, _r, _b in reversed(bars)], fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel("time to FINISHED / the round's uninterrupted export (gap between runs left out)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of rows processed")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--data-dir", type=Path, help="keep the database here and reuse its seeded campaign"
    )
    parser.add_argument("--plot", type=Path, help="draw the times to this PNG")
    add_results_flag(parser)
    args = parser.parse_args()
    info = machine()
    started = time.time()
    with secantus_server(args.data_dir) as uri, moto_server() as s3:
        data = asyncio.run(run(args, uri, s3))
    data.update(machine=info, load_end=load(), wall_seconds=round(time.time() - started, 1))
    rows = []
    for runs in data["rounds"]:
        for r in runs:
            db = r["db_last_run"]
            rows.append(
                [
                    r["mode"],
                    r["seconds"],
                    r["ratio"],
                    r.get("first_run_seconds", "-"),
                    r["run_seconds"],
                    db["count_seconds"],
                    db["drain_seconds"],
                    r["exporter_last_run_seconds"],
                    r["resumed_from"] or "-",
                    r.get("between_runs_seconds", "-"),
                    r["load_before"][0],
                ]
            )
    headers = [
        "mode", "s", "x uninterrupted", "1st run s", "last run s", "count s", "reads s",
        "exporter s", "resumed from", "gap s", "load",
    ]  # fmt: skip
    print(machine_table(info))
    print(table(f"{args.entries:,} entries, killed at {args.kill_at:.0%}", headers, rows))
    print("results:", write_results("resume", data, args.write_results))
    if args.plot is not None:
        plot(
            data,
            args.plot,
            f"{args.entries:,} entries killed at {args.kill_at:.0%}, load {load()[0]} at the end",
        )
        print("plot:", args.plot)


if __name__ == "__main__":
    main()
