"""Time `export_service.seed.generate()` for 200,000 entries (no database involved).

Run from the repository root: .venv/bin/python bench/seed_speed.py [entries]
CPU time is reported next to wall time because other work on a shared machine inflates the
latter; generation is single-threaded, so CPU time is the one-core figure.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

# The package need not be installed to benchmark it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export_service.seed import SeedPlan, generate


def main() -> None:
    entries = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    plan = SeedPlan(entries=entries)
    counts: Counter[str] = Counter()
    entries_cpu = 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    mark = cpu0
    # The generator does its work when the next batch is pulled, so the time up to a batch is
    # charged to that batch's collection.
    for name, batch in generate(plan):
        now = time.process_time()
        if name == "entries":
            entries_cpu += now - mark
        counts[name] += len(batch)
        mark = time.process_time()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(", ".join(f"{name}={n:,}" for name, n in counts.items()))
    print(
        f"entries collection only: {entries / entries_cpu:,.0f} entries/s ({entries_cpu:.2f} s CPU)"
    )
    print(
        f"all seven collections:   {entries / cpu:,.0f} entries/s ({cpu:.2f} s CPU, "
        f"{entries / wall:,.0f} entries/s wall over {wall:.2f} s)"
    )


if __name__ == "__main__":
    main()
