"""The values table of helm/export-service/README.md, made from values.yaml (its `# --` comments,
helm-docs style, and its defaults). `python scripts/chart_readme.py` rewrites the table;
tests/test_packaging.py fails while the README's table differs from what this makes."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

CHART = Path(__file__).resolve().parent.parent / "helm" / "export-service"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_]+):")
_DOC = re.compile(r"^(\s*)# -- ?(.*)$")
_MORE = re.compile(r"^(\s*)#(?: (.*))?$")


def descriptions(text: str) -> dict[str, str]:
    """`a.b.c` → the `# --` comment right above that key (continued on following # lines)."""
    found: dict[str, str] = {}
    path: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        if (doc := _DOC.match(line)) is not None:
            pending = [doc.group(2)]
        elif pending is not None and (more := _MORE.match(line)) is not None:
            pending.append(more.group(2) or "")
        elif (key := _KEY.match(line)) is not None:
            indent = len(key.group(1))
            path = [(i, k) for i, k in path if i < indent] + [(indent, key.group(2))]
            if pending is not None:
                found[".".join(k for _, k in path)] = " ".join(p.strip() for p in pending).strip()
            pending = None
        elif not line.strip().startswith("#"):
            pending = None
    return found


def rows(value: Any, documented: dict[str, str], prefix: str = "") -> list[tuple[str, Any]]:
    """One row per documented key (a map included, as helm-docs does) or undocumented leaf."""
    if isinstance(value, dict) and value and prefix not in documented:
        out: list[tuple[str, Any]] = []
        for key, item in value.items():
            out += rows(item, documented, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, value)]


def table() -> str:
    yaml: Any = importlib.import_module("yaml")
    text = (CHART / "values.yaml").read_text()
    docs = descriptions(text)
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, default in rows(yaml.safe_load(text), docs):
        shown = json.dumps(default, separators=(", ", ": ")).replace("|", "\\|")
        about = docs.get(key, "").replace("|", "\\|")
        lines.append(f"| `{key}` | `{shown}` | {about} |")
    return "\n".join(lines)


def with_table(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    path = CHART / "README.md"
    path.write_text(with_table(path.read_text()))
    sys.stdout.write(f"wrote the values table of {path}\n")
