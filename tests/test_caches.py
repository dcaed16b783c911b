"""The GET path's caches (export_service/caches.py): their expiry rules, on an injected clock."""

from __future__ import annotations

import time

import pytest

from export_service.app.auth import Authenticator, Principal, mint
from export_service.caches import SignedUrls, TokenVerdicts
from export_service.errors import Forbidden, Unauthorized

SECRET = "cache-test-secret-which-is-long-enough"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_token_verdict_is_kept_until_its_exp_and_not_one_second_more() -> None:
    clock = Clock()
    verdicts: TokenVerdicts[str] = TokenVerdicts(10, clock)
    verdicts.put("t", "alice", exp=clock.now + 60)
    clock.now += 59.999
    assert verdicts.get("t") == "alice"
    clock.now += 0.001  # now == exp: PyJWT calls the token expired here too
    assert verdicts.get("t") is None
    assert len(verdicts) == 0


def test_an_already_expired_token_is_never_kept() -> None:
    clock = Clock()
    verdicts: TokenVerdicts[str] = TokenVerdicts(10, clock)
    verdicts.put("t", "alice", exp=clock.now)
    assert verdicts.get("t") is None and len(verdicts) == 0


def test_verdicts_are_per_token_and_bounded_least_recently_used_first() -> None:
    clock = Clock()
    verdicts: TokenVerdicts[str] = TokenVerdicts(2, clock)
    verdicts.put("a", "A", exp=clock.now + 60)
    verdicts.put("b", "B", exp=clock.now + 60)
    assert verdicts.get("a") == "A"  # b is now the least recently used
    verdicts.put("c", "C", exp=clock.now + 60)
    assert (verdicts.get("a"), verdicts.get("b"), verdicts.get("c")) == ("A", None, "C")
    assert verdicts.get("a ") is None
    off: TokenVerdicts[str] = TokenVerdicts(0, clock)
    off.put("a", "A", exp=clock.now + 60)
    assert off.get("a") is None


def test_the_authenticator_answers_401_once_a_remembered_token_expires() -> None:
    clock = Clock()
    token = mint(SECRET, sub="alice", campaigns=["c1"], ttl_seconds=60)
    header = f"Bearer {token}"
    authenticator = Authenticator(secret=SECRET, public_key=None, cache_size=10, clock=clock)
    clock.now = float(int(time.time()))
    principal = authenticator.authenticate(header)
    assert isinstance(principal, Principal) and principal.sub == "alice"
    # Remembered: the same principal object, without a second verification.
    assert authenticator.authenticate(header) is principal
    clock.now += 61
    # The cache has let it go; PyJWT (on the real clock) still finds the token valid, so the
    # verdict is recomputed rather than answered from memory past `exp`.
    assert authenticator.authenticate(header) is not principal


def test_a_remembered_verdict_never_grants_another_campaign() -> None:
    clock = Clock(float(int(time.time())))
    header = f"Bearer {mint(SECRET, sub='alice', campaigns=['c1'])}"
    authenticator = Authenticator(secret=SECRET, public_key=None, cache_size=10, clock=clock)
    authenticator.authenticate(header).require("c1")
    with pytest.raises(Forbidden):
        authenticator.authenticate(header).require("c2")
    # A forged token is not answered from the genuine one's entry.
    with pytest.raises(Unauthorized):
        authenticator.authenticate(header[:-2] + ("AA" if header[-2:] != "AA" else "BB"))


def test_a_signed_url_is_reused_only_for_the_first_tenth_of_its_lifetime() -> None:
    clock = Clock()
    ttl = 86_400.0
    urls = SignedUrls(ttl, 10, clock=clock)
    signed_at = clock.now
    urls.put("b", "k", "https://signed/1", signed_at)
    clock.now += ttl * 0.1 - 0.001
    assert urls.get("b", "k") == "https://signed/1"
    # What is handed out still has at least 90 % of its lifetime left.
    assert (signed_at + ttl) - clock.now >= 0.9 * ttl
    clock.now += 0.001
    assert urls.get("b", "k") is None
    assert urls.get("b", "other") is None and urls.get("other", "k") is None


def test_signed_urls_are_bounded_and_can_be_turned_off() -> None:
    clock = Clock()
    urls = SignedUrls(3600, 1, clock=clock)
    urls.put("b", "k1", "u1", clock.now)
    urls.put("b", "k2", "u2", clock.now)
    assert (urls.get("b", "k1"), urls.get("b", "k2")) == (None, "u2")
    off = SignedUrls(3600, 0, clock=clock)
    off.put("b", "k", "u", clock.now)
    assert off.get("b", "k") is None
    with pytest.raises(ValueError):
        SignedUrls(3600, 1, reuse_fraction=1.0)
