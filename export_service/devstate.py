"""Where a running `export-service dev` tells this user's other commands how to reach it.

`dev` writes one file into the per-user state directory (`$XDG_STATE_HOME/export-service`, else
`~/.local/state/export-service`), mode 0600: its base URL, its JWT secret, its data directory and
its pid. Client commands and `token` read it from any working directory, so they never depend on
the relative data directory and never mint with a second secret the service would reject.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from export_service.errors import ExportServiceError
from export_service.settings import Settings

STATE_FILE = "dev.json"
SECRET_FILE = "dev-jwt-secret"  # noqa: S105 (a file name; the secret is inside it)


class NoLocalSecret(ExportServiceError):
    """No secret to mint a token with; the message lists every place that was looked at."""

    code = "NoLocalSecret"


@dataclass(frozen=True, slots=True)
class DevInstance:
    url: str
    secret: str
    data_dir: str
    pid: int


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "export-service"


def state_path() -> Path:
    return state_dir() / STATE_FILE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, though not ours to signal
    return True


def publish(instance: DevInstance) -> Path:
    """Write the state file atomically, readable by this user only."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(instance), out)
    os.replace(tmp, path)
    return path


def withdraw(pid: int) -> None:
    """Remove the state file if it is still this process's (a newer `dev` may have replaced it)."""
    current = read_state()
    if current is not None and current.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            state_path().unlink()


def read_state() -> DevInstance | None:
    try:
        raw = json.loads(state_path().read_text())
        return DevInstance(
            url=str(raw["url"]), secret=str(raw["secret"]),
            data_dir=str(raw["data_dir"]), pid=int(raw["pid"]),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_instance() -> DevInstance | None:
    """The dev instance of the state file, if its process still runs."""
    instance = read_state()
    return instance if instance is not None and _alive(instance.pid) else None


def local_secret(settings: Settings) -> tuple[str, str | None]:
    """(secret, base URL or None) to mint client tokens with; never creates a secret.

    Order: EXPORT_SERVICE_JWT_SECRET; the running dev instance's state file; the secret file of
    the configured data directory (a `serve` started without `dev`).
    """
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value(), None
    looked = ["EXPORT_SERVICE_JWT_SECRET (unset)"]
    path = state_path()
    instance = read_state()
    if instance is None:
        looked.append(f"{path} (no readable state: is `export-service dev` running?)")
    elif not _alive(instance.pid):
        looked.append(f"{path} (written by pid {instance.pid}, which is no longer running)")
    else:
        return instance.secret, instance.url
    secret_file = Path(settings.data_dir).resolve() / SECRET_FILE
    if settings.embedded and secret_file.is_file():
        return secret_file.read_text().strip(), None
    looked.append(f"{secret_file} (missing)")
    raise NoLocalSecret("no secret to mint a token with; looked at " + "; ".join(looked))
