"""Bearer JWT → Principal. HS256 with a secret, or RS256 with a public key; `exp` required."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jwt

from export_service.caches import Clock, TokenVerdicts
from export_service.errors import Forbidden, Unauthorized

REPORT = "REPORT"


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    supreme: bool = False
    permissions: dict[str, frozenset[str]] = field(default_factory=dict)

    def can(self, campaign_id: str, action: str = REPORT) -> bool:
        return action in self.permissions.get(campaign_id, frozenset())

    def require(self, campaign_id: str, action: str = REPORT) -> None:
        if not self.can(campaign_id, action):
            raise Forbidden(f"no {action} permission on campaign {campaign_id}")

    def require_supreme(self) -> None:
        if not self.supreme:
            raise Forbidden("a supreme user is required")


class Authenticator:
    """`issuer`/`audience`: when set, a token must carry that `iss`/`aud` (contract §16).
    `cache_size`: verified tokens remembered (`TokenVerdicts`: until each one's `exp`); 0 = off."""

    def __init__(
        self,
        *,
        secret: str | None,
        public_key: str | None,
        issuer: str | None = None,
        audience: str | None = None,
        cache_size: int = 0,
        clock: Clock = time.time,
    ) -> None:
        self._issuer = issuer
        self._audience = audience
        self._required = (
            ["exp", "sub"] + (["iss"] if issuer else []) + (["aud"] if audience else [])
        )
        self._verdicts: TokenVerdicts[Principal] = TokenVerdicts(cache_size, clock)
        self._keys: list[tuple[str | bytes, str]] = []
        if public_key:
            self._keys.append((public_key, "RS256"))
        if secret:
            self._keys.append((secret, "HS256"))
        if not self._keys:
            raise ValueError("a JWT secret or public key is required")

    def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise Unauthorized("missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("expected 'Authorization: Bearer <token>'")
        token = token.strip()
        principal = self._verdicts.get(token)
        if principal is not None:
            return principal
        claims = self._decode(token)
        principal = _principal(claims)
        exp = claims.get("exp")
        if isinstance(exp, int | float):
            self._verdicts.put(token, principal, float(exp))
        return principal

    def _decode(self, token: str) -> dict[str, object]:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed token") from exc
        for key, alg in self._keys:
            if alg != algorithm:
                continue
            try:
                claims: dict[str, object] = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    issuer=self._issuer,
                    audience=self._audience,
                    options={"require": self._required},
                )
            except jwt.ExpiredSignatureError as exc:
                raise Unauthorized("token expired") from exc
            except jwt.InvalidIssuerError as exc:
                raise Unauthorized("token issuer not accepted") from exc
            except jwt.InvalidAudienceError as exc:
                raise Unauthorized("token audience not accepted") from exc
            except jwt.MissingRequiredClaimError as exc:
                raise Unauthorized(f"token has no {exc.claim!r} claim") from exc
            except jwt.PyJWTError as exc:
                raise Unauthorized("invalid token") from exc
            return claims
        raise Unauthorized("token algorithm not accepted")


def _principal(claims: dict[str, object]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("token has no subject")
    raw = claims.get("permissions") or {}
    if not isinstance(raw, dict):
        raise Unauthorized("malformed permissions claim")
    permissions: dict[str, frozenset[str]] = {}
    for campaign_id, actions in raw.items():
        if isinstance(campaign_id, str) and isinstance(actions, list):
            permissions[campaign_id] = frozenset(a for a in actions if isinstance(a, str))
    return Principal(sub=sub, supreme=claims.get("supreme") is True, permissions=permissions)


def mint(
    secret: str,
    *,
    sub: str,
    campaigns: list[str] | None = None,
    supreme: bool = False,
    ttl_seconds: int = 3600,
    actions: tuple[str, ...] = (REPORT,),
    claims: dict[str, object] | None = None,
) -> str:
    """A token for a local secret (dev, tests, the `token` command); `claims` adds or replaces
    claims (`iss`, `aud`)."""
    now = int(time.time())
    payload: dict[str, object] = {
        "sub": sub,
        "supreme": supreme,
        "permissions": {c: list(actions) for c in campaigns or []},
        "iat": now,
        "exp": now + ttl_seconds,
    }
    payload.update(claims or {})
    return jwt.encode(payload, secret, algorithm="HS256")
