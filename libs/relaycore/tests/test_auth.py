"""JWT verification and topic patterns (contract §8)."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relaycore.auth import ANONYMOUS, Authenticator, AuthError, bearer_token, pattern_matches
from relaycore.settings import Settings

SECRET = "a-test-secret-long-enough-for-hs256-and-hs512-" + "x" * 32


def token(claims: dict[str, object], key: str | bytes = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def hs256() -> Authenticator:
    return Authenticator.from_settings(
        Settings.from_env({"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": SECRET})
    )


def test_patterns() -> None:
    assert pattern_matches("orders.*", "orders.eu")
    assert pattern_matches("orders.eu", "orders.eu")
    assert not pattern_matches("orders.eu", "orders.eu2")
    assert not pattern_matches("orders.*", "billing.eu")
    assert pattern_matches("*", "anything")


def test_auth_none_is_anonymous() -> None:
    assert Authenticator.from_settings(Settings()).authenticate(None) is ANONYMOUS


def test_valid_token_gives_permissions() -> None:
    claims = {"sub": "svc", "exp": time.time() + 60, "topics": {"publish": ["orders.*"]}}
    principal = hs256().authenticate(token(claims))
    assert principal.subject == "svc"
    assert principal.may_publish("orders.eu")
    assert not principal.may_subscribe("orders.eu")
    assert not principal.expired()


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "not-a-jwt",
        token({"sub": "x"}),  # no exp
        token({"sub": "x", "exp": time.time() - 10}),  # expired
        token({"sub": "x", "exp": time.time() + 60}, key="another-secret-" + "y" * 64),
        token({"sub": "x", "exp": time.time() + 60}, alg="HS512"),  # algorithm not pinned
        token({"sub": "x", "exp": time.time() + 60, "topics": {"publish": "orders.*"}}),
    ],
)
def test_bad_tokens_are_rejected(bad: str | None) -> None:
    with pytest.raises(AuthError):
        hs256().authenticate(bad)


def test_audience_and_issuer_are_checked() -> None:
    auth = Authenticator.from_settings(
        Settings.from_env(
            {
                "RELAY_AUTH": "jwt",
                "RELAY_JWT_SECRET": SECRET,
                "RELAY_JWT_AUDIENCE": "relay",
                "RELAY_JWT_ISSUER": "https://issuer",
            }
        )
    )
    good = {"exp": time.time() + 60, "aud": "relay", "iss": "https://issuer"}
    assert auth.authenticate(token(good)).subject == ""
    with pytest.raises(AuthError):
        auth.authenticate(token({**good, "aud": "other"}))
    with pytest.raises(AuthError):
        auth.authenticate(token({**good, "iss": "https://evil"}))


def test_rs256_public_key_file(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    auth = Authenticator.from_settings(
        Settings.from_env(
            {
                "RELAY_AUTH": "jwt",
                "RELAY_JWT_ALGORITHMS": "RS256",
                "RELAY_JWT_PUBLIC_KEY_FILE": str(tmp_path / "key.pem"),
            }
        )
    )
    signed = token({"sub": "rs", "exp": time.time() + 60}, key=private, alg="RS256")  # type: ignore[arg-type]  # PyJWT accepts key objects
    assert auth.authenticate(signed).subject == "rs"


def test_bearer_header() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token(None) is None
