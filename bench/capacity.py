"""How far one deployment goes: the capacity of the export slot, from measured throughputs.

Reads the committed results of the other benchmarks (`pipeline`, `end_to_end`, `queue`) and
turns them into the figures of docs/scale.md: time per export by size, exports one slot serves
per day, and the S3 and MongoDB request rates one running export makes. Nothing is assumed but
what those runs measured and the settings' defaults (part size, batch size); run it after
re-running them. `python -m bench.capacity` (from the repository root).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from export_service.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
SECONDS_PER_DAY = 86_400
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
# S3's documented request rate per prefix; a running export is far below it (see the output).
S3_PUTS_PER_PREFIX_PER_S = 3_500


def _load(name: str, results: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results / f"{name}.json").read_text())
    return data


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def model(results: Path = RESULTS) -> dict[str, Any]:
    pipeline = _load("pipeline", results)
    end_to_end = _load("end_to_end", results)
    queue = _load("queue", results)
    settings = Settings()

    # The exporter on its own (no database: a recorded cursor replayed), entries at 1 M rows.
    exporter = [r for r in pipeline["runs"] if r["variant"] == "entries" and r["rows"] >= 10**6]
    exporter_rows_per_s = _median([float(r["rows_per_s"]) for r in exporter])
    bytes_per_row = _median([r["bytes"] / r["rows"] for r in exporter])

    # End to end on the embedded server: the drain (reading the cursor and nothing else) bounds
    # it; the export without its preliminary count is within a few % of the drain.
    entries_runs = [r for r in end_to_end["runs"] if r["type"] == "entries"]
    rows = entries_runs[0]["export"]["rows"]
    embedded_seconds = _median(
        [r["export"]["seconds"] - r["drain"]["count_seconds"] for r in entries_runs]
    )
    embedded_rows_per_s = rows / embedded_seconds
    count_rows_per_s = rows / _median([r["drain"]["count_seconds"] for r in entries_runs])
    claim_ms = float(queue["claim"]["sweep_plus_claim_ms"]["p50"])

    part_bytes = settings.s3_part_size_bytes
    batch = settings.batch_size
    table = []
    for size in SIZES:
        # On MongoDB the exporter is the bound (the count is an index COUNT_SCAN); on the
        # embedded server the server's own reads are.
        fast = size / exporter_rows_per_s + claim_ms / 1000
        slow = size / embedded_rows_per_s + size / count_rows_per_s + claim_ms / 1000
        table.append(
            {
                "rows": size,
                "bytes": round(size * bytes_per_row),
                "seconds_exporter_bound": round(fast, 2),
                "per_day_exporter_bound": int(SECONDS_PER_DAY // fast),
                "seconds_embedded": round(slow, 2),
                "per_day_embedded": int(SECONDS_PER_DAY // slow),
                "s3_parts": max(1, -(-round(size * bytes_per_row) // part_bytes)),
            }
        )
    bytes_per_s = exporter_rows_per_s * bytes_per_row
    parts_per_s = bytes_per_s / part_bytes
    return {
        "machine": pipeline["machine"],
        "sources": {
            "exporter_rows_per_s": round(exporter_rows_per_s),
            "bytes_per_row": round(bytes_per_row, 1),
            "embedded_rows_per_s": round(embedded_rows_per_s),
            "embedded_count_rows_per_s": round(count_rows_per_s),
            "claim_p50_ms": claim_ms,
            "s3_part_size_bytes": part_bytes,
            "batch_size": batch,
        },
        "per_export": table,
        "rates_while_one_export_runs": {
            "s3_upload_part_per_s": round(parts_per_s, 2),
            "s3_share_of_prefix_limit": round(parts_per_s / S3_PUTS_PER_PREFIX_PER_S, 5),
            "mongo_get_more_per_s": round(exporter_rows_per_s / batch, 1),
            "upload_mb_per_s": round(bytes_per_s / 1e6, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the runs are")
    args = parser.parse_args()
    data = model(args.results)
    machine = data["machine"]
    print(
        f"machine: {machine['cores']} cores {machine['cpu_model']}, {machine['memory_gib']} GiB, "
        f"Python {machine['versions']['python']} (the machine the source runs were made on)"
    )
    print("measured:", json.dumps(data["sources"]))
    heads = ("rows", "MB", "s (MongoDB)", "/day", "s (embedded)", "/day")
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (11, 8, 12, 8, 13, 7), strict=True)))
    for row in data["per_export"]:
        print(
            f"{row['rows']:>11,} {row['bytes'] / 1e6:>8.0f} {row['seconds_exporter_bound']:>12} "
            f"{row['per_day_exporter_bound']:>8,} {row['seconds_embedded']:>13} "
            f"{row['per_day_embedded']:>7,}"
        )
    print("one running export:", json.dumps(data["rates_while_one_export_runs"]))


if __name__ == "__main__":
    main()
