"""Layout → sink: the one table saying which sink writes each `Layout` (contract §6, §15).

The runner opens every export's sink through `open_sink`. The table is built here, from the
sink classes, and cannot be changed afterwards: no module adds a layout by being imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from export_service.exporters.partitioned import ObjectsSink, ZipSink
from export_service.exporters.sinks import CsvSink, Sink, SinkTarget
from export_service.exporters.spec import Context, ExporterSpec, Layout

SinkFactory = Callable[[ExporterSpec, Context, SinkTarget], Sink]


def _csv_sink(spec: ExporterSpec, ctx: Context, target: SinkTarget) -> Sink:
    return CsvSink(target)


SINKS: Mapping[Layout, SinkFactory] = MappingProxyType(
    {
        Layout.CSV: _csv_sink,
        Layout.ZIP: ZipSink,
        Layout.OBJECTS: ObjectsSink,
    }
)


def open_sink(spec: ExporterSpec, ctx: Context, target: SinkTarget) -> Sink:
    """The sink of `spec`'s layout for one run."""
    return SINKS[spec.layout](spec, ctx, target)
