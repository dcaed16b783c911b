"""A newcomer's `export-service dev`: real processes, as at the console.

The client commands find the running instance from any directory (the per-user state file), never
mint with a second secret, and say what they looked for when there is nothing to find; the embedded
servers are reused only when this service started them; without the embedded extra the command
says in one line what to set.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from export_service.dev.embedded import stop_process, wait_for_port
from export_service.dev.seed import COLLECTIONS as SEED_COLLECTIONS
from tests.support.servers import free_port

CLI = [sys.executable, "-m", "export_service.cli"]


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The console's environment without any EXPORT_SERVICE_* setting of the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_SERVICE_")}
    env["XDG_STATE_HOME"] = str(tmp / "state")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@dataclass
class Dev:
    env: dict[str, str]
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]


def start_dev(tmp: Path, data_dir: Path) -> Dev:
    api_port = free_port()
    env = clean_env(
        tmp,
        EXPORT_SERVICE_DATA_DIR=str(data_dir),
        EXPORT_SERVICE_PORT=str(api_port),
        EXPORT_SERVICE_EMBEDDED_MONGO_PORT=str(free_port()),
        EXPORT_SERVICE_EMBEDDED_S3_PORT=str(free_port()),
        EXPORT_SERVICE_ENCODER_PROCESSES="0",
    )
    where = tmp / "dev-cwd"
    where.mkdir(exist_ok=True)
    with (tmp / "dev.log").open("ab") as log:
        process = subprocess.Popen([*CLI, "dev", "--entries", "40"], cwd=where, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_port(api_port, process, "export-service dev", 120)
    except RuntimeError:
        stop_process(process)
        raise RuntimeError((tmp / "dev.log").read_text()) from None
    return Dev(env, f"http://127.0.0.1:{api_port}", data_dir, process)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    instance = start_dev(tmp_path, tmp_path / "data")
    try:
        yield instance
    finally:
        stop_process(instance.process)


def get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        status: int = answer.status
        return status


def test_client_commands_find_the_dev_instance_from_another_directory(
    dev: Dev, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(tmp_path)  # no URL, no token, no data dir: only the state file

    state = tmp_path / "state" / "export-service" / "dev.json"
    assert state.stat().st_mode & 0o777 == 0o600
    assert json.loads(state.read_text())["url"] == dev.url

    listed = run(["list", "--campaign", "demo-campaign", "--json"], elsewhere, env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []

    minted = run(["token", "--campaign", "demo-campaign"], elsewhere, env)
    assert minted.returncode == 0, minted.stderr
    assert get(f"{dev.url}/campaigns/demo-campaign/exports", minted.stdout.strip()) == 200
    # No second secret anywhere: not in the other directory, and the instance's is unchanged.
    assert not (elsewhere / ".export-service").exists()
    assert len(list(tmp_path.rglob("dev-jwt-secret"))) == 1

    # Another command with the same data directory reuses the servers `dev` started.
    seeded = run(["seed", "--campaign", "second", "--entries", "5"], elsewhere, dev.env)
    assert seeded.returncode == 0, seeded.stderr
    assert "seeded" in seeded.stdout

    stop_process(dev.process)
    assert not state.exists()
    gone = run(["list", "--campaign", "demo-campaign"], elsewhere, env)
    assert gone.returncode == 1
    assert str(state) in gone.stderr and "EXPORT_SERVICE_JWT_SECRET" in gone.stderr
    assert "Traceback" not in gone.stderr
    assert run(["token"], elsewhere, env).returncode == 1


def test_a_port_taken_by_another_server_is_refused_not_reused(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = clean_env(
            tmp_path,
            EXPORT_SERVICE_DATA_DIR=str(tmp_path / "data"),
            EXPORT_SERVICE_EMBEDDED_MONGO_PORT=str(port),
            EXPORT_SERVICE_EMBEDDED_S3_PORT=str(free_port()),
        )
        answer = run(["seed", "--entries", "5"], tmp_path, env)
    assert answer.returncode == 1
    (line,) = answer.stderr.strip().splitlines()
    assert f"port {port} is taken" in line and "EXPORT_SERVICE_EMBEDDED_MONGO_PORT" in line
    assert not (tmp_path / "data" / "mongo").exists()  # nothing started, nothing written


def test_without_the_embedded_extra_one_line_says_what_to_set(tmp_path: Path) -> None:
    # `None` in sys.modules is how Python spells "this module cannot be imported".
    script = (
        "import sys; sys.modules['secantus'] = None; "
        "from export_service.cli import main; sys.exit(main(['serve']))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=clean_env(tmp_path),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert answer.returncode == 1
    (line,) = answer.stderr.strip().splitlines()
    assert "EXPORT_SERVICE_MONGO_URI" in line and "export-service[embedded]" in line
    assert "SecantusDB" in line


def test_restarting_dev_leaves_no_finished_export_pointing_at_a_lost_object(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(tmp_path)
    first = start_dev(tmp_path, tmp_path / "data")
    try:
        done = run(["submit", "--campaign", "demo-campaign", "--type", "codes", "--wait",
                    "--json", "--interval", "0.1"], elsewhere, env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        export = json.loads(done.stdout)
        assert export["status"] == "FINISHED" and export["path"]
    finally:
        stop_process(first.process)

    # The embedded S3 server keeps objects in memory: the restart loses the file, not the document.
    second = start_dev(tmp_path, tmp_path / "data")
    try:
        answer = run(["status", export["id"], "--campaign", "demo-campaign", "--json"],
                     elsewhere, env)  # fmt: skip
        assert answer.returncode == 0, answer.stderr
        after = json.loads(answer.stdout)
        assert after["status"] == "FINISHED"
        assert after["purged"]["reason"] == "embedded-restart"
        assert "path" not in after and all("url" not in f for f in after["files"])
        assert after["files"][0]["key"] == export["files"][0]["key"]
    finally:
        stop_process(second.process)
    log = (tmp_path / "dev.log").read_text()
    assert "1 FINISHED export(s) lost their files" in log


async def test_seed_and_dev_refuse_a_remote_mongodb_without_allow_remote(
    tmp_path: Path, mongo_uri: str, s3_endpoint: str
) -> None:
    """Contract §16: on a MongoDB that is not the embedded one, `seed` and `dev` name what they
    would write and change nothing (not even an index) unless `--allow-remote` is given."""
    db_name = f"t_remote_{uuid.uuid4().hex[:8]}"
    env = clean_env(
        tmp_path,
        EXPORT_SERVICE_MONGO_URI=mongo_uri,
        EXPORT_SERVICE_MONGO_DB=db_name,
        EXPORT_SERVICE_S3_ENDPOINT_URL=s3_endpoint,
        EXPORT_SERVICE_S3_ACCESS_KEY_ID="test",
        EXPORT_SERVICE_S3_SECRET_ACCESS_KEY="test",
        EXPORT_SERVICE_DATA_DIR=str(tmp_path / "data"),
        EXPORT_SERVICE_PORT=str(free_port()),
    )
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        for args in (["seed", "--entries", "5"], ["seed", "--fresh"], ["dev", "--entries", "5"]):
            answer = run(args, tmp_path, env)
            assert answer.returncode == 2, (args, answer.stdout, answer.stderr)
            (line,) = answer.stderr.strip().splitlines()
            assert "--allow-remote" in line and db_name in line, line
            for name in (*SEED_COLLECTIONS, "exports"):
                assert name in line, (name, line)
            assert "Traceback" not in answer.stderr
            assert db_name not in await client.list_database_names(), args
        assert not (tmp_path / "data").exists()  # no embedded server started either
        # Said on purpose, it is done there.
        seeded = run(["seed", "--entries", "5", "--allow-remote"], tmp_path, env)
        assert seeded.returncode == 0, seeded.stderr
        assert await client[db_name]["entries"].count_documents({}) == 5
    finally:
        await client.drop_database(db_name)
        await client.close()
