"""Runs the client commands at the terminal, rendering with rich (the `cli` extra).

Imported only when a client command runs (`commands.run`), never by the server commands.
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
from export_service.client.commands import (
    EXIT_API,
    EXIT_DOWNLOAD,
    EXIT_EXPORT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    TOKEN_ENV,
)
from export_service.settings import Settings


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
    with render.ProgressBar(err) as bar:
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
    purged = export.get("purged")
    if purged:
        # Its objects are gone (contract §13): the answer carries no URLs to fetch.
        raise DownloadFailed(
            f"export {export['id']} was purged ({purged.get('reason')}, {purged.get('date')}): "
            "its files are gone; request the export again"
        )
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
