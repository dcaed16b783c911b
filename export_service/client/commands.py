"""The client subcommands and their options; wired into `export-service` by cli.py.

Exit codes: 0 done; 1 the API answered an error or could not be reached; 2 bad usage (argparse);
3 the export ended FAILED or EXPIRED; 4 a download failed or its sha256 did not match;
130 interrupted while waiting (the export goes on).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
from rich.console import Console
from rich.text import Text

from export_service import devstate
from export_service.app.auth import mint
from export_service.client import render
from export_service.client.api import ApiClient, ApiError, DownloadFailed, Export, download
from export_service.models import ExportStatus, ExportType
from export_service.settings import Settings

COMMANDS = ("submit", "list", "status", "cancel")

EXIT_OK, EXIT_API, EXIT_EXPORT_FAILED, EXIT_DOWNLOAD, EXIT_INTERRUPTED = 0, 1, 3, 4, 130
URL_ENV, TOKEN_ENV = "EXPORT_SERVICE_URL", "EXPORT_SERVICE_TOKEN"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=os.environ.get(URL_ENV), help=f"service base URL (env {URL_ENV}; "
        "default: the running `export-service dev` instance's, else "
        "http://EXPORT_SERVICE_HOST:EXPORT_SERVICE_PORT)",
    )  # fmt: skip
    common.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV), help=f"bearer token (env {TOKEN_ENV}; "
        "default: minted from the running `export-service dev` instance's secret)",
    )  # fmt: skip
    common.add_argument("--campaign", required=True, help="campaign id")
    common.add_argument("--json", action="store_true", help="print the API's JSON instead")

    submit = sub.add_parser("submit", parents=[common], help="request an export (and follow it)")
    submit.add_argument("--type", required=True, dest="export_type", metavar="TYPE",
                        help="export type: " + ", ".join(t.value for t in ExportType))  # fmt: skip
    submit.add_argument("--date-key", help="YYYYMMDD (codeWaves)")
    submit.add_argument("--include-all-markets", action="store_true", default=None,
                        help="entries: one more row per additional market")  # fmt: skip
    submit.add_argument("--market", action="append", dest="markets", metavar="M",
                        help="only this market (repeatable; types that read entries)")  # fmt: skip
    submit.add_argument("--from", dest="created_from", metavar="DATE",
                        help="entries created at or after DATE (ISO 8601 with a zone, e.g. "
                             "2026-11-23T00:00:00Z)")  # fmt: skip
    submit.add_argument("--to", dest="created_to", metavar="DATE",
                        help="entries created before DATE (ISO 8601 with a zone)")  # fmt: skip
    submit.add_argument("--wait", action="store_true", help="show progress until it ends")
    submit.add_argument("--download", metavar="PATH",
                        help="save the file(s) once finished (implies --wait); a directory "
                        "for several files")  # fmt: skip
    submit.add_argument("--interval", type=float, default=0.5, help="poll period in seconds")

    listing = sub.add_parser("list", parents=[common], help="a campaign's exports, newest first")
    listing.add_argument("--type", dest="export_type", metavar="TYPE")
    listing.add_argument("--status", choices=[s.value for s in ExportStatus])
    listing.add_argument("--limit", type=int, default=20, help="at most this many (1..500)")

    status = sub.add_parser("status", parents=[common], help="one export")
    status.add_argument("export_id", metavar="ID")

    cancel = sub.add_parser(
        "cancel", parents=[common], help="cancel a PENDING export, or stop a TRIGGERED one"
    )
    cancel.add_argument("export_id", metavar="ID")


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(execute(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def execute(args: argparse.Namespace) -> int:
    out, err = render.console(), render.console(stderr=True)
    settings = Settings()
    instance = devstate.running_instance()
    url = args.url or (instance.url if instance else f"http://{settings.host}:{settings.port}")
    token = args.token
    if token is None:
        try:
            secret, _ = devstate.local_secret(settings)
        except devstate.NoLocalSecret as exc:
            err.print(Text(f"error: pass --token or set {TOKEN_ENV}; {exc.message}"))
            return EXIT_API
        token = mint(secret, sub="export-service-cli", campaigns=[args.campaign], ttl_seconds=3600)
    async with aiohttp.ClientSession() as session:
        client = ApiClient(url, token, session)
        try:
            if args.command == "submit":
                return await _submit(client, session, args, out, err)
            if args.command == "list":
                exports = await client.page(
                    args.campaign, export_type=args.export_type, status=args.status,
                    limit=args.limit,
                )  # fmt: skip
                if args.json:
                    out.print_json(json.dumps(exports))
                else:
                    render.show_exports(out, exports)
                return EXIT_OK
            if args.command == "cancel":
                answer = await client.cancel(args.campaign, args.export_id)
                if answer.get("cancelRequested") and answer["status"] == "TRIGGERED":
                    err.print("cancel requested: its worker stops it within seconds")
                _print(out, answer, args.json)
                return EXIT_OK
            export = await client.get(args.campaign, args.export_id)
            _print(out, export, args.json)
            return _exit_code(export)
        except ApiError as exc:
            render.show_error(err, exc)
            return EXIT_API
        except DownloadFailed as exc:
            err.print(Text(f"error: {exc.message}", style="red"))
            return EXIT_DOWNLOAD
        except (KeyboardInterrupt, asyncio.CancelledError):
            err.print(f"stopped waiting; the export goes on (export-service status ID "
                      f"--campaign {args.campaign})")  # fmt: skip
            return EXIT_INTERRUPTED


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The request's `filters`; the API validates them (and names what is wrong)."""
    filters: dict[str, Any] = {}
    if args.markets:
        filters["marketIds"] = args.markets
    if args.created_from is not None:
        filters["createdFrom"] = args.created_from
    if args.created_to is not None:
        filters["createdTo"] = args.created_to
    return filters


async def _submit(
    client: ApiClient,
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    out: Console,
    err: Console,
) -> int:
    created = await client.create(
        args.campaign, args.export_type, date_key=args.date_key,
        include_all_markets=args.include_all_markets,
        filters=_filters(args),
    )  # fmt: skip
    export = created.export
    if not created.created:
        err.print(f"an identical export is already {export['status']}: following {export['id']}")
    if not (args.wait or args.download):
        _print(out, export, args.json)
        return EXIT_OK
    err.print(f"export {export['id']} ({export['exportType']}, campaign {export['campaignId']})")
    with render.ExportProgress(err) as bar:
        export = await client.wait(export, interval=args.interval, on_update=bar.update)
    saved: list[str] = []
    if args.download and export["status"] == "FINISHED":
        saved = await _download_all(session, export, args.download, err)
    if args.json:
        _print(out, export, True)
    else:
        render.show_export(out, export, saved)
    return _exit_code(export)


async def _download_all(
    session: aiohttp.ClientSession, export: Export, where: str, err: Console
) -> list[str]:
    files = export.get("files") or []
    names = [PurePosixPath(f["key"]).name for f in files]
    target = Path(where)
    # Path() drops a trailing slash, and `out/` means a directory even before it exists.
    if len(files) == 1 and not (target.is_dir() or where.endswith(("/", os.sep))):
        destinations = [target]
    else:
        # Several objects (or a directory given): each under its own object name.
        if len(set(names)) != len(names):
            raise DownloadFailed("several files share a name; download them one by one")
        target.mkdir(parents=True, exist_ok=True)
        destinations = [target / name for name in names]
    saved = []
    with render.download_progress(err) as progress:
        for stored, dest in zip(files, destinations, strict=True):
            task = progress.add_task(dest.name, total=stored["bytes"])
            await download(
                session, stored["url"], dest, sha256=stored["sha256"],
                on_bytes=functools.partial(progress.advance, task),
            )  # fmt: skip
            saved.append(str(dest))
    return saved


def _print(out: Console, export: Export, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(export))
    else:
        render.show_export(out, export)


def _exit_code(export: Export) -> int:
    return EXIT_EXPORT_FAILED if export["status"] in ("FAILED", "EXPIRED") else EXIT_OK
