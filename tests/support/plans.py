"""Reading the server's query plans (`explain`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Doc = dict[str, Any]


def plan_nodes(plan: Doc) -> list[Doc]:
    """Every stage of a winning plan, the root first (MongoDB 7+ nests the classic plan in
    `queryPlan`)."""
    found = [plan]
    for key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(key), dict):
            found += plan_nodes(plan[key])
    for child in plan.get("inputStages") or []:
        if isinstance(child, dict):
            found += plan_nodes(child)
    return found


def point_fields(filter_: Doc) -> set[str]:
    """Fields a filter pins to points: an equality, or an `$in` (MongoDB scans one range per
    value and merges them in index order: "explode for sort")."""
    points = set()
    for name, clause in filter_.items():
        if name.startswith("$"):
            continue
        if not isinstance(clause, dict) or set(clause) <= {"$eq", "$in"}:
            points.add(name)
    return points


def sorted_by(keys: Sequence[tuple[str, int]], filter_: Doc, sort: Doc) -> set[str] | None:
    """For an index of `keys`: the filter fields it bounds when it returns the filter's
    documents in `sort` order with no sort stage (its fields before the sort fields are all
    points of the filter), or None when it cannot."""
    names = [name for name, _ in keys]
    order = list(sort)
    points = point_fields(filter_)
    for start in range(len(names) - len(order) + 1):
        if names[start : start + len(order)] == order and set(names[:start]) <= points:
            return set(names[:start])
    return None
