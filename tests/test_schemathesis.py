"""Schemathesis fuzzes the live service from its own `/openapi.json`.

Every generated request, with a valid token and without one, with data that fits the schema and data
that does not: no 5xx, every answer conforms to the document (status, content type, body schema), and
the `exports` collection changes only by the exports answered `202` (a rejection writes nothing).
Bounded: a fixed seed and a few dozen examples per operation and mode.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.support.app import app_services, token
from tests.support.data import CAMPAIGN, add_campaign

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis==4.32.5 is a test dependency (pip install it)"
)
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

Client = TestClient[Any, Any]
EXAMPLES = 30
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


class Ledger:
    """What `exports` must hold after each answer: +1 per 202, minus n per CCPA deletion."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count
        self.expected = count()
        self.statuses: Counter[tuple[str, int]] = Counter()

    def check(self, label: str, response: Any) -> None:
        status = response.status_code
        self.statuses[(label, status)] += 1
        if status == 202:
            self.expected += 1
        elif label.startswith("DELETE /ccpa") and status == 200:
            self.expected -= response.json()["deletedCount"]["exports"]
        actual = self.count()
        assert actual == self.expected, f"{label} answered {status} and left {actual} exports"


def fuzz(base_url: str, ledger: Ledger) -> None:
    """Runs in a worker thread: schemathesis is synchronous, the server lives on the test's loop."""
    import requests

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    valid = {"Authorization": f"Bearer {token([CAMPAIGN], supreme=True)}"}
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            has_inputs = bool(list(operation.iter_parameters())) or operation.body
            modes = [GenerationMode.POSITIVE]
            if has_inputs:
                modes.append(GenerationMode.NEGATIVE)
            # The known campaign reaches validation and the writes; drawn ids meet the permission
            # check and the id pattern.
            pins: list[dict[str, str] | None] = [None]
            if "{campaignId}" in operation.path:
                pins.append({"campaignId": CAMPAIGN})
            for mode in modes:
                for pin in pins:
                    strategy = operation.as_strategy(generation_mode=mode, path_parameters=pin)
                    # Without a token every protected answer is the same 401: one pass is enough.
                    for headers in (valid, None) if pin is None else (valid,):
                        run_cases(strategy, operation.label, base_url, session, headers, ledger)


def _filters_rule(response: Any) -> bool:
    """A 400 for a rule of `filters` that no JSON Schema states (contract §12): markets of the
    campaign, `createdFrom < createdTo`, only types that read entries. The rest of the body is
    still held to the schema, and the 400 still has to be a clean error that writes nothing."""
    if response.status_code != 400:
        return False
    error = response.json()["error"]
    if error["payload"]["code"] == "MarketNotFound":
        return True
    return any(
        e["loc"][:1] == ["filters"] or "filters do not apply" in e["msg"]
        for e in error["payload"].get("errors", [])
    )


def run_cases(
    strategy: Any,
    label: str,
    base_url: str,
    session: Any,
    headers: dict[str, str] | None,
    ledger: Ledger,
) -> None:
    @FUZZ
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        excluded = [positive_data_acceptance] if _filters_rule(response) else []
        case.validate_response(response, excluded_checks=excluded, headers=headers)
        ledger.check(label, response)

    run()


async def test_fuzzed_requests_never_fail_conform_and_rejections_write_nothing(
    client: Client,
) -> None:
    services = app_services(client)
    await add_campaign(services.db)
    loop = asyncio.get_running_loop()

    def count_exports() -> int:
        future = asyncio.run_coroutine_threadsafe(services.db["exports"].count_documents({}), loop)
        return future.result(timeout=30)

    base_url = str(client.make_url("")).rstrip("/")
    ledger = await asyncio.to_thread(Ledger, count_exports)
    await asyncio.to_thread(fuzz, base_url, ledger)
    seen = {status for (_, status) in ledger.statuses}
    # The run reached past auth and validation, not just the 401/403 walls.
    assert {200, 202, 400, 401, 403, 404} <= seen, ledger.statuses
    assert not any(status >= 500 for status in seen), ledger.statuses
