"""The hashed lock files agree with pyproject.toml, and CI, the scripts and the image install them.

Whoever changes a dependency in pyproject.toml re-runs ./scripts/lock; until then these fail.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.lock_stamp import dependencies_sha256

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "requirements" / "runtime.lock"
TEST = ROOT / "requirements" / "test.lock"
STAMP = re.compile(r"^# pyproject-dependencies-sha256: ([0-9a-f]{64})$")
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$", re.MULTILINE)


def pins(lock: Path) -> dict[str, str]:
    return {canonicalize_name(n): v for n, v in PIN.findall(lock.read_text())}


def test_locks_are_stamped_with_the_current_pyproject_dependencies() -> None:
    want = dependencies_sha256(ROOT / "pyproject.toml")
    for lock in (RUNTIME, TEST):
        match = STAMP.match(lock.read_text().splitlines()[0])
        assert match, f"{lock.name} has no stamp: run ./scripts/lock"
        assert match.group(1) == want, (
            f"pyproject.toml changed since {lock.name}: run ./scripts/lock"
        )


def test_every_declared_dependency_is_locked_within_its_range_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = {
        RUNTIME: project["dependencies"],
        TEST: project["dependencies"] + extras["embedded"] + extras["cli"] + extras["test"],
    }
    for lock, requirements in declared.items():
        locked = pins(lock)
        for line in requirements:
            req = Requirement(line)
            if canonicalize_name(req.name) == "export-service":
                continue
            version = locked.get(canonicalize_name(req.name))
            assert version is not None, f"{req.name} missing from {lock.name}: run ./scripts/lock"
            assert req.specifier.contains(version, prereleases=True), (lock.name, line, version)
        # Each pin is followed by its hashes (pip's --require-hashes refuses any without).
        blocks = [b for b in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()) if PIN.match(b)]
        assert len(blocks) == len(locked)
        assert all("--hash=sha256:" in block for block in blocks), lock.name
    # The image carries none of the dev-only packages, nor the client's renderer (`cli` extra).
    assert not {"secantusdb", "moto", "pytest", "flask", "rich"} & set(pins(RUNTIME))
    assert "rich" in pins(TEST)


def test_ci_the_scripts_and_the_image_install_the_locks() -> None:
    venv = (ROOT / "scripts" / "_venv.sh").read_text()
    assert '--require-hashes -r "$ROOT/requirements/test.lock"' in venv
    assert "--no-deps -e" in venv  # the package itself adds nothing unlocked
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()
    assert "_venv.sh" in (ROOT / "scripts" / "test").read_text()
    assert "_venv.sh" in (ROOT / "scripts" / "dev").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r /tmp/runtime.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
