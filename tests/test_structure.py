"""Rules of the code's structure (issue 11) that a refactoring could quietly undo."""

from __future__ import annotations

import ast
from pathlib import Path

import export_service

PACKAGE = Path(export_service.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any level (including under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_metrics_imports_neither_the_queue_nor_the_webhooks() -> None:
    # Their gauges live with them (queue/gauges.py, webhooks/gauges.py).
    imports = imported_modules(PACKAGE / "metrics.py")
    assert not {
        name
        for name in imports
        if name.startswith(("export_service.queue", "export_service.webhooks"))
    }
    assert "export_service.models" in imports  # the walk does see the module's imports


def test_no_two_classes_share_a_name_across_modules() -> None:
    # One name, one concept: a reader (or a grep) never has to ask which `CcpaResult` is meant.
    where: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(module)
    assert len(where) > 100  # the walk does see the package's classes
    shared = {name: modules for name, modules in where.items() if len(modules) > 1}
    assert shared == {}


def test_every_exception_is_under_the_one_root_or_private() -> None:
    # The worker's outcomes and the API's answers rely on `ExportServiceError`'s `code`; an
    # exception of another lineage is internal to its module (or must be an OSError for aiohttp).
    allowed = {"ExportServiceError", "PrivateAddressRefused"}
    outside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
            if bases & {"Exception", "RuntimeError", "ValueError", "OSError", "BaseException"}:
                outside.append(node.name)
    assert set(outside) == allowed


def test_no_test_module_imports_another_test_module() -> None:
    # Shared helpers live in tests/support; a test module importing another runs its fixtures
    # and module-level code twice and ties unrelated files together.
    tests = Path(__file__).parent
    modules = sorted(tests.glob("test_*.py"))
    assert len(modules) > 20  # the glob does see the test modules
    importing = {
        path.name: sorted(n for n in imported_modules(path) if n.startswith("tests.test_"))
        for path in modules
    }
    assert {name: found for name, found in importing.items() if found} == {}
