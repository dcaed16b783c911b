"""Killing encoder processes (`export_service/encoding/processes.py`) mid-export, for real."""

from __future__ import annotations

import os
import signal

from export_service.encoding.processes import EncoderProcesses
from tests.support.gates import until


def stop_children(encoders: EncoderProcesses) -> list[int]:
    """SIGSTOP every child: batches sent to them now queue up unanswered. Their pids."""
    children = encoders.pids
    for child in children:
        os.kill(child, signal.SIGSTOP)
    return children


async def kill_children_holding_batches(encoders: EncoderProcesses, children: list[int]) -> None:
    """Once a batch waits on the stopped children, SIGKILL them: that batch is lost with them
    (a child killed while idle is only replaced at the next batch, and nothing is lost)."""

    def batches_held() -> bool:
        return sum(len(c.waiting) for c in encoders._children) > 0

    await until("a batch sent to the stopped encoders", batches_held)
    for child in children:
        os.kill(child, signal.SIGKILL)
