"""The client subcommands and their options; wired into `export-service` by cli.py.

Exit codes: 0 done; 1 the API answered an error or could not be reached; 2 bad usage (argparse);
3 the export ended FAILED or EXPIRED; 4 a download failed or its sha256 did not match;
130 interrupted while waiting (the export goes on).

Only parsing lives here, so the server's `export-service` command never imports rich: what runs
the client commands (`terminal.py`, `render.py`) renders with it and comes with the `cli` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from export_service.models import ExportStatus, ExportType

COMMANDS = ("submit", "list", "status", "cancel")

EXIT_OK, EXIT_API, EXIT_EXPORT_FAILED, EXIT_DOWNLOAD, EXIT_INTERRUPTED = 0, 1, 3, 4, 130
URL_ENV, TOKEN_ENV = "EXPORT_SERVICE_URL", "EXPORT_SERVICE_TOKEN"
NO_CLI_EXTRA = (
    "error: the client commands need the `cli` extra (rich): pip install 'export-service[cli]'"
)


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
        from export_service.client import terminal
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "rich":
            raise
        print(NO_CLI_EXTRA, file=sys.stderr)
        return EXIT_API
    try:
        return asyncio.run(terminal.execute(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def execute(args: argparse.Namespace) -> int:
    """Run one parsed client command (needs the `cli` extra)."""
    from export_service.client import terminal

    return await terminal.execute(args)
