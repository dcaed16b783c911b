"""The source collections have one owner (`export_service/sources.py`): every other module
names them through its constants, the specs read only known collections, and each place a
user shows up in a campaign (CCPA) has an index led by the user's field."""

from __future__ import annotations

import ast
from pathlib import Path

import export_service
from export_service.exporters import EXPORTERS
from export_service.sources import CCPA_ASSOCIATIONS, SOURCE_COLLECTIONS, SOURCE_INDEXES

PACKAGE = Path(export_service.__file__).parent


def _named_collections(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals naming a source collection: `db["x"]`, `get_collection("x")`,
    `Source("x", ...)`."""
    found = []
    for node in ast.walk(tree):
        names: list[ast.expr] = []
        if isinstance(node, ast.Subscript):
            names = [node.slice]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in {"get_collection", "Source"}:
                names = [node.args[0]]
        for name in names:
            if isinstance(name, ast.Constant) and name.value in SOURCE_COLLECTIONS:
                found.append((name.lineno, str(name.value)))
    return sorted(found)


def test_no_module_but_sources_spells_a_source_collection() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{line} {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "sources.py" or path.parent != PACKAGE
        for line, name in _named_collections(ast.parse(path.read_text(), str(path)))
    ]
    assert found == []


def test_the_check_sees_a_literal_name() -> None:
    code = 'db["entries"].find()\nSource("codes", f)\ndb.get_collection("markets")\ndb[CODES]\n'
    assert _named_collections(ast.parse(code)) == [(1, "entries"), (2, "codes"), (3, "markets")]


def test_specs_and_indexes_name_known_collections() -> None:
    assert {spec.source.collection for spec in EXPORTERS.values()} <= set(SOURCE_COLLECTIONS)
    assert set(SOURCE_INDEXES) <= set(SOURCE_COLLECTIONS)


def test_each_ccpa_association_has_an_index_led_by_its_user_field() -> None:
    for collection, field in CCPA_ASSOCIATIONS:
        leading = [next(iter(index.document["key"])) for index in SOURCE_INDEXES[collection]]
        assert field in leading, (collection, field)
