"""Encoder processes: the `entries` CSV encoded in child processes, the same bytes as in-process.

Over the real servers for the export itself; the children are real `python -m
export_service.encoding.child` processes, stopped and killed with real signals.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.codec_options import CodecOptions
from bson.errors import InvalidBSON

from export_service.encoding.entries import EntryEncoder
from export_service.encoding.processes import EncoderProcesses, usable_cpus
from export_service.errors import EncoderLost, EncoderStartFailed
from export_service.models import ExportStatus, ExportType
from export_service.runtime import Services
from tests.support.app import make_settings
from tests.support.data import CAMPAIGN, add_campaign, entry, run_export
from tests.support.encoders import kill_children_holding_batches, stop_children
from tests.support.gates import Gate, until
from tests.support.s3 import download, multipart_uploads, object_keys

CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=False)
NAMES = {"m1": "Chicago", "m2": "'=Dublin"}


def _raw(first: int, n: int) -> bytes:
    """A batch as the `entries` query returns it (values in column order, one answer)."""
    docs = [
        {
            "v": [f"e{i}", f"u{i}", f"u{i}@example.com", "=Ann" if i % 7 == 0 else "Ann",
                  'Lee, "Jr"', "+1555", "60601", "us", "en-US", "m1" if i % 2 else "m2",
                  datetime(2026, 11, 23, 10, 0, i % 60), None if i % 3 else True],
            "additionalMarkets": ["m1"] if i % 5 == 0 else [],
        }
        for i in range(first, first + n)
    ]  # fmt: skip
    return b"".join(bson.encode(doc) for doc in docs)


@pytest.fixture
async def encoders() -> AsyncIterator[EncoderProcesses]:
    processes = EncoderProcesses(2)
    try:
        yield processes
    finally:
        await processes.close()


@pytest.mark.parametrize("include_all_markets", [False, True])
async def test_children_encode_exactly_what_the_worker_would(
    encoders: EncoderProcesses, include_all_markets: bool
) -> None:
    encoder = EntryEncoder(NAMES, include_all_markets, CODEC)
    batches = [_raw(i * 40, 40) for i in range(6)]
    answers = await asyncio.gather(*(encoders.encode(encoder, raw) for raw in batches))
    assert answers == [encoder(raw) for raw in batches]
    assert len(encoders.pids) == 2 and os.getpid() not in encoders.pids
    extra = 8 if include_all_markets else 0  # every fifth entry has one additional market
    assert [a.rows for a in answers] == [40 + extra] * 6


async def test_an_encoder_error_reaches_the_caller_and_the_child_lives_on(
    encoders: EncoderProcesses,
) -> None:
    encoder = EntryEncoder(NAMES, False, CODEC)
    await encoders.start()
    pids = encoders.pids
    with pytest.raises(InvalidBSON):
        await encoders.encode(encoder, b"\x05\x00\x00\x00garbage")
    assert (await encoders.encode(encoder, _raw(0, 3))).rows == 3
    assert encoders.pids == pids


async def test_a_cancelled_batch_does_not_shift_the_answers(encoders: EncoderProcesses) -> None:
    encoder = EntryEncoder(NAMES, False, CODEC)
    await encoders.start()
    for child in encoders.pids:
        os.kill(child, signal.SIGSTOP)  # requests queue up unanswered
    try:
        cancelled = asyncio.create_task(encoders.encode(encoder, _raw(0, 10)))
        await asyncio.sleep(0)  # lets it send its request
        cancelled.cancel()
        kept = [asyncio.create_task(encoders.encode(encoder, _raw(100 * i, 5))) for i in (1, 2)]
    finally:
        for child in encoders.pids:
            os.kill(child, signal.SIGCONT)
    assert [(await task).data for task in kept] == [encoder(_raw(100 * i, 5)).data for i in (1, 2)]
    assert cancelled.cancelled()


async def test_a_killed_child_fails_its_batches_and_is_replaced(
    encoders: EncoderProcesses,
) -> None:
    encoder = EntryEncoder(NAMES, False, CODEC)
    await encoders.start()
    before = encoders.pids
    for child in before:
        os.kill(child, signal.SIGSTOP)
    waiting = [asyncio.create_task(encoders.encode(encoder, _raw(i, 10))) for i in range(4)]
    await asyncio.sleep(0)
    for child in before:
        os.kill(child, signal.SIGKILL)
    for task in waiting:
        with pytest.raises(EncoderLost):
            await task
    assert (await encoders.encode(encoder, _raw(0, 10))).rows == 10
    assert not set(encoders.pids) & set(before)


async def test_closing_ends_the_children(encoders: EncoderProcesses) -> None:
    await encoders.start()
    pids = encoders.pids
    await encoders.close()
    for child in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)  # exited and reaped


def test_an_encoder_process_imports_no_service_dependencies() -> None:
    """What keeps a child at ~16 MB: the encoding package needs bson and the standard library."""
    probe = (
        "import sys, export_service.encoding.child, export_service.encoding.entries\n"
        "import export_service.encoding.rows\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'pydantic', 'pymongo', 'aiohttp', 'aiobotocore', 'structlog', 'opentelemetry'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


async def _entries_file(services: Services) -> tuple[ExportStatus, bytes]:
    done = await run_export(services, ExportType.ENTRIES, include_all=True)
    assert done.status is ExportStatus.FINISHED, done.error
    return done.status, await download(services.storage, done.files[0].bucket, done.files[0].key)


async def _seed(services: Services) -> None:
    await add_campaign(services.db, preferences=[{"id": "vip", "label": "VIP?"}])
    docs = [
        entry(f"e{i:03d}", f"u{i:03d}", additionalMarkets=[f"{CAMPAIGN}-m2"] if i % 4 else [])
        for i in range(130)
    ]
    for i, doc in enumerate(docs):
        doc["fields"]["vip"] = i % 3 == 0
        doc["fields"]["first_name"] = "=cmd" if i % 11 == 0 else f"Ann {i}"
    await services.db["entries"].insert_many(docs)


async def test_entries_export_is_the_same_with_and_without_encoder_processes(
    mongo_uri: str, s3_endpoint: str
) -> None:
    files = {}
    for processes in (0, 2):
        settings = make_settings(mongo_uri, s3_endpoint, encoder_processes=processes)
        async with Services.open(settings, create_buckets=True) as services:
            await _seed(services)
            files[processes] = await _entries_file(services)
            assert (services.encoders is None) == (processes == 0)
            if services.encoders is not None:
                assert len(services.encoders.pids) == 2  # the export did use them
    assert files[0] == files[2]
    assert files[0][1].count(b"\r\n") == 1 + 130 + 97  # header, entries, additional markets


async def test_export_whose_encoder_dies_is_rerun_not_failed(
    mongo_uri: str, s3_endpoint: str
) -> None:
    settings = make_settings(mongo_uri, s3_endpoint, encoder_processes=2, batch_size=10)
    async with Services.open(settings, create_buckets=True) as services:
        assert services.encoders is not None
        await _seed(services)
        gate = Gate()
        services.worker.batch_hook = gate
        await services.repository.create(
            campaign_id=CAMPAIGN,
            campaign_name="Tour",
            export_type=ExportType.ENTRIES,
            requester_user_id="u",
            date_key=None,
            include_all_markets=True,
        )
        first_run = asyncio.create_task(services.worker.drain())
        await asyncio.wait_for(gate.reached.wait(), 20)
        children = stop_children(services.encoders)
        gate.release.set()
        await kill_children_holding_batches(services.encoders, children)
        with pytest.raises(EncoderLost):
            await first_run
        bucket = settings.bucket_exports
        assert await multipart_uploads(services.storage, bucket) == []
        assert await object_keys(services.storage, bucket) == []

        services.worker.batch_hook = None
        (done,) = await services.worker.drain()
        assert done.status is ExportStatus.FINISHED, done.error
        assert done.attempts == 2
        assert done.count == 130 + 97
        assert not set(services.encoders.pids) & set(children)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", None), ("100000 100000\n", 1), ("150000 100000\n", 2), ("garbage", None)],
)
def test_usable_cpus_follow_a_container_cpu_limit(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(path) == (affinity if expected is None else min(affinity, expected))
    assert usable_cpus(tmp_path / "missing") == affinity


def _exited(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever inherited it to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def test_children_do_not_outlive_a_sigkilled_worker() -> None:
    script = (
        "import asyncio, os, sys\n"
        "from export_service.encoding.processes import EncoderProcesses\n"
        "async def main():\n"
        "    encoders = EncoderProcesses(2)\n"
        "    await encoders.start()\n"
        "    print('pids', *encoders.pids, flush=True)\n"
        "    sys.stdin.readline()\n"  # held until the test has the pids
        "asyncio.run(main())\n"
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert worker.stdout is not None
    line = b""
    while not line.startswith(b"pids"):  # after the log lines
        line = await asyncio.wait_for(worker.stdout.readline(), 20)
    children = [int(p) for p in line.split()[1:]]
    assert len(children) == 2 and not any(map(_exited, children))
    worker.kill()
    await worker.wait()
    await until("the encoder processes to exit", lambda: all(map(_exited, children)))


async def test_a_child_that_cannot_start_fails_clearly() -> None:
    broken = EncoderProcesses(1, (sys.executable, "-c", "import sys; sys.exit(3)"))
    try:
        with pytest.raises(EncoderStartFailed, match=r"exited \(code -?\d+\) before it was ready"):
            await broken.encode(EntryEncoder(NAMES, False, CODEC), _raw(0, 1))
        assert broken.pids == []
    finally:
        await broken.close()


async def test_a_child_that_cannot_be_spawned_fails_clearly(tmp_path: Path) -> None:
    missing = EncoderProcesses(1, (str(tmp_path / "no-such-python"), "-m", "x"))
    try:
        with pytest.raises(EncoderStartFailed, match=r"could not be started: .*no-such-python"):
            await missing.encode(EntryEncoder(NAMES, False, CODEC), _raw(0, 1))
    finally:
        await missing.close()


async def test_a_garbled_answer_fails_the_batch_instead_of_hanging() -> None:
    impostor = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "out.write((5).to_bytes(8, 'big') + b'ready'); out.flush()\n"
        "sys.stdin.buffer.read(8)\n"  # a request arrives
        "out.write((5).to_bytes(8, 'big') + b'xxxxx'); out.flush()\n"  # not a pickle
        "sys.stdin.buffer.read()\n"  # until the pipe closes
    )
    garbled = EncoderProcesses(1, (sys.executable, "-c", impostor))
    try:
        with pytest.raises(EncoderLost, match="answered badly"):
            await garbled.encode(EntryEncoder(NAMES, False, CODEC), _raw(0, 1))
        assert garbled.pids == []
    finally:
        await garbled.close()
