"""Reading the server's query plans (`explain`)."""

from __future__ import annotations

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
