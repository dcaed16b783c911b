"""GET /campaigns/{id}/exports/{exportId}: what one costs and where the time goes.

SecantusDB and moto's S3 each run as a process of their own; one FINISHED export (one file) is
read. Three measurements:

1. the steps of one GET, each alone and in turn, in this process: the token check (JWT verify),
   the export's indexed read, its webhook events' read, the URL signing, the JSON answer;
2. `--concurrency` GETs of that export at once, `--rounds` times, against `export-service api`
   in a process of its own (nothing else running): latency p50/p95/max and requests/s;
3. with `--profile`: the same burst against the app in this process under cProfile (the
   clients share the process; their frames are left out of the table).

    .venv/bin/python -m bench.get_path [--concurrency 300] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp

from bench.benchlib import (
    add_results_flag,
    load,
    machine,
    machine_table,
    moto_server,
    secantus_server,
    table,
    write_results,
)
from bench.queue_latency import SECRET, percentiles, service_process, settings_for
from export_service import logs
from export_service.app.auth import Authenticator, mint
from export_service.app.factory import create_app
from export_service.app.server import listening
from export_service.dev.seed import SeedPlan, seed
from export_service.models import Export, ExportStatus, ExportType
from export_service.runtime import Services
from export_service.settings import Settings
from export_service.views import signed_view

CAMPAIGN = "get-campaign"
CACHES_OFF = {"EXPORT_SERVICE_AUTH_CACHE_SIZE": "0", "EXPORT_SERVICE_SIGNED_URL_CACHE_SIZE": "0"}


async def prepare(settings: Settings) -> str:
    """A seeded campaign and one FINISHED `scoring` export of it; returns the export's id."""
    async with Services.open(settings, create_buckets=True) as services:
        await seed(services.db, SeedPlan(campaign_id=CAMPAIGN, entries=200, seed=7))
        export, _ = await services.repository.create(
            campaign_id=CAMPAIGN,
            campaign_name="Bench",
            export_type=ExportType.SCORING,
            requester_user_id="bench",
            date_key=None,
            include_all_markets=None,
        )
        done = await services.worker.drain()
        assert done and done[0].status is ExportStatus.FINISHED, done
        return export.id


async def timed(n: int, step: Callable[[], Awaitable[object]]) -> float:
    """Mean milliseconds of `step` run `n` times in turn."""
    await step()
    start = time.perf_counter()
    for _ in range(n):
        await step()
    return round((time.perf_counter() - start) * 1000 / n, 3)


async def bench_steps(settings: Settings, export_id: str, n: int) -> dict[str, float]:
    header = f"Bearer {mint(SECRET, sub='bench', campaigns=[CAMPAIGN])}"
    authenticator = Authenticator(secret=SECRET, public_key=None)
    remembering = Authenticator(secret=SECRET, public_key=None, cache_size=10)
    uncached = settings.model_copy(update={"signed_url_cache_size": 0})
    async with Services.open(uncached) as services, Services.open(settings) as cached:
        export = await services.repository.get(export_id)
        assert isinstance(export, Export)

        async def verify() -> object:
            return authenticator.authenticate(header)

        async def read() -> object:
            return await services.repository.get(export_id)

        async def events() -> object:
            return await services.outbox.for_exports([export_id])

        async def verify_cached() -> object:
            return remembering.authenticate(header)

        async def sign() -> object:
            return await signed_view(services.storage, export)

        async def sign_cached() -> object:
            return await signed_view(cached.storage, export)

        body = await signed_view(services.storage, export)

        async def encode() -> object:
            return json.dumps(body)

        return {
            "jwt_verify_ms": await timed(n, verify),
            "jwt_verify_cached_ms": await timed(n, verify_cached),
            "export_read_ms": await timed(n, read),
            "webhook_events_read_ms": await timed(n, events),
            "url_signing_ms": await timed(n, sign),
            "url_signing_cached_ms": await timed(n, sign_cached),
            "json_encode_ms": await timed(n, encode),
        }


async def burst(url: str, headers: dict[str, str], concurrency: int, rounds: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            start = time.perf_counter()
            async with session.get(url, headers=headers) as answer:
                await answer.read()
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
            latencies.append((time.perf_counter() - start) * 1000)

        # One warm-up burst opens the connections; it is not counted.
        await asyncio.gather(*(one() for _ in range(concurrency)))
        latencies.clear()
        statuses.clear()
        start = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {
        "statuses": statuses,
        "requests_per_s": round(len(latencies) / seconds, 1),
        "latency_ms": percentiles(latencies),
    }


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(SECRET, sub='bench', campaigns=[CAMPAIGN])}"}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`service_process` passes this process's environment on: set some of it for one run."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def bench_process(
    settings: Settings, export_id: str, args: argparse.Namespace, *, caches: bool
) -> Any:
    off = {} if caches else CACHES_OFF
    with environment(off), service_process("api", settings) as port:
        url = f"http://127.0.0.1:{port}/campaigns/{CAMPAIGN}/exports/{export_id}"
        return await burst(url, headers(), args.concurrency, args.rounds)


async def bench_profile(settings: Settings, export_id: str, args: argparse.Namespace) -> str:
    # Without the caches: where a GET's time goes when every one verifies and signs.
    app = create_app(
        settings.model_copy(update={"auth_cache_size": 0, "signed_url_cache_size": 0}),
        run_worker=False,
    )
    async with listening(app, "127.0.0.1", 0) as port:
        url = f"http://127.0.0.1:{port}/campaigns/{CAMPAIGN}/exports/{export_id}"
        profile = cProfile.Profile()
        profile.enable()
        await burst(url, headers(), args.concurrency, args.rounds)
        profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    # The server's side: our code, the JWT library, botocore's signer, pymongo, aiohttp's server.
    stats.sort_stats("cumulative").print_stats(
        r"export_service|jwt/|botocore/(signers|auth)|pymongo/asynchronous|web_protocol|web_app", 30
    )
    # Where the CPU goes, whoever called (the clients' share included).
    stats.sort_stats("tottime").print_stats(25)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=300, help="GETs at once")
    parser.add_argument("--rounds", type=int, default=5, help="bursts measured")
    parser.add_argument("--steps", type=int, default=500, help="runs of each step alone")
    parser.add_argument("--profile", action="store_true", help="cProfile one in-process run")
    parser.add_argument("--label", default="", help="a name for this run in the results")
    add_results_flag(parser)
    args = parser.parse_args()
    logs.configure("console", "WARNING")
    info = machine()
    results: dict[str, Any] = {"machine": info, "label": args.label, "load_before": load()}
    with secantus_server() as uri, moto_server() as s3:
        settings = settings_for(uri, s3, mongo_db="bench_get")

        async def run() -> None:
            export_id = await prepare(settings)
            results["steps_ms"] = await bench_steps(settings, export_id, args.steps)
            results["load_before_burst"] = load()
            results["burst_no_caches"] = await bench_process(
                settings, export_id, args, caches=False
            )
            results["burst"] = await bench_process(settings, export_id, args, caches=True)
            if args.profile:
                results["profile"] = await bench_profile(settings, export_id, args)

        asyncio.run(run())
    results["load_after"] = load()
    steps = results["steps_ms"]
    print(machine_table(info))
    print(f"load (1/5/15 min) before: {results['load_before']}, after: {results['load_after']}")
    print(table("one GET, step by step (ms, mean)", ["step", "ms"], list(steps.items())))
    rows = []
    for name in ("burst_no_caches", "burst"):
        got = results[name]
        lat = got["latency_ms"]
        rows.append([name, lat["p50"], lat["p95"], lat["max"], got["requests_per_s"],
                     json.dumps(got["statuses"])])  # fmt: skip
    print(
        table(
            f"{args.concurrency} GETs at once x {args.rounds} (export-service api process)",
            ["run", "p50 ms", "p95 ms", "max ms", "req/s", "statuses"],
            rows,
        )
    )
    if args.profile:
        print(results["profile"])
    path = write_results("get_path" + (f"-{args.label}" if args.label else ""), results,
                         args.write_results)  # fmt: skip
    print(f"results: {path}")


if __name__ == "__main__":
    main()
