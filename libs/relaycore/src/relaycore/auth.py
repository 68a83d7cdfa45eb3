"""JWT authentication and topic permissions (contract §8).

With ``RELAY_AUTH=none`` every caller is the anonymous principal allowed everything. With
``RELAY_AUTH=jwt`` a token must verify with one of the pinned algorithms against the configured
key (HMAC secret, PEM public key or JWKS file), carry ``exp``, and match ``aud``/``iss`` when
configured. Its ``topics`` claim lists publish and subscribe patterns: an exact topic name or a
prefix ending in ``*``. Tokens are never logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from relaycore.settings import Settings

__all__ = [
    "ANONYMOUS",
    "AuthError",
    "Authenticator",
    "Principal",
    "bearer_token",
    "pattern_matches",
]


class AuthError(Exception):
    """Missing or invalid credentials (401)."""

    code = "unauthorized"


def pattern_matches(pattern: str, topic: str) -> bool:
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling and which topics they may publish to and subscribe to."""

    subject: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    expires_at: float | None = None

    def may_publish(self, topic: str) -> bool:
        return any(pattern_matches(p, topic) for p in self.publish)

    def may_subscribe(self, topic: str) -> bool:
        return any(pattern_matches(p, topic) for p in self.subscribe)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


ANONYMOUS = Principal(subject="anonymous", publish=("*",), subscribe=("*",))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _patterns(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise AuthError("the topics claim must hold lists of topic patterns")
    return tuple(value)


class Authenticator:
    """Verifies tokens with the keys and rules from settings; built once per app."""

    def __init__(
        self,
        *,
        enabled: bool,
        algorithms: Sequence[str] = ("HS256",),
        keys: Sequence[Any] = (),
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self.enabled = enabled
        self.algorithms = list(algorithms)
        self.keys = list(keys)
        self.audience = audience
        self.issuer = issuer

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        if settings.auth == "none":
            return cls(enabled=False)
        keys: list[Any] = []
        if settings.jwt_secret:
            keys.append(settings.jwt_secret)
        if settings.jwt_public_key_file:
            keys.append(Path(settings.jwt_public_key_file).read_text())
        if settings.jwt_jwks_file:
            jwks = jwt.PyJWKSet.from_dict(json.loads(Path(settings.jwt_jwks_file).read_text()))
            keys.extend(key.key for key in jwks.keys)
        return cls(
            enabled=True,
            algorithms=settings.jwt_algorithms,
            keys=keys,
            audience=settings.jwt_audience or None,
            issuer=settings.jwt_issuer or None,
        )

    def authenticate(self, token: str | None) -> Principal:
        """The principal for ``token``; raises :class:`AuthError` when it does not verify."""
        if not self.enabled:
            return ANONYMOUS
        if not token:
            raise AuthError("credentials required: send Authorization: Bearer <jwt>")
        claims = self._verify(token)
        topics = claims.get("topics") or {}
        if not isinstance(topics, dict):
            raise AuthError("the topics claim must be an object")
        return Principal(
            subject=str(claims.get("sub", "")),
            publish=_patterns(topics.get("publish", [])),
            subscribe=_patterns(topics.get("subscribe", [])),
            expires_at=float(claims["exp"]),
        )

    def _verify(self, token: str) -> dict[str, Any]:
        last_error: Exception | None = None
        for key in self.keys:
            try:
                return jwt.decode(
                    token,
                    key=key,
                    algorithms=self.algorithms,
                    audience=self.audience,
                    issuer=self.issuer,
                    options={"require": ["exp"], "verify_aud": self.audience is not None},
                )
            except jwt.InvalidSignatureError as error:
                last_error = error  # another configured key may match
            except jwt.InvalidKeyError as error:
                last_error = error  # key type does not fit this token's algorithm
            except jwt.PyJWTError as error:
                raise AuthError(f"invalid token: {error}") from None
        raise AuthError(f"invalid token: {last_error or 'no key configured'}")
