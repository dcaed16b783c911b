"""The layout → sink table (`exporters/layouts.py`): every spec's layout has a sink, the table
is the only place that says which, and nothing can add to it by being imported."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import export_service
from export_service.exporters import EXPORTERS
from export_service.exporters.layouts import SINKS, SinkFactory, open_sink
from export_service.exporters.partitioned import ObjectsSink, ZipSink
from export_service.exporters.runner import run_export
from export_service.exporters.spec import Layout

PACKAGE = Path(export_service.__file__).parent


def test_every_spec_layout_has_a_sink() -> None:
    assert EXPORTERS
    missing = {t.value: s.layout.value for t, s in EXPORTERS.items() if s.layout not in SINKS}
    assert missing == {}


def test_every_layout_has_exactly_its_sink() -> None:
    assert set(SINKS) == set(Layout)
    assert SINKS[Layout.ZIP] is ZipSink
    assert SINKS[Layout.OBJECTS] is ObjectsSink


def test_the_table_is_read_only() -> None:
    table = SINKS
    with pytest.raises(TypeError):
        table[Layout.CSV] = ZipSink  # type: ignore[index]


def test_the_runner_opens_sinks_through_the_table() -> None:
    default: SinkFactory = inspect.signature(run_export).parameters["sink_factory"].default
    assert default is open_sink


def test_no_other_module_fills_a_layout_table() -> None:
    """The table is the only source: no module outside `layouts.py` maps a `Layout` to
    anything (a subscript assignment or a dict keyed by `Layout.X`)."""
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "layouts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            keys: list[ast.expr | None] = []
            if isinstance(node, ast.Assign):
                keys = [t.slice for t in node.targets if isinstance(t, ast.Subscript)]
            elif isinstance(node, ast.Dict):
                keys = list(node.keys)
            for key in keys:
                if (
                    isinstance(key, ast.Attribute)
                    and isinstance(key.value, ast.Name)
                    and key.value.id == "Layout"
                ):
                    found.append(f"{path.relative_to(PACKAGE)}:{key.lineno}")
    assert found == []
