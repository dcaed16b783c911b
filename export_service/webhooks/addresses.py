"""Which receiver addresses a webhook may reach: public ones, unless private ones are allowed.

The check runs in the HTTP client's resolver, on the very addresses it then connects to, so a
name that resolves to a public address when checked and a private one when used (DNS rebinding)
cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class PrivateAddressRefused(OSError):
    """The receiver's host is (or resolves to) a loopback, private or otherwise internal address."""


def is_public_address(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def refuse_unless_public(host: str) -> None:
    """Raise for an IP-literal host that is not public (names go through `PublicResolver`)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    if not is_public_address(address):
        raise PrivateAddressRefused(f"{host} is not a public address")


class PublicResolver(AbstractResolver):
    """Resolves like aiohttp's default, and refuses a name if any of its addresses is internal."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if not is_public_address(ipaddress.ip_address(result["host"])):
                raise PrivateAddressRefused(f"{host} resolves to {result['host']}, not public")
        return results

    async def close(self) -> None:
        await self._inner.close()
