"""The partitioned types against fanlist as the number of partitions grows (contract §15).

Run from the repository root:

    .venv/bin/python -m bench.partitioned                     # 10 k entries, 2/8/24/64 promoters
    .venv/bin/python -m bench.partitioned --entries 100000 --partitions 24
    .venv/bin/python -m bench.partitioned --plot docs/partitioned.png   # needs the `bench` extra

Starts SecantusDB and moto, seeds one campaign per partition count (as many markets as
promoters, so a fan's markets spread over that many promoters; the region/locale partitions of
the reminder types follow the markets' countries), then runs `fanlist` and the four partitioned
types one after the other, each in a fresh `export-service worker` process, so that each
export's peak RSS is that process's own high-water mark (VmHWM). Time is the export's
`date.finished - date.triggered` as the worker recorded it, reported as a ratio to the
`fanlist` export of the same campaign in the same run (the server, a Python MongoDB-wire
server, dominates absolute times). The spool directory's size is sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.benchlib import (
    PARTITIONED_TYPES,
    add_results_flag,
    load,
    machine,
    machine_table,
    moto_server,
    process_peak_rss_mb,
    s3_settings,
    secantus_server,
    table,
    worker_env,
    write_results,
)
from export_service.dev.seed import SeedPlan, seed
from export_service.models import ExportType
from export_service.runtime import Services
from export_service.settings import Settings

TYPES = PARTITIONED_TYPES
# The contract's targets on this machine (ratio to fanlist).
TARGETS = {
    ExportType.PROMOTER_EMAIL_OPT_IN: 1.3,  # at 24 promoters; within 20 % from 2 to 64
    ExportType.REMINDER_EMAIL: 1.2,
    ExportType.AUTO_REMINDER_EMAIL: 1.2,
}


def dir_bytes(root: Path) -> int:
    total = 0
    for path, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(path, name)).st_size
            except OSError:
                continue  # removed meanwhile
    return total


async def one_export(
    services: Services, settings: Settings, campaign: str, export_type: ExportType
) -> dict[str, Any]:
    export, _ = await services.repository.create(
        campaign_id=campaign,
        campaign_name="Bench",
        export_type=export_type,
        requester_user_id="bench",
        date_key=None,
        include_all_markets=None,
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "export_service.cli",
        "worker",
        env=worker_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak_spool = 0
    try:
        while True:
            doc = await services.db["exports"].find_one({"_id": export.id})
            assert doc is not None
            if doc["status"] not in ("PENDING", "TRIGGERED"):
                break
            peak_spool = max(peak_spool, dir_bytes(settings.spool_dir))
            await asyncio.sleep(0.02)
        rss = process_peak_rss_mb(worker.pid)
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 30)
    assert doc["status"] == "FINISHED", doc.get("error")
    seconds = (doc["date"]["finished"] - doc["date"]["triggered"]).total_seconds()
    files = doc.get("files") or []
    return {
        "type": export_type.value,
        "seconds": seconds,
        "rows": sum(f["rows"] for f in files),
        "files": len(files),
        "bytes": sum(f["bytes"] for f in files),
        "peak_rss_mb": rss,
        "peak_spool_bytes": peak_spool,
        "spool_left": dir_bytes(settings.spool_dir),
    }


async def run(args: argparse.Namespace, uri: str, s3: str, spool: Path) -> dict[str, Any]:
    settings = Settings(
        mongo_uri=uri,
        # A kept --data-dir keeps its campaigns under one name; else one database per run.
        mongo_db="bench_partitioned" if args.data_dir else f"bench_partitioned_{os.getpid()}",
        spool_dir=spool,
        encoder_processes=0,
        polling_interval_millis=50,
        heartbeat_interval_millis=1000,
        **s3_settings(s3),
    )
    results: list[dict[str, Any]] = []
    async with Services.open(settings, create_buckets=True) as services:
        # A kept database may hold the unfinished exports of a stopped run: not ours to run.
        await services.db["exports"].delete_many({"status": {"$in": ["PENDING", "TRIGGERED"]}})
        for partitions in args.partitions:
            campaign = f"bench-{partitions}-{args.entries}"
            plan = SeedPlan(
                campaign_id=campaign,
                entries=args.entries,
                markets=partitions,
                promoters=partitions,
                sms_waves=0,
            )
            seeded = await services.db["entries"].count_documents({"campaignId": campaign})
            if seeded != args.entries:  # else a kept --data-dir holds this campaign already
                started = time.perf_counter()
                await seed(services.db, plan)
                print(f"seeded {campaign} in {time.perf_counter() - started:.0f} s", flush=True)
            for _ in range(args.repeat):
                before = load()
                runs = [await one_export(services, settings, campaign, t) for t in TYPES]
                fanlist = runs[0]["seconds"]
                for r in runs:
                    r.update(
                        partitions=partitions,
                        entries=args.entries,
                        ratio=round(r["seconds"] / fanlist, 3),
                        load_before=before,
                        load_after=load(),
                    )
                    print(
                        f"{partitions:>3} partitions {r['type']:<20} {r['seconds']:7.2f} s "
                        f"x{r['ratio']:.2f}  rss {r['peak_rss_mb']:.0f} MB  "
                        f"spool {r['peak_spool_bytes'] / 2**20:.1f} MiB  load {load()[0]}",
                        flush=True,
                    )
                results.extend(runs)
        # Exports of earlier runs in a kept database are history, as any service has.
        if args.data_dir is None:
            await services.client.drop_database(settings.mongo_db)
    return {"entries": args.entries, "results": results}


def medians(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per partition count and type, the median ratio and time over the runs (the targets are
    medians) and the highest peak RSS and spool."""
    cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["partitions"], r["type"]), []).append(r)
    return [
        {
            "partitions": partitions,
            "type": export_type,
            "runs": len(runs),
            "seconds": round(statistics.median(r["seconds"] for r in runs), 3),
            "ratio": round(statistics.median(r["ratio"] for r in runs), 3),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "peak_spool_bytes": max(r["peak_spool_bytes"] for r in runs),
        }
        for (partitions, export_type), runs in cells.items()
    ]


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for export_type in TYPES[1:]:
        points = {r["partitions"]: r["ratio"] for r in summary if r["type"] == export_type.value}
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=export_type.value)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(1.3, color="tab:red", linewidth=0.8, linestyle="--", label="target 1.3 (promoter)")
    ax.axhline(
        1.2, color="tab:orange", linewidth=0.8, linestyle="--", label="target 1.2 (reminder)"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["partitions"] for r in summary}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("promoters (= markets) in the campaign")
    ax.set_ylabel("export time / fanlist time (median of the runs)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, nargs="+", default=[2, 8, 24, 64])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--data-dir", type=Path, help="keep the database here and reuse its seeded campaigns"
    )
    parser.add_argument("--plot", type=Path, help="draw ratio vs partitions to this PNG")
    parser.add_argument("--name", default=None, help="results file name (NAME.json)")
    add_results_flag(parser)
    args = parser.parse_args()
    info = machine()
    started = time.time()
    with (
        secantus_server(args.data_dir) as uri,
        moto_server() as s3,
        tempfile.TemporaryDirectory(prefix="bench-spool-") as spool,
    ):
        data = asyncio.run(run(args, uri, s3, Path(spool)))
    data.update(machine=info, load_end=load(), wall_seconds=round(time.time() - started, 1))
    rows = [
        [
            r["partitions"],
            r["type"],
            r["seconds"],
            r["ratio"],
            r["rows"],
            r["files"],
            r["peak_rss_mb"],
            round(r["peak_spool_bytes"] / 2**20, 2),
            r["load_before"][0],
        ]
        for r in data["results"]
    ]
    headers = ["parts", "type", "s", "x fanlist", "rows", "files", "RSS MB", "spool MiB", "load"]
    print(machine_table(info))
    print(table(f"{args.entries:,} entries", headers, rows))
    data["summary"] = medians(data["results"])
    body = [
        [r["partitions"], r["type"], r["runs"], r["seconds"], r["ratio"], r["peak_rss_mb"],
         round(r["peak_spool_bytes"] / 2**20, 2)]
        for r in data["summary"]
    ]  # fmt: skip
    headers = ["parts", "type", "runs", "median s", "median x fanlist", "peak RSS MB", "spool MiB"]
    print(table(f"{args.entries:,} entries, medians", headers, body))
    name = args.name or f"partitioned-{args.entries}"
    print("results:", write_results(name, data, args.write_results))
    if args.plot is not None:
        plot(data["summary"], args.plot, f"{args.entries:,} entries, {info['cpu_model']}")
        print("plot:", args.plot)


if __name__ == "__main__":
    main()
