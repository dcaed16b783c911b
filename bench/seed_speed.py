"""Time `export_service.dev.seed.generate()` for 200,000 entries (no database involved).

Run from the repository root: .venv/bin/python -m bench.seed_speed [entries]
CPU time is reported next to wall time because other work on a shared machine inflates the
latter; generation is single-threaded, so CPU time is the one-core figure.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from export_service.dev.seed import SeedPlan, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("entries", type=int, nargs="?", default=200_000)
    entries: int = parser.parse_args().entries
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
