"""The admin console (contract §10): its files and headers, and the page driven in headless Chromium
(Debian's chromium and chromedriver, through selenium) against the real service.

Screenshots for the README: `ADMIN_SCREENSHOTS=docs .venv/bin/python -m pytest
tests/test_admin_console.py` writes them to that directory (else to the test's temp dir).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from export_service.app.admin_routes import ASSETS, CSP, asset
from export_service.models import ExportStatus
from export_service.runtime import Services
from export_service.settings import Settings
from tests.support.app import app_client, app_services, token
from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.support.data import CAMPAIGN, add_campaign, entry

Client = TestClient[Any, Any]
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 20.0


async def test_admin_files_are_served_with_a_strict_csp_and_load_nothing_from_elsewhere(
    client: Client,
) -> None:
    for path, name in [("/admin", "index.html"), ("/admin/admin.js", "admin.js"),
                       ("/admin/admin.css", "admin.css")]:  # fmt: skip
        resp = await client.get(path)
        assert resp.status == 200
        assert resp.content_type == ASSETS[name]
        assert resp.headers["Content-Security-Policy"] == CSP
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert await resp.read() == asset(name)
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    page = asset("index.html").decode()
    # No inline script or style (the CSP would block them anyway), no remote URL anywhere.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers
    for name in ASSETS:
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]", asset(name).decode()), name
    # Every form control has a label.
    ids = set(re.findall(r'<(?:input|select)[^>]*\bid="([^"]+)"', page))
    labelled = set(re.findall(r'<label for="([^"]+)"', page))
    assert ids and ids <= labelled, ids - labelled


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian chromium and chromium-driver are not installed "
    "(`apt-get install chromium chromium-driver`; .ci/run installs them)",
)


class Page:
    """The console in one headless Chromium; every call blocks, so tests run them in a thread
    while the service answers in the event loop."""

    def __init__(self, base_url: str, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        assert CHROMIUM is not None and CHROMEDRIVER is not None
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag.replace("--headless", "--headless=new"))
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument("--window-size=1280,900")
        # Every request the page makes, for the same-origin check.
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.base_url = base_url
        self.requested: list[str] = []

    def close(self) -> None:
        self.driver.quit()

    def by_id(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def until(self, what: str, condition: Callable[[], Any]) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        def check(_: Any) -> Any:
            try:
                return condition()
            except StaleElementReferenceException:
                return False  # the row was re-rendered under us: look again

        return WebDriverWait(self.driver, WAIT, poll_frequency=0.1).until(check, message=what)

    def type_into(self, element_id: str, text: str) -> None:
        field = self.by_id(element_id)
        field.clear()
        field.send_keys(text)

    def rows(self) -> list[dict[str, Any]]:
        """The exports table as the user sees it."""
        script = """
          return [...document.querySelectorAll('#exports-body tr')].map(tr => ({
            id: tr.dataset.exportId, status: tr.dataset.status,
            cells: Object.fromEntries([...tr.children].map(td => [td.dataset.label, td.innerText])),
            links: [...tr.querySelectorAll('a.download')].map(a => [a.href, a.dataset.sha256]),
          }));"""
        rows: list[dict[str, Any]] = self.driver.execute_script(script)
        return rows

    def row(self, export_id: str) -> dict[str, Any] | None:
        return next((r for r in self.rows() if r["id"] == export_id), None)

    def message(self) -> str:
        box = self.by_id("message")
        return "" if not box.is_displayed() else str(box.text)

    def network_urls(self) -> list[str]:
        # selenium leaves get_log unannotated.
        for entry_ in self.driver.get_log("performance"):  # type: ignore[no-untyped-call]
            event = json.loads(entry_["message"])["message"]
            if event["method"] == "Network.requestWillBeSent":
                self.requested.append(event["params"]["request"]["url"])
        return self.requested

    def screenshot(self, path: Path, width: int, height: int, show: str) -> None:
        self.driver.set_window_size(width, height)
        self.driver.execute_script(f"document.getElementById('{show}').scrollIntoView()")
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1280, 900)


@pytest.fixture
async def console(settings: Settings) -> AsyncIterator[tuple[Client, Services]]:
    async with app_client(settings) as client:
        yield client, app_services(client)


@pytest.fixture
def page(console: tuple[Client, Services], tmp_path: Path) -> Iterator[Page]:
    client, _ = console
    opened = Page(str(client.make_url("")).rstrip("/"), tmp_path / "profile")
    try:
        yield opened
    finally:
        opened.close()


def screenshots_dir(tmp_path: Path) -> Path:
    where = Path(os.environ.get("ADMIN_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


@needs_chromium
async def test_console_requests_watches_downloads_and_cancels_in_chromium(
    console: tuple[Client, Services], page: Page, tmp_path: Path
) -> None:
    _, services = console
    await add_campaign(services.db)
    await services.db["entries"].insert_many([entry(f"e{i}", f"u{i}") for i in range(7)])
    run = asyncio.to_thread

    def sign_in() -> None:
        page.driver.get(f"{page.base_url}/admin")
        page.until(
            "the page script",
            lambda: page.by_id("export-type").find_elements("css selector", "option"),
        )
        page.type_into("token", token([CAMPAIGN], sub="admin-ui"))
        page.by_id("token-save").click()
        assert "admin-ui" in page.by_id("token-status").text
        # The token's campaign is offered, and chosen when it is the only one.
        assert page.by_id("campaign").get_attribute("value") == CAMPAIGN
        page.by_id("campaign-open").click()
        page.until("the empty table", lambda: "No exports yet" in page.by_id("empty").text)
        page.driver.execute_script("window.notReloaded = true")

    await run(sign_in)

    def request(export_type: str) -> str:
        from selenium.webdriver.support.ui import Select

        before = {r["id"] for r in page.rows()}
        Select(page.by_id("export-type")).select_by_value(export_type)
        page.by_id("request-submit").click()
        new = page.until("the new row", lambda: [r for r in page.rows() if r["id"] not in before])
        assert "Requested" in page.message()
        return str(new[0]["id"])

    export_id = await run(request, "entries")
    pending = await run(page.row, export_id)
    assert pending is not None and pending["status"] == "PENDING"
    assert pending["cells"]["Queue"].startswith("#1")

    # The worker runs it here; the page sees FINISHED by polling, without a reload.
    (done,) = await services.worker.drain()
    assert done.status is ExportStatus.FINISHED

    def finished_row() -> dict[str, Any]:
        row: dict[str, Any] = page.until(
            "FINISHED in the table",
            lambda: (r := page.row(export_id)) and r["status"] == "FINISHED" and r,
        )
        assert page.driver.execute_script("return window.notReloaded") is True
        return row

    row = await run(finished_row)
    assert row["cells"]["Rows"] == "7" and "100%" in row["cells"]["Progress"]
    ((href, sha256),) = row["links"]
    assert sha256 == done.files[0].sha256
    async with aiohttp.ClientSession() as session, session.get(href) as resp:
        assert resp.status == 200
        assert hashlib.sha256(await resp.read()).hexdigest() == sha256

    # A PENDING export cancelled with its button (reached from the keyboard).
    cancel_id = await run(request, "codes")

    def cancel() -> dict[str, Any]:
        from selenium.webdriver.common.keys import Keys

        button = page.driver.find_element(
            "css selector", f'tr[data-export-id="{cancel_id}"] button.cancel'
        )
        assert button.get_attribute("aria-label") == f"Cancel codes export {cancel_id}"
        button.send_keys(Keys.ENTER)
        row: dict[str, Any] = page.until(
            "FAILED Cancelled", lambda: (r := page.row(cancel_id)) and r["status"] == "FAILED" and r
        )
        assert "cancelled" in page.message()
        return row

    cancelled_row = await run(cancel)
    assert cancelled_row["cells"]["Error"].startswith("Cancelled")
    stored = await services.repository.get(cancel_id)
    assert stored is not None and stored.cancelled and stored.cancelled_by == "admin-ui"

    # Screenshots for the README, a queued export in view: laptop and phone widths.
    queued_id = await run(request, "scoring")
    where = screenshots_dir(tmp_path)
    await run(
        page.until, "queue position", lambda: (r := page.row(queued_id)) and r["cells"]["Queue"]
    )
    await run(page.screenshot, where / "admin-console.png", 1280, 1350, "auth-section")
    await run(page.screenshot, where / "admin-console-phone.png", 390, 844, "exports-section")
    assert (where / "admin-console.png").stat().st_size > 10_000

    # An expired token: said in words, and no request is sent with it.
    def expire() -> str:
        page.type_into("token", token([CAMPAIGN], ttl_seconds=-60))
        page.by_id("token-save").click()
        return str(
            page.until("the expiry message", lambda: "expired" in page.message() and page.message())
        )

    message = await run(expire)
    assert "Your token expired at" in message and "Paste a new token" in message

    # Every request the page made went to the service's own origin (no CDN, font or API
    # elsewhere); the file itself was fetched by the test through the link.
    urls = await run(page.network_urls)
    origin = urlsplit(page.base_url)
    assert urls and any(u.endswith("/admin/admin.js") for u in urls)
    # (Chromium's own chrome:// pages, before the first navigation, are not the network.)
    network = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")]
    foreign = [u for u in network if urlsplit(u)[:2] != origin[:2]]
    assert foreign == [], foreign


@needs_chromium
async def test_console_says_when_the_service_rejects_the_token(
    console: tuple[Client, Services], page: Page
) -> None:
    _, services = console
    await add_campaign(services.db)

    def attempt(tok: str, campaign: str) -> str:
        page.driver.get(f"{page.base_url}/admin")
        page.until(
            "the page script",
            lambda: page.by_id("export-type").find_elements("css selector", "option"),
        )
        page.type_into("token", tok)
        page.by_id("token-save").click()
        page.type_into("campaign", campaign)
        page.by_id("campaign-open").click()
        return str(page.until("an error", lambda: page.message()))

    wrong_secret = token([CAMPAIGN])[:-4] + "AAAA"
    assert "refused the token" in await asyncio.to_thread(attempt, wrong_secret, CAMPAIGN)
    message = await asyncio.to_thread(attempt, token(["other"]), CAMPAIGN)
    assert f"may not report on campaign {CAMPAIGN}" in message


@needs_chromium
async def test_console_requests_a_joined_type_with_filters(
    console: tuple[Client, Services], page: Page
) -> None:
    # contract §12: the form's filters go with every type that reads entries, the joined ones too.
    _, services = console
    await add_campaign(services.db)
    m1, m2 = f"{CAMPAIGN}-m1", f"{CAMPAIGN}-m2"

    def request() -> None:
        from selenium.webdriver.support.ui import Select

        page.driver.get(f"{page.base_url}/admin")
        page.until(
            "the page script",
            lambda: page.by_id("export-type").find_elements("css selector", "option"),
        )
        page.type_into("token", token([CAMPAIGN]))
        page.by_id("token-save").click()
        page.by_id("campaign-open").click()
        page.until("the empty table", lambda: "No exports yet" in page.by_id("empty").text)
        Select(page.by_id("export-type")).select_by_value("waitlist")
        page.type_into("filter-markets", f"{m2}, {m1}")
        # datetime-local takes keys in the browser's locale format; the value is what it sends.
        set_value = "document.getElementById(arguments[0]).value = arguments[1]"
        page.driver.execute_script(set_value, "filter-from", "2026-11-01T00:00")
        page.driver.execute_script(set_value, "filter-to", "2026-12-01T00:00:30")
        page.by_id("request-submit").click()
        page.until("the new row", page.rows)
        assert "Requested" in page.message()

    await asyncio.to_thread(request)
    (export,) = [e async for e in services.db["exports"].find({})]
    assert export["exportType"] == "waitlist"
    assert export["filters"] == {
        "marketIds": [m1, m2],
        "createdFrom": datetime(2026, 11, 1),
        "createdTo": datetime(2026, 12, 1, 0, 0, 30),
    }
