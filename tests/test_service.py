"""The API and worker in one process, and the console command."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import jwt
from aiohttp.test_utils import TestClient, TestServer

from export_service.app.factory import create_app
from export_service.app.routes import SERVICES
from tests.support.app import JWT_SECRET, auth, make_settings
from tests.support.data import CAMPAIGN, add_campaign, entry


async def test_export_created_in_process_starts_without_waiting_for_a_poll(
    mongo_uri: str, s3_endpoint: str
) -> None:
    # A poll interval far beyond the wait below: only the API's wake-up can start the export.
    settings = make_settings(mongo_uri, s3_endpoint, polling_interval_millis=600_000)
    app = create_app(settings, run_worker=True, create_buckets=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        services = app[SERVICES]
        try:
            await add_campaign(services.db)
            await services.db["entries"].insert_one(entry("e1", "u1"))
            ended = services.worker.subscribe()
            resp = await client.post(
                f"/campaigns/{CAMPAIGN}/exports",
                json={"exportType": "entries"},
                headers=auth([CAMPAIGN]),
            )
            assert resp.status == 202
            export_id = (await resp.json())["id"]
            done = await asyncio.wait_for(ended.get(), timeout=20)
            assert done.id == export_id and done.status.value == "FINISHED"
            got = await client.get(
                f"/campaigns/{CAMPAIGN}/exports/{export_id}", headers=auth([CAMPAIGN])
            )
            body = await got.json()
            assert body["status"] == "FINISHED" and body["count"] == 1
            assert body["path"] == body["files"][0]["url"]
        finally:
            await services.client.drop_database(settings.mongo_db)


def test_token_command_mints_a_token_for_the_configured_secret() -> None:
    env = {**os.environ, "EXPORT_SERVICE_JWT_SECRET": JWT_SECRET}
    out = subprocess.run(
        [sys.executable, "-m", "export_service.cli", "token", "--campaign", "c1", "--supreme",
         "--sub", "alice"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    claims = jwt.decode(out.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["supreme"] is True
    assert claims["permissions"] == {"c1": ["REPORT"]}
    assert claims["exp"] > claims["iat"]
