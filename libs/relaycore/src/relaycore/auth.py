"""JWT authentication and topic permissions (contract §8).

With ``RELAY_AUTH=none`` every caller is the anonymous principal allowed everything. With
``RELAY_AUTH=jwt`` a token must verify with one of the pinned algorithms against the configured
key (HMAC secret, PEM public key or JWKS file), carry ``exp``, and match ``aud``/``iss`` when
configured. Its ``topics`` claim lists publish and subscribe patterns: an exact topic name or a
prefix ending in ``*``. Tokens are never logged.

Hardening, beyond PyJWT's own checks:

- **Algorithm pinning, per key.** The token's ``alg`` must be one of ``RELAY_JWT_ALGORITHMS``
  (``none`` never is), and each key verifies only its own family: the HMAC secret only ``HS*``,
  the PEM public key and JWKS keys only the asymmetric algorithm that fits the key (a JWK with
  ``alg`` only that one). An ``HS256`` token "signed" with the RS public key (algorithm
  confusion) therefore never reaches an HMAC check with that key.
- **Bounded key lookup.** A token with a ``kid`` is checked against the JWKS key with that id
  only (a dict lookup; unknown or over-long ids are refused without trying keys); a token
  without one is tried against at most the keys that fit its algorithm. The JWKS file is read
  once at start and may hold at most :data:`MAX_JWKS_KEYS` keys.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from relaycore.settings import ConfigError, Settings

__all__ = [
    "ANONYMOUS",
    "AuthError",
    "Authenticator",
    "Principal",
    "bearer_token",
    "check_key_files",
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


MAX_KID_LENGTH = 256
MAX_JWKS_KEYS = 100
_HMAC = frozenset({"HS256", "HS384", "HS512"})


def _verifying_key(key: Any) -> _Key:
    """A PEM public key (text) bound to the algorithms its type can verify."""
    algorithms = jwt.algorithms.get_default_algorithms()
    fits = []
    for name, algorithm in algorithms.items():
        if name in _HMAC or name == "none":
            continue
        try:
            algorithm.prepare_key(key)
        except (jwt.InvalidKeyError, TypeError, ValueError):
            continue
        fits.append(name)
    return _Key(key=key, algorithms=frozenset(fits))


@dataclass(frozen=True, slots=True)
class _Key:
    """One verification key and the algorithms it may verify."""

    key: Any
    algorithms: frozenset[str]


class Authenticator:
    """Verifies tokens with the keys and rules from settings; built once per app."""

    def __init__(
        self,
        *,
        enabled: bool,
        algorithms: Sequence[str] = ("HS256",),
        secret: str | None = None,
        public_key: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self.enabled = enabled
        self.algorithms = frozenset(algorithms) - {"none"}
        # Keys without a kid, tried in order for a token without one (each only for its algs).
        self._anonymous: list[_Key] = []
        # JWKS keys by kid: a token naming a kid is checked against that key alone.
        self._by_kid: dict[str, _Key] = {}
        if secret:
            self._anonymous.append(_Key(secret, _HMAC & self.algorithms))
        if public_key:
            self._anonymous.append(_verifying_key(public_key))
        if jwks is not None:
            self._load_jwks(jwks)
        self.audience = audience
        self.issuer = issuer

    def _load_jwks(self, jwks: Mapping[str, Any]) -> None:
        entries = jwks.get("keys")
        if not isinstance(entries, list) or not entries:
            raise ValueError("a JWKS needs a non-empty keys list")
        if len(entries) > MAX_JWKS_KEYS:
            raise ValueError(f"a JWKS may hold at most {MAX_JWKS_KEYS} keys")
        for entry in entries:
            jwk = jwt.PyJWK.from_dict(entry)
            if jwk.key_type == "oct":
                raise ValueError("symmetric (oct) JWKS keys are not accepted; use RELAY_JWT_SECRET")
            declared = entry.get("alg")
            fits = _verifying_key(jwk.key).algorithms
            key = _Key(jwk.key, frozenset({declared}) & fits if declared else fits)
            if jwk.key_id is None:
                self._anonymous.append(key)
            elif jwk.key_id in self._by_kid:
                raise ValueError(f"two JWKS keys share the kid {jwk.key_id!r}")
            else:
                self._by_kid[jwk.key_id] = key

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        if settings.auth == "none":
            return cls(enabled=False)
        public_key = None
        if settings.jwt_public_key_file:
            public_key = Path(settings.jwt_public_key_file).read_text()
        jwks = None
        if settings.jwt_jwks_file:
            jwks = json.loads(Path(settings.jwt_jwks_file).read_text())
        return cls(
            enabled=True,
            algorithms=settings.jwt_algorithms,
            secret=settings.jwt_secret or None,
            public_key=public_key,
            jwks=jwks,
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

    def _candidates(self, token: str) -> tuple[str, list[_Key]]:
        """The token's pinned algorithm and the keys that may verify it (never more)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise AuthError(f"invalid token: {error}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError("invalid token: algorithm not allowed")
        kid = header.get("kid")
        if kid is not None:
            if not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH:
                raise AuthError("invalid token: malformed kid")
            key = self._by_kid.get(kid)
            if key is None:
                raise AuthError("invalid token: unknown kid")
            keys = [key]
        else:
            keys = self._anonymous
        usable = [key for key in keys if alg in key.algorithms]
        if not usable:
            raise AuthError("invalid token: no key for this algorithm")
        return alg, usable

    def _verify(self, token: str) -> dict[str, Any]:
        alg, keys = self._candidates(token)
        last_error: Exception | None = None
        for key in keys:
            try:
                return jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[alg],
                    audience=self.audience,
                    issuer=self.issuer,
                    options={"require": ["exp"], "verify_aud": self.audience is not None},
                )
            except jwt.InvalidSignatureError as error:
                last_error = error  # another configured key may match
            except jwt.PyJWTError as error:
                raise AuthError(f"invalid token: {error}") from None
        raise AuthError(f"invalid token: {last_error}")


def check_key_files(settings: Settings) -> None:
    """Load each configured key file on its own; raise :class:`ConfigError` naming the variable
    of one that does not load (unreadable, bad JSON or PEM, a JWKS over its bounds)."""
    if settings.auth != "jwt":
        return
    alone = dataclasses.replace(settings, jwt_secret="", jwt_public_key_file="", jwt_jwks_file="")
    for variable, field_name in (
        ("RELAY_JWT_PUBLIC_KEY_FILE", "jwt_public_key_file"),
        ("RELAY_JWT_JWKS_FILE", "jwt_jwks_file"),
    ):
        path = getattr(settings, field_name)
        if not path:
            continue
        try:
            Authenticator.from_settings(dataclasses.replace(alone, **{field_name: path}))
        except Exception as error:  # unreadable file, bad JSON, bad key: all a config error
            raise ConfigError(variable, path, str(error)) from None
