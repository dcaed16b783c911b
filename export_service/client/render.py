"""What the client shows: a live progress bar, one export's result, a table of exports, errors.

Progress goes to stderr and results to stdout, so `export-service status … --json | jq` works.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from export_service.client.api import ApiError, Export

STATUS_STYLE = {
    "PENDING": "yellow",
    "TRIGGERED": "cyan",
    "FINISHED": "green",
    "FAILED": "red",
    "EXPIRED": "red",
}


# Piped output is not cut to 80 columns: a truncated id or size helps nobody, and tables
# render at their natural width anyway.
PIPE_WIDTH = 500


def console(*, stderr: bool = False) -> Console:
    made = Console(stderr=stderr)
    return made if made.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def duration(export: Export) -> float | None:
    dates = export.get("date") or {}
    start = _when(dates.get("triggered"))
    end = _when(dates.get("finished") or dates.get("failed") or dates.get("expired"))
    return (end - start).total_seconds() if start and end else None


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


class RowsColumn(ProgressColumn):
    """`1,234/5,678 rows`, or `1,234 rows` when the export type has no preliminary count."""

    def render(self, task: Task) -> Text:
        done = f"{int(task.completed):,}"
        return Text(f"{done}/{int(task.total):,} rows" if task.total else f"{done} rows")


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "", style="progress.data.speed")


class EtaColumn(TimeRemainingColumn):
    """`ETA 0:01:05` once a total and a rate are known; nothing otherwise."""

    def render(self, task: Task) -> Text:
        remaining = super().render(task)
        if task.total is None or not remaining.plain or task.finished:
            return Text("")
        return Text("ETA ", style="progress.remaining") + remaining


class ProgressBar:
    """A live bar fed with each polled export: rows, %, rate and ETA (% and ETA need a total)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            RowsColumn(),
            RateColumn(),
            EtaColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: TaskID | None = None
        self._status = ""

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, export: Export) -> None:
        progress = export.get("progress") or {}
        status = str(export["status"])
        total = progress.get("total")
        processed = int(progress.get("processed") or 0)
        if status == "FINISHED" and export.get("count") is not None:
            processed = int(export["count"])
            total = total or processed
        label = f"[{STATUS_STYLE.get(status, '')}]{status:<9}[/]"
        place = queue_text(export)
        if place:
            label += f" {place}"
        if self._task is None:
            self._task = self._progress.add_task(label, total=total, completed=processed)
        elif status == "PENDING" and self._status == "TRIGGERED":
            # Re-queued (a worker stopped): it starts over, and so does the rate.
            self._progress.reset(self._task, total=total, completed=0, description=label)
        else:
            self._progress.update(self._task, total=total, completed=processed, description=label)
        self._status = status


def queue_text(export: Export) -> str:
    """`position 3, starts in ~1 min`: where a PENDING export stands ("" for any other)."""
    queue = export.get("queue") or {}
    if export.get("status") != "PENDING" or queue.get("position") is None:
        return ""
    text = f"position {queue['position']}"
    eta = queue.get("etaSeconds")
    if eta is not None:
        text += f", starts in ~{human_seconds(float(eta))}"
    return text


def human_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def download_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def show_export(console: Console, export: Export, saved: list[str] | None = None) -> None:
    """One export, as lines that never wrap inside a value (URLs and hashes stay copyable)."""
    head = Text.assemble(
        ("export ", "bold"),
        (str(export["id"]), "bold"),
        "  ",
        _status(str(export["status"])),
        f"  {export['exportType']}  campaign {export['campaignId']}",
    )
    console.print(head, soft_wrap=True)

    def line(label: str, value: str) -> None:
        console.print(Text(f"  {label:<10}") + Text(value), soft_wrap=True, highlight=False)

    options = [f"dateKey {export['dateKey']}"] if export.get("dateKey") else []
    if export.get("includeAllMarkets"):
        options.append("includeAllMarkets")
    if options:
        line("options", ", ".join(options))
    line("created", str((export.get("date") or {}).get("created", "")))
    if queue_text(export):
        line("queue", queue_text(export))
    took = duration(export)
    if took is not None:
        line("took", f"{took:.1f} s")
    progress = export.get("progress") or {}
    if export.get("count") is not None:
        line("rows", f"{export['count']:,}")
    elif progress:
        total = progress.get("total")
        done = f"{progress.get('processed', 0):,}"
        line("progress", f"{done}/{total:,} rows" if total is not None else f"{done} rows")
    if export.get("error"):
        error = export["error"]
        line("error", f"{error.get('code')}: {error.get('message')}")
    for number, stored in enumerate(export.get("files") or [], start=1):
        line(f"file {number}", f"s3://{stored['bucket']}/{stored['key']}")
        line("", f"{stored['rows']:,} rows, {human_bytes(stored['bytes'])}, acl {stored['acl']}")
        line("", f"sha256 {stored['sha256']}")
    if export.get("purged"):
        purged = export["purged"]
        line("purged", f"{purged.get('date')} ({purged.get('reason')}): the files are gone")
    for path in saved or []:
        line("saved", f"{path} (sha256 verified)")
    if export.get("path"):
        line("path", str(export["path"]))


def show_exports(console: Console, exports: list[Export]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True, min_width=24)
    table.add_column("TYPE", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("CREATED (UTC)", no_wrap=True)
    table.add_column("ROWS", justify="right", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("TOOK", justify="right", no_wrap=True)
    for export in exports:
        progress = export.get("progress") or {}
        rows = export.get("count")
        if rows is None:
            total = progress.get("total")
            rows_text = f"{progress.get('processed', 0):,}" + (f"/{total:,}" if total else "")
        else:
            rows_text = f"{rows:,}"
        files: list[dict[str, Any]] = export.get("files") or []
        took = duration(export)
        created = str((export.get("date") or {}).get("created", ""))
        table.add_row(
            str(export["id"]),
            str(export["exportType"]),
            _status(str(export["status"])),
            created[:19].replace("T", " "),
            rows_text,
            human_bytes(sum(f["bytes"] for f in files)) if files else "",
            f"{took:.1f} s" if took is not None else "",
        )
    console.print(table)
    console.print(Text(f"{len(exports)} export(s)", style="dim"))


def show_error(console: Console, error: ApiError) -> None:
    where = f"HTTP {error.status}" if error.status else "connection"
    console.print(
        Text.assemble(("error", "bold red"), f" ({where}): {error.message}"), soft_wrap=True
    )
    payload = dict(error.payload)
    payload.pop("code", None)
    lines = []
    if "exportTypes" in payload:
        lines.append(f"valid export types: {', '.join(payload.pop('exportTypes'))}")
    errors = payload.pop("errors", []) or []
    for item in errors if len(errors) > 1 else []:  # a single one is the message already
        lines.append(f"{'.'.join(map(str, item.get('loc', [])))}: {item.get('msg')}")
    lines.extend(f"{key}: {value}" for key, value in payload.items())
    for text in lines:
        console.print(Text(f"  {text}"), soft_wrap=True)
