"""The real servers the tests run against, and their addresses."""

from __future__ import annotations

from urllib.parse import urlsplit

from export_service.dev.embedded import SecantusServer, free_port

__all__ = ["SecantusServer", "free_port", "port_of"]


def port_of(uri: str) -> int:
    port = urlsplit(uri).port
    assert port is not None, uri
    return port
