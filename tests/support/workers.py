"""Real worker processes: `export-service worker` as a child with exactly a test's settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from export_service.settings import Settings

ENV_PREFIX = "EXPORT_SERVICE_"


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `export-service worker` use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name in settings.model_fields_set:
        value: Any = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, dict | list):
            value = json.dumps(_plain(value))
        env[ENV_PREFIX + name.upper()] = str(value)
    env[ENV_PREFIX + "LOG_FORMAT"] = "json"
    return env


def _plain(value: Any) -> Any:
    """JSON-ready settings values, secrets revealed (webhook subscriptions are models)."""
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in value.model_fields_set}
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set | frozenset | tuple):
        return [_plain(v) for v in value]
    return value


class WorkerProcess:
    """`python -m export_service.cli worker` as a child process, its output in a file.

    `module`: another entry point that ends in the same worker (a test seam of its own)."""

    def __init__(
        self, settings: Settings, log_dir: Path, name: str, module: str = "export_service.cli"
    ) -> None:
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, "worker"],
                env=worker_env(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines it wrote (anything else, e.g. a traceback, is skipped)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out


def pid_of(worker_id: str) -> int:
    """Worker ids are `host:pid:nonce` (see `new_worker_id`)."""
    return int(worker_id.rsplit(":", 2)[1])
