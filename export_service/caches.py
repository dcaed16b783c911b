"""The two caches of the GET path: token verdicts and signed download URLs.

Both are per process, bounded (least recently used out first) and read a clock they are given,
so their expiry rules are tested without waiting. `bench.get_path` measured why they exist:
verifying a JWT and signing a URL are CPU work in the API process on every GET.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")
Clock = Callable[[], float]


class _Lru(Generic[V]):
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[object, tuple[V, float]] = OrderedDict()

    def get(self, key: object, now: float) -> V | None:
        """The value while `now` is before the entry's end, else None (and the entry goes)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, until = entry
        if now >= until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: object, value: V, until: float) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = (value, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class TokenVerdicts(Generic[V]):
    """A verified token's principal, until the token's `exp` and never after.

    Keyed by the SHA-256 of the token (a heap dump holds no token). Only the verdict "this
    token is genuine and says this" is kept; what the principal may do on a campaign is
    checked on every request against it, so no permission check is ever cached.
    """

    def __init__(self, max_entries: int, clock: Clock = time.time) -> None:
        self._lru: _Lru[V] = _Lru(max_entries)
        self._clock = clock

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> V | None:
        return self._lru.get(self._key(token), self._clock())

    def put(self, token: str, principal: V, exp: float) -> None:
        # PyJWT refuses a token once `now >= exp`: the cache stops at the same instant.
        if self._clock() < exp:
            self._lru.put(self._key(token), principal, exp)

    def __len__(self) -> int:
        return len(self._lru)


class SignedUrls:
    """A signed URL per object, reused only while most of its lifetime is left.

    A URL signed at `t` for `ttl` seconds is handed out until `t + reuse_fraction * ttl`, so a
    cached URL always has at least `(1 - reuse_fraction)` of its lifetime left (90 % by
    default: 21.6 h of a 24 h URL).
    """

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        *,
        reuse_fraction: float = 0.1,
        clock: Clock = time.time,
    ) -> None:
        if not 0 <= reuse_fraction < 1:
            raise ValueError("reuse_fraction must be in [0, 1)")
        self._lru: _Lru[str] = _Lru(max_entries)
        self._window = ttl_seconds * reuse_fraction
        self._clock = clock

    def get(self, bucket: str, key: str) -> str | None:
        return self._lru.get((bucket, key), self._clock())

    def put(self, bucket: str, key: str, url: str, signed_at: float) -> None:
        self._lru.put((bucket, key), url, signed_at + self._window)

    def now(self) -> float:
        return self._clock()

    def __len__(self) -> int:
        return len(self._lru)
