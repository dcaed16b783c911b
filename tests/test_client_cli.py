"""`export-service submit|list|status` against a live service (real socket, worker running)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestServer
from rich.console import Console

from export_service import logs
from export_service.app.factory import create_app
from export_service.app.routes import SERVICES
from export_service.cli import build_parser
from export_service.client import commands
from export_service.client.api import DownloadFailed, download
from export_service.client.render import ProgressBar
from export_service.models import ExportStatus, ExportType
from export_service.queue.repository import Beat
from export_service.runtime import Services
from export_service.settings import Settings
from tests.support.app import JWT_SECRET, make_settings, token
from tests.support.data import CAMPAIGN, add_campaign, entry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def live(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Services]:
    """The whole service (API + worker) on a real socket; the CLI finds it through the env."""
    # The service's log lines would land in the same captured stdout as the CLI's output.
    logs.configure("json", "INFO", stream=io.StringIO())
    app = create_app(settings, run_worker=True, create_buckets=True)
    async with TestServer(app, host="127.0.0.1") as server:
        services: Services = app[SERVICES]
        monkeypatch.setenv("EXPORT_SERVICE_URL", str(server.make_url("")))
        monkeypatch.setenv("EXPORT_SERVICE_TOKEN", token([CAMPAIGN]))
        try:
            yield services
        finally:
            await services.client.drop_database(settings.mongo_db)
            structlog.reset_defaults()


async def cli(*argv: str) -> int:
    # The parser reads EXPORT_SERVICE_URL/TOKEN defaults when built, as at the console.
    return await commands.execute(build_parser().parse_args(list(argv)))


async def seed(services: Services, n: int) -> None:
    await add_campaign(services.db)
    await services.db["entries"].insert_many([entry(f"e{i:03d}", f"u{i:03d}") for i in range(n)])


async def test_submit_wait_download_then_list_and_status(
    live: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    await seed(live, 25)
    target = tmp_path / "entries.csv"
    code = await cli("submit", "--campaign", CAMPAIGN, "--type", "entries",
                     "--download", str(target), "--interval", "0.05")  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    (export,) = [e async for e in live.db["exports"].find({})]
    assert export["status"] == "FINISHED" and export["count"] == 25
    (stored,) = export["files"]
    s3 = await live.storage.client.get_object(Bucket=stored["bucket"], Key=stored["key"])
    body = await s3["Body"].read()
    assert target.read_bytes() == body
    assert hashlib.sha256(body).hexdigest() == stored["sha256"]
    assert not list(tmp_path.glob("*.part"))
    assert f"export {export['_id']}  FINISHED  entries" in out
    assert f"sha256 {stored['sha256']}" in out
    assert f"saved     {target} (sha256 verified)" in out
    assert "rows      25" in out
    assert "FINISHED" in err and "25/25 rows" in err  # the progress bar's last frame

    # No token given: one is minted from the local secret (as after `export-service dev`).
    monkeypatch.delenv("EXPORT_SERVICE_TOKEN")
    monkeypatch.setenv("EXPORT_SERVICE_JWT_SECRET", JWT_SECRET)
    assert await cli("list", "--campaign", CAMPAIGN) == 0
    out, _ = capsys.readouterr()
    header, row, footer = out.strip().splitlines()
    assert header.split() == ["ID", "TYPE", "STATUS", "CREATED", "(UTC)", "ROWS", "SIZE", "TOOK"]
    assert row.split()[:3] == [export["_id"], "entries", "FINISHED"]
    assert row.split()[5] == "25"
    assert footer == "1 export(s)"

    assert await cli("list", "--campaign", CAMPAIGN, "--status", "FAILED") == 0
    assert capsys.readouterr().out.strip().endswith("0 export(s)")

    assert await cli("status", export["_id"], "--campaign", CAMPAIGN) == 0
    assert f"sha256 {stored['sha256']}" in capsys.readouterr().out


async def test_bad_type_exits_nonzero_with_the_api_message(
    live: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    await add_campaign(live.db)
    assert await cli("submit", "--campaign", CAMPAIGN, "--type", "nope", "--wait") == 1
    err = capsys.readouterr().err
    assert "error (HTTP 400): BadRequest: unknown exportType" in err
    assert "valid export types: entries, codes" in err
    assert await live.db["exports"].count_documents({}) == 0

    assert await cli("status", "0123456789abcdef01234567", "--campaign", CAMPAIGN) == 1
    assert "error (HTTP 404): NotFound" in capsys.readouterr().err


async def test_submit_carries_markets_and_dates_as_filters(
    live: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    await add_campaign(live.db)
    m1, m2 = f"{CAMPAIGN}-m1", f"{CAMPAIGN}-m2"
    code = await cli("submit", "--campaign", CAMPAIGN, "--type", "fanlist", "--market", m2,
                     "--market", m1, "--from", "2026-11-01T00:00:00Z",
                     "--to", "2026-12-01T00:00:00+01:00", "--json")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (export,) = [e async for e in live.db["exports"].find({})]
    assert export["filters"]["marketIds"] == [m1, m2]
    assert export["filters"]["createdTo"].isoformat() == "2026-11-30T23:00:00"
    # The joined types take them too (contract §12), codeWaves with its wave.
    code = await cli("submit", "--campaign", CAMPAIGN, "--type", "codeWaves", "--date-key",
                     "20261124", "--market", m1, "--from", "2026-11-01T00:00:00Z", "--json")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    waves = await live.db["exports"].find_one({"exportType": "codeWaves"})
    assert waves is not None and waves["dateKey"] == "20261124"
    assert waves["filters"] == {"marketIds": [m1], "createdFrom": datetime(2026, 11, 1)}
    # A bad date is the API's 400, in words, and nothing is written.
    code = await cli("submit", "--campaign", CAMPAIGN, "--type", "entries", "--from", "soon")
    assert code == 1
    assert "error (HTTP 400)" in capsys.readouterr().err
    assert await live.db["exports"].count_documents({}) == 2


async def test_failed_export_exits_3_with_its_error(
    live: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    await add_campaign(live.db, markets=[])
    code = await cli("submit", "--campaign", CAMPAIGN, "--type", "entries", "--wait",
                     "--interval", "0.05")  # fmt: skip
    assert code == commands.EXIT_EXPORT_FAILED
    out = capsys.readouterr().out
    assert "FAILED" in out and "error     NoMarketsFound" in out


async def test_console_command_reports_api_errors_with_exit_status(live: Services) -> None:
    """The installed entry point (cli.main), in its own process, as a person would run it."""
    await add_campaign(live.db)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "export_service.cli", "submit", "--campaign", CAMPAIGN,
        "--type", "codeWaves", "--date-key", "20261399",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err
    assert b"error (HTTP 400): BadRequest: dateKey" in err
    assert b"not a real date" in err
    assert out == b""


async def test_download_with_a_wrong_sha256_leaves_no_file(
    services: Services, tmp_path: Path
) -> None:
    bucket = services.settings.bucket_exports
    await services.storage.client.put_object(Bucket=bucket, Key="k.csv", Body=b"a,b\r\n1,2\r\n")
    url = await services.storage.presign(bucket, "k.csv")
    dest = tmp_path / "k.csv"
    seen: list[int] = []
    async with aiohttp.ClientSession() as session:
        with pytest.raises(DownloadFailed, match="sha256 mismatch"):
            await download(session, url, dest, sha256="0" * 64, on_bytes=seen.append)
        assert not dest.exists() and not list(tmp_path.iterdir())
        good = hashlib.sha256(b"a,b\r\n1,2\r\n").hexdigest()
        assert await download(session, url, dest, sha256=good, on_bytes=seen.append) == 10
    assert dest.read_bytes() == b"a,b\r\n1,2\r\n"


def _frame(*updates: dict[str, Any]) -> str:
    stream = io.StringIO()
    with ProgressBar(Console(file=stream, width=200)) as bar:
        for update in updates:
            bar.update(update)
    return stream.getvalue()


def test_progress_shows_percent_only_when_the_total_is_known() -> None:
    counted = _frame({"status": "TRIGGERED", "progress": {"processed": 500, "total": 1000}})
    assert "50%" in counted and "500/1,000 rows" in counted and "ETA" in counted
    uncounted = _frame({"status": "TRIGGERED", "progress": {"processed": 500}})
    assert "500 rows" in uncounted
    assert "%" not in uncounted and "ETA" not in uncounted


def test_progress_shows_the_queue_position_and_eta_while_pending() -> None:
    waiting = {"status": "PENDING", "progress": {"processed": 0}}
    frame = _frame({**waiting, "queue": {"position": 3, "etaSeconds": 95.0}})
    assert "position 3, starts in ~2 min" in frame
    frame = _frame({**waiting, "queue": {"position": 1, "etaSeconds": None}})
    assert "position 1" in frame and "starts in" not in frame
    running = _frame({"status": "TRIGGERED", "progress": {"processed": 5, "total": 10}})
    assert "position" not in running


async def test_progress_is_written_every_progress_interval_while_the_export_runs(
    mongo_uri: str, s3_endpoint: str
) -> None:
    """What the progress bar polls: `progress.processed` moves between (5 s) heartbeats."""
    settings = make_settings(
        mongo_uri, s3_endpoint, progress_interval_millis=20, heartbeat_interval_millis=60_000
    )
    async with Services.open(settings, create_buckets=True) as services:
        try:
            await seed(services, 120)
            await services.repository.create(
                campaign_id=CAMPAIGN, campaign_name="T", export_type=ExportType.ENTRIES,
                requester_user_id="u", date_key=None, include_all_markets=None,
            )  # fmt: skip
            held, release, written = asyncio.Event(), asyncio.Event(), asyncio.Event()

            async def hold(export: Any, rows: int) -> None:
                held.set()
                await release.wait()

            real_heartbeat = services.repository.heartbeat

            async def heartbeat(
                export_id: str, worker_id: str, processed: int | None = None
            ) -> Beat:
                mine = await real_heartbeat(export_id, worker_id, processed)
                if processed:
                    written.set()
                return mine

            services.worker.batch_hook = hold
            services.repository.heartbeat = heartbeat  # type: ignore[method-assign]
            running = asyncio.create_task(services.worker.process())
            await asyncio.wait_for(held.wait(), 30)
            await asyncio.wait_for(written.wait(), 30)  # 60 s before the next heartbeat
            doc = await services.db["exports"].find_one({})
            assert doc is not None and doc["status"] == "TRIGGERED"
            assert 0 < doc["progress"]["processed"] < doc["progress"]["total"] == 120
            release.set()
            done = await running
            assert done is not None and done.status is ExportStatus.FINISHED
        finally:
            await services.client.drop_database(settings.mongo_db)


async def test_cancel_command_cancels_and_reports_a_finished_export(
    live: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(live, 3)
    await live.worker.shutdown()  # the export stays PENDING until the command cancels it
    export, _ = await live.repository.create(
        campaign_id=CAMPAIGN, campaign_name="Tour", export_type=ExportType.CODES,
        requester_user_id="u", date_key=None, include_all_markets=None,
    )  # fmt: skip
    assert await cli("cancel", export.id, "--campaign", CAMPAIGN) == commands.EXIT_OK
    out = capsys.readouterr().out
    assert "FAILED" in out and "Cancelled: cancelled on request" in out
    cancelled = await live.repository.get(export.id)
    assert cancelled is not None and cancelled.cancelled
    assert cancelled.cancelled_by == "admin-1"
    assert await cli("cancel", export.id, "--campaign", CAMPAIGN, "--json") == commands.EXIT_OK
    assert '"Cancelled"' in capsys.readouterr().out
    assert await cli("cancel", "nope", "--campaign", CAMPAIGN) == commands.EXIT_API
    assert "error (HTTP 404): NotFound" in capsys.readouterr().err


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_server_commands_run_without_rich() -> None:
    # What `serve`, `api` and `worker` load, with rich absent as in the image (no `cli` extra);
    # None in sys.modules makes `import rich` fail as it does where rich is not installed.
    # (structlog would use rich for tracebacks when present, and falls back without it.)
    proc = _python(
        "import sys\n"
        "sys.modules['rich'] = None\n"
        "import export_service.cli, export_service.app.factory, export_service.worker_http\n"
        "import structlog\n"
        "from export_service import logs\n"
        "export_service.cli.build_parser().parse_args(['serve'])\n"
        "logs.configure('console', 'INFO')\n"
        "try:\n"
        "    raise RuntimeError('boom')\n"
        "except RuntimeError:\n"
        "    structlog.get_logger().exception('failed')\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeError: boom" in proc.stdout + proc.stderr


def test_client_command_without_rich_says_to_install_the_cli_extra() -> None:
    proc = _python(
        "import sys\n"
        "sys.modules['rich'] = None\n"
        "from export_service.cli import main\n"
        "sys.exit(main(['list', '--campaign', 'c', '--url', 'http://127.0.0.1:9', '--token', 't']))\n"
    )
    assert proc.returncode == commands.EXIT_API
    assert proc.stderr == commands.NO_CLI_EXTRA + "\n"
    assert "pip install 'export-service[cli]'" in proc.stderr
