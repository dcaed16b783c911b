"""The `export-service` console command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

from export_service import devstate, logs, telemetry
from export_service.app import server
from export_service.app.auth import mint
from export_service.app.factory import create_app
from export_service.client import commands as client_commands
from export_service.dev.embedded import EmbeddedUnavailable, embedded_servers
from export_service.lost_objects import EMBEDDED_RESTART, purge_exports_with_lost_objects
from export_service.runtime import Services, dev_jwt_secret
from export_service.settings import Settings
from export_service.sources import CAMPAIGNS, SOURCE_COLLECTIONS, find_campaign
from export_service.worker_http import worker_listener

log = structlog.get_logger(__name__)

DEMO_CAMPAIGN = "demo-campaign"


@contextlib.contextmanager
def _servers(settings: Settings) -> Iterator[None]:
    """Embedded servers when nothing is configured; real ones are never started."""
    if not settings.embedded:
        yield
        return
    with embedded_servers(settings):
        yield


@contextlib.contextmanager
def _published(settings: Settings) -> Iterator[None]:
    """Tell this user's other commands (any directory) where the dev instance is, while it runs."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    path = devstate.publish(devstate.DevInstance(
        url=f"http://{host}:{settings.port}", secret=dev_jwt_secret(settings),
        data_dir=str(Path(settings.data_dir).resolve()), pid=os.getpid(),
    ))  # fmt: skip
    log.info("dev_state_published", path=str(path))
    try:
        yield
    finally:
        devstate.withdraw(os.getpid())


def _serve(settings: Settings, *, run_worker: bool) -> None:
    app = create_app(settings, run_worker=run_worker)
    log.info("api_listening", host=settings.host, port=settings.port)
    server.serve(app, settings.host, settings.port)


async def _worker_main(settings: Settings) -> None:
    async with Services.open(settings) as services, contextlib.AsyncExitStack() as stack:
        if settings.worker_metrics_port is not None:
            await stack.enter_async_context(
                worker_listener(services, settings.host, settings.worker_metrics_port)
            )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = asyncio.create_task(services.worker.run())
        # Its own task: a slow receiver never holds up a claim or an export.
        dispatcher = asyncio.create_task(services.dispatcher.run())
        sweeper = asyncio.create_task(services.retention.run())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        services.dispatcher.shutdown()
        services.retention.shutdown()
        await services.worker.shutdown()
        stopper.cancel()
        await runner
        await dispatcher
        await sweeper


async def _seed(settings: Settings, campaign_id: str, entries: int, seed: int, fresh: bool) -> None:
    from export_service.dev.seed import SeedPlan
    from export_service.dev.seed import seed as seed_campaign

    async with Services.open(settings) as services:
        db = services.db
        if fresh:
            for name in SOURCE_COLLECTIONS:
                await db[name].delete_many(
                    {"_id": campaign_id} if name == CAMPAIGNS else {"campaignId": campaign_id}
                )
        elif await find_campaign(db, campaign_id):
            print(f"campaign {campaign_id} already seeded (use --fresh to replace it)")
            return
        counts = await seed_campaign(
            db, SeedPlan(campaign_id=campaign_id, entries=entries, seed=seed)
        )
        print("seeded " + ", ".join(f"{n} {c}" for c, n in counts.items()))


async def _purge_lost_objects(settings: Settings) -> None:
    """After a restart of the in-memory embedded S3, no FINISHED export points at a 404."""
    if settings.s3_endpoint_url is not None:
        return
    async with Services.open(settings) as services:
        lost = await purge_exports_with_lost_objects(services.repository, services.storage)
    if lost:
        print(f"{len(lost)} FINISHED export(s) lost their files when the embedded S3 server "
              f"(in memory) restarted: marked purged (reason {EMBEDDED_RESTART}); "
              f"request them again", flush=True)  # fmt: skip


def _demo_banner(settings: Settings) -> str:
    token = mint(dev_jwt_secret(settings), sub="demo-admin", campaigns=[DEMO_CAMPAIGN],
                 supreme=True, ttl_seconds=12 * 3600)  # fmt: skip
    base = f"http://{settings.host}:{settings.port}"
    return f"""
export-service dev is running: API and worker on {base}
  embedded MongoDB-wire server on 127.0.0.1:{settings.embedded_mongo_port}, S3 on
  127.0.0.1:{settings.embedded_s3_port}, data under {settings.data_dir}/

A 12-hour demo token (REPORT on {DEMO_CAMPAIGN}, supreme):
  export TOKEN={token}

Request an export, then read it (the answer's "path" is a download URL once FINISHED):
  curl -s -X POST {base}/campaigns/{DEMO_CAMPAIGN}/exports -H "Authorization: Bearer $TOKEN" \\
       -H 'Content-Type: application/json' -d '{{"exportType": "entries"}}'
  curl -s {base}/campaigns/{DEMO_CAMPAIGN}/exports -H "Authorization: Bearer $TOKEN"
"""


# Written by the service itself (and their indexes created) by any command that opens it.
SERVICE_COLLECTIONS = ("exports", "ccpa_requests", "webhook_events")
REMOTE_HELP = "run against EXPORT_SERVICE_MONGO_URI (not the embedded server) all the same"


def _remote_refusal(command: str, settings: Settings, fresh: bool) -> str:
    """What `seed`/`dev` would change on a MongoDB that is not the embedded one."""
    assert settings.mongo_uri is not None
    # The hosts only: the URI may hold a password.
    hosts = settings.mongo_uri.get_secret_value().split("://", 1)[-1].split("/", 1)[0]
    hosts = hosts.rsplit("@", 1)[-1]
    seeded = ", ".join(SOURCE_COLLECTIONS)
    if command == "seed":
        would = f"write demo documents into {seeded}" + (
            " after deleting the campaign's documents in them" if fresh else ""
        )
    else:
        would = (
            f"write demo documents into {seeded}, then serve the API and a worker, which write "
            f"{', '.join(SERVICE_COLLECTIONS)}"
        )
    return (
        f"error: `{command}` refused: EXPORT_SERVICE_MONGO_URI is set (MongoDB at {hosts}, "
        f"database {settings.mongo_db}), not the embedded server. It would {would}, and create "
        f"indexes on {', '.join(SERVICE_COLLECTIONS)} and {seeded}. Nothing was changed; "
        "add --allow-remote to do it there all the same."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export-service", description="Fan-campaign exports from MongoDB to S3."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="API and worker in one process")
    sub.add_parser("api", help="API only")
    sub.add_parser("worker", help="worker only")
    dev = sub.add_parser("dev", help="embedded servers, demo data, then serve")
    dev.add_argument("--entries", type=int, default=5_000, help="demo entries to seed")
    dev.add_argument("--allow-remote", action="store_true", help=REMOTE_HELP)
    token = sub.add_parser("token", help="mint a token for the local secret")
    token.add_argument("--sub", default="local-admin", help="user id (sub claim)")
    token.add_argument("--campaign", action="append", default=[], help="campaign with REPORT")
    token.add_argument("--supreme", action="store_true", help="allow CCPA deletion")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    seed = sub.add_parser("seed", help="write a realistic campaign into the source collections")
    seed.add_argument("--campaign", default=DEMO_CAMPAIGN)
    seed.add_argument("--entries", type=int, default=10_000)
    seed.add_argument("--seed", type=int, default=42)
    seed.add_argument("--fresh", action="store_true", help="replace the campaign's data")
    seed.add_argument("--allow-remote", action="store_true", help=REMOTE_HELP)
    client_commands.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in client_commands.COMMANDS:
        return client_commands.run(args)
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    command = args.command
    if command == "token":
        try:
            secret, _ = devstate.local_secret(settings)
        except devstate.NoLocalSecret as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        print(mint(secret, sub=args.sub, campaigns=args.campaign,
                   supreme=args.supreme, ttl_seconds=args.ttl))  # fmt: skip
        return 0
    if command in ("seed", "dev") and not settings.embedded and not args.allow_remote:
        # Demo data is for the embedded server: on a shared or production MongoDB it is an
        # accident, and nothing (not even an index) is written before the user says so.
        print(_remote_refusal(command, settings, getattr(args, "fresh", False)), file=sys.stderr)
        return 2
    if command in ("serve", "api", "worker", "dev"):
        telemetry.install(settings, component=command)
    try:
        with _servers(settings):
            _run(command, settings, args)
    except EmbeddedUnavailable as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _run(command: str, settings: Settings, args: argparse.Namespace) -> None:
    if command == "serve":
        _serve(settings, run_worker=True)
    elif command == "api":
        _serve(settings, run_worker=False)
    elif command == "worker":
        asyncio.run(_worker_main(settings))
    elif command == "seed":
        asyncio.run(_seed(settings, args.campaign, args.entries, args.seed, args.fresh))
    elif command == "dev":
        asyncio.run(_seed(settings, DEMO_CAMPAIGN, args.entries, 42, fresh=False))
        asyncio.run(_purge_lost_objects(settings))
        with _published(settings):
            print(_demo_banner(settings), flush=True)
            _serve(settings, run_worker=True)


if __name__ == "__main__":
    sys.exit(main())
