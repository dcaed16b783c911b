"""The exporter's fast paths (issue 5) give exactly what the plain per-cell code gives, and the
runner reads ahead one batch through an injectable reader."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from datetime import date as day
from typing import Any

import bson
import pytest

from export_service.encoding import formatting as f
from export_service.exporters.runner import Unsupervised, run_export
from export_service.exporters.spec import Context, ExporterSpec, Source, campaign_filter
from export_service.models import Export, ExportStatus, ExportType, StoredFile
from export_service.runtime import Services

TRICKY = ["", "plain", "a,b", 'say "hi"', "line\nbreak", "cr\rhere", "crlf\r\n", "\x00nul",
          "=SUM(A1)", "+1", "-x", "@me", "\tTab", "\rCR", "'quoted", "Zoë", "日本", " space "]  # fmt: skip


def writer_csv(rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


def test_csv_encoder_writes_what_csv_writer_writes() -> None:
    rng = random.Random(5)
    cases: list[list[Sequence[Any]]] = [
        [[rng.choice(TRICKY) for _ in range(6)] for _ in range(300)],  # the column path
        [(rng.choice(TRICKY), rng.choice(TRICKY)) for _ in range(50)],  # tuples
        [["a", "b"] for _ in range(50)],  # nothing to quote
        [["market, with comma", "x"] for _ in range(50)],  # repeated values to quote
        [[""]],  # one empty cell: csv.writer quotes it
        [["a"], ["b", "c"]],  # ragged
        [["a", 1, None, 2.5, True]],  # not strings: csv.writer's conversions
    ]
    encoder = f.CsvEncoder()
    for rows in cases:
        assert encoder.encode(rows) == writer_csv(rows)
        assert encoder.encode(iter(rows)) == writer_csv(rows)
    assert encoder.encode([]) == b""
    assert encoder.header(["a", "b,c"]) == b'a,"b,c"\r\n'


def test_column_helpers_equal_the_per_cell_functions() -> None:
    values: list[Any] = [*TRICKY, None, True, False, 0, -3, 2.5, ["x", "-y"], {"k": 1}]
    rng = random.Random(7)
    for _ in range(200):
        column = [rng.choice(values) for _ in range(rng.randint(0, 12))]
        strings = [v for v in column if isinstance(v, str)]
        for helper, single in (
            (f.text_column, f.text),
            (f.cell_column, f.cell),
            (f.upper_column, f.upper),
        ):
            assert helper(column) == [single(v) for v in column], (helper, column)
            assert helper(tuple(strings)) == [single(v) for v in strings], (helper, strings)


def test_date_column_equals_date() -> None:
    naive = datetime(2026, 11, 23, 10, 0, 5, 123456)
    aware = datetime(2026, 11, 23, 12, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    for column in (
        [naive, naive + timedelta(days=400, seconds=7)],
        [naive, aware],
        [datetime(999, 1, 2, 3, 4, 5)],
        [naive, None, "2026-01-01", day(2026, 1, 1)],
        [aware.astimezone(UTC)],
        [],
    ):
        assert f.date_column(column) == [f.date(v) for v in column], column
    assert f.date(aware) == "2026-11-23T10:00:05Z"


class ListSink:
    def __init__(self, log: list[str]) -> None:
        self.rows: list[Any] = []
        self.log = log

    async def write(self, rows: Sequence[Any]) -> None:
        self.rows.extend(rows)

    async def close(self) -> list[StoredFile]:
        return [StoredFile("b", "k", None, len(self.rows), 0, "")]

    async def abort(self) -> None:
        self.log.append("abort")


async def test_runner_reads_through_the_injected_reader_one_batch_ahead(
    services: Services,
) -> None:
    log: list[str] = []
    batches = [[{"_id": f"d{b}-{i}", "n": i} for i in range(3)] for b in range(4)]

    async def read(source: Source, ctx: Context) -> AsyncGenerator[bytes]:
        for number, docs in enumerate(batches):
            log.append(f"read {number}")
            yield b"".join(bson.encode(doc) for doc in docs)
        log.append("read end")

    async def transform(ctx: Context, docs: list[dict[str, Any]]) -> list[list[str]]:
        log.append(f"transform {docs[0]['_id'].split('-')[0][1:]}")
        return [[doc["_id"], str(doc["n"])] for doc in docs]

    spec = ExporterSpec(
        export_type=ExportType.CODES,
        source=Source("codes", campaign_filter),
        columns=lambda ctx: ("id", "n"),
        transform=transform,
    )
    export = Export(
        id="x",
        campaign_id="c",
        campaign_name="",
        export_type=ExportType.CODES,
        status=ExportStatus.TRIGGERED,
        requester_user_id="u",
    )
    ctx = Context(export=export, db=services.db, settings=services.settings, campaign={})
    sink = ListSink(log)

    _, count = await run_export(
        spec,
        ctx,
        Unsupervised(),
        services.storage,
        sink_factory=lambda spec, ctx, target: sink,
        read=read,
    )
    assert count == 12 and sink.rows[0] == ["d0-0", "0"] and sink.rows[-1] == ["d3-2", "2"]
    # Batch n+1 is asked for before batch n is transformed, never further ahead.
    assert log == ["read 0", "read 1", "transform 0", "read 2", "transform 1", "read 3",
                   "transform 2", "read end", "transform 3"]  # fmt: skip


async def test_a_failed_batch_closes_the_reader_and_aborts_the_sink(services: Services) -> None:
    log: list[str] = []

    async def read(source: Source, ctx: Context) -> AsyncGenerator[bytes]:
        try:
            for number in range(10):
                log.append(f"read {number}")
                yield bson.encode({"_id": str(number)})
        finally:
            log.append("reader closed")

    async def transform(ctx: Context, docs: list[dict[str, Any]]) -> list[list[str]]:
        if docs[0]["_id"] == "1":
            raise RuntimeError("bad batch")
        return [[doc["_id"]] for doc in docs]

    spec = ExporterSpec(
        export_type=ExportType.CODES,
        source=Source("codes", campaign_filter),
        columns=lambda ctx: ("id",),
        transform=transform,
    )
    export = Export(
        id="x",
        campaign_id="c",
        campaign_name="",
        export_type=ExportType.CODES,
        status=ExportStatus.TRIGGERED,
        requester_user_id="u",
    )
    ctx = Context(export=export, db=services.db, settings=services.settings, campaign={})

    with pytest.raises(RuntimeError, match="bad batch"):
        await run_export(
            spec,
            ctx,
            Unsupervised(),
            services.storage,
            sink_factory=lambda spec, ctx, target: ListSink(log),
            read=read,
        )
    # Closed before the runner gave up, not whenever the event loop collects it.
    assert log == ["read 0", "read 1", "read 2", "reader closed", "abort"]
