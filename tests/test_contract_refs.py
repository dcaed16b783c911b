"""The contract lives in the repository: no tracked file points outside the clone for it.

A fresh clone has no sibling `shared/` directory, so a reference to it is a dead link; and every
"contract §N" names a section that docs/contract.md really has.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "contract.md"
# Spelled in two halves so that this file does not match itself.
FORBIDDEN = ("../" + "shared", "DESIGN" + " §")


def tracked_texts() -> dict[str, str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    texts = {}
    for name in filter(None, names):
        path = ROOT / name.decode()
        if path.is_file():
            texts[name.decode()] = path.read_bytes().decode("utf-8", errors="replace")
    return texts


def test_no_tracked_file_cites_the_contract_outside_the_repository() -> None:
    texts = tracked_texts()
    assert "docs/contract.md" in texts
    offenders = sorted(
        f"{name}: {needle!r}"
        for name, text in texts.items()
        for needle in FORBIDDEN
        if needle in text
    )
    assert not offenders, "cite docs/contract.md as 'contract §N' instead:\n" + "\n".join(offenders)


def test_every_contract_reference_names_an_existing_section() -> None:
    sections = set(re.findall(r"^## (\d+)\. ", CONTRACT.read_text(), flags=re.MULTILINE))
    assert sections >= {str(n) for n in range(1, 17)}
    missing = sorted(
        f"{name}: §{number}"
        for name, text in tracked_texts().items()
        for number in re.findall(r"contract §(\d+)", text)
        if number not in sections
    )
    assert not missing, "references to sections docs/contract.md does not have:\n" + "\n".join(
        missing
    )
