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
