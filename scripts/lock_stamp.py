"""The sha256 of pyproject.toml's dependency lists: stamped into the locks by ./scripts/lock and
compared by tests/test_lock.py, so a dependency change without a lock refresh fails the tests."""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path


def dependencies_sha256(pyproject: Path) -> str:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = {
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "requires-python": project.get("requires-python"),
    }
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    sys.stdout.write(dependencies_sha256(root / "pyproject.toml") + "\n")
