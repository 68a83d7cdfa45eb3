"""JWT verification and topic patterns (contract §8)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay_devtools.testing.services import ServiceProcess
from relaycore.auth import (
    ANONYMOUS,
    MAX_JWKS_KEYS,
    Authenticator,
    AuthError,
    bearer_token,
    pattern_matches,
)
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


# --- Hostile tokens: algorithm confusion, "none", kid lookups (issue 7, point 6) ---


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge_hs256(claims: dict[str, object], secret: bytes, **header: object) -> str:
    """An HS256 token with ``secret`` as the HMAC key, built by hand: PyJWT refuses to sign
    with a public key as the secret, an attacker's own code does not."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def unsigned(claims: dict[str, object], **header: object) -> str:
    head = _b64(json.dumps({"alg": "none", "typ": "JWT", **header}).encode())
    return f"{head}.{_b64(json.dumps(claims).encode())}."


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(private: rsa.RSAPrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _jwk(private: rsa.RSAPrivateKey, **extra: str) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key())), **extra}


CLAIMS = {"sub": "mallory", "exp": time.time() + 600, "topics": {"publish": ["*"]}}


@pytest.mark.parametrize("algorithms", ["RS256", "HS256,RS256"])
def test_hs256_signed_with_the_rs_public_key_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, algorithms: str
) -> None:
    pem = _public_pem(rsa_key)
    (tmp_path / "key.pem").write_bytes(pem)
    env = {"RELAY_AUTH": "jwt", "RELAY_JWT_ALGORITHMS": algorithms,
           "RELAY_JWT_PUBLIC_KEY_FILE": str(tmp_path / "key.pem")}  # fmt: skip
    if "HS256" in algorithms:
        env["RELAY_JWT_SECRET"] = SECRET
    auth = Authenticator.from_settings(Settings.from_env(env))
    real = token(CLAIMS, key=rsa_key, alg="RS256")  # type: ignore[arg-type]  # key object
    assert auth.authenticate(real).subject == "mallory"
    for secret in (pem, pem.strip(), pem.decode().replace("\n", "").encode()):
        with pytest.raises(AuthError):
            auth.authenticate(forge_hs256(CLAIMS, secret))


def test_hs256_signed_with_a_jwks_key_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwk = _jwk(rsa_key, kid="k1")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    auth = Authenticator.from_settings(
        Settings.from_env({"RELAY_AUTH": "jwt", "RELAY_JWT_ALGORITHMS": "HS256,RS256",
                           "RELAY_JWT_SECRET": SECRET,
                           "RELAY_JWT_JWKS_FILE": str(tmp_path / "jwks.json")})
    )  # fmt: skip
    signed = jwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert auth.authenticate(signed).subject == "mallory"
    for secret in (json.dumps(jwk).encode(), _public_pem(rsa_key)):
        for header in ({"kid": "k1"}, {}):
            with pytest.raises(AuthError):
                auth.authenticate(forge_hs256(CLAIMS, secret, **header))


@pytest.mark.parametrize("algorithms", ["HS256", "HS256,none", "none,RS256"])
def test_alg_none_is_refused_even_when_listed(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, algorithms: str
) -> None:
    (tmp_path / "key.pem").write_bytes(_public_pem(rsa_key))
    auth = Authenticator.from_settings(
        Settings.from_env({"RELAY_AUTH": "jwt", "RELAY_JWT_ALGORITHMS": algorithms,
                           "RELAY_JWT_SECRET": SECRET,
                           "RELAY_JWT_PUBLIC_KEY_FILE": str(tmp_path / "key.pem")})
    )  # fmt: skip
    for alg in ("none", "None", "NONE", "nOnE"):
        forged = unsigned(CLAIMS).replace(
            _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()),
            _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()),
        )
        with pytest.raises(AuthError):
            auth.authenticate(forged)
        with pytest.raises(AuthError):  # with a signature part that is not empty, too
            auth.authenticate(forged + "c2ln")


def test_kid_lookup_is_one_key_and_bounded(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    others = [rsa.generate_private_key(public_exponent=65537, key_size=1024 + 1024)
              for _ in range(3)]  # fmt: skip
    keys = [_jwk(key, kid=f"k{index}", alg="RS256") for index, key in enumerate(others)]
    keys += [_jwk(rsa_key, kid=f"k{index}") for index in range(3, MAX_JWKS_KEYS)]
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": keys}))
    auth = Authenticator.from_settings(
        Settings.from_env({"RELAY_AUTH": "jwt", "RELAY_JWT_ALGORITHMS": "RS256",
                           "RELAY_JWT_JWKS_FILE": str(tmp_path / "jwks.json")})
    )  # fmt: skip
    calls: list[object] = []
    real_decode = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("key"))
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    signed = jwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "k57"})
    assert auth.authenticate(signed).subject == "mallory"
    assert len(calls) == 1  # the kid's key only, not a scan of 100 keys
    # Signed by k57's key but naming another kid: that key alone is tried, and fails.
    calls.clear()
    wrong = jwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(AuthError):
        auth.authenticate(wrong)
    assert len(calls) == 1
    calls.clear()
    _, body, signature = signed.split(".")
    for kid in ("nope", "k" * 10_000, 7, ["k1"], {"k": 1}, None):
        header: dict[str, object] = {"alg": "RS256", "typ": "JWT"}
        if kid is not None:
            header["kid"] = kid  # no kid: the JWKS keys all have one, none is tried
        forged = f"{_b64(json.dumps(header).encode())}.{body}.{signature}"
        with pytest.raises(AuthError):
            auth.authenticate(forged)
    assert calls == []  # refused before any signature check


@pytest.mark.parametrize(
    ("jwks", "message"),
    [
        ({"keys": []}, "non-empty"),
        ({"keys": "x"}, "non-empty"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}, "oct"),
    ],
)
def test_unusable_jwks_files_are_refused_at_start(
    tmp_path: Path, jwks: dict[str, Any], message: str
) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    settings = Settings.from_env({"RELAY_AUTH": "jwt", "RELAY_JWT_ALGORITHMS": "RS256",
                                  "RELAY_JWT_JWKS_FILE": str(tmp_path / "jwks.json")})  # fmt: skip
    with pytest.raises(ValueError, match=message):
        Authenticator.from_settings(settings)


def test_jwks_size_and_duplicate_kids_are_bounded(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    for keys, message in (
        ([_jwk(rsa_key, kid=f"k{i}") for i in range(MAX_JWKS_KEYS + 1)], "at most"),
        ([_jwk(rsa_key, kid="same"), _jwk(rsa_key, kid="same")], "share"),
    ):
        (tmp_path / "jwks.json").write_text(json.dumps({"keys": keys}))
        path = str(tmp_path / "jwks.json")
        settings = Settings.from_env(
            {"RELAY_AUTH": "jwt", "RELAY_JWT_ALGORITHMS": "RS256", "RELAY_JWT_JWKS_FILE": path}
        )
        with pytest.raises(ValueError, match=message):
            Authenticator.from_settings(settings)


@pytest.mark.timeout(90)
async def test_forged_tokens_are_refused_by_both_services(
    valkey_url: str, topic: str, tmp_path: Path
) -> None:
    """The real processes with RS256 from a JWKS file plus an HS256 secret (the mixed setup
    where confusion bites): forged tokens get 401 on publish and poll and close 4401 on the
    WebSocket; the genuine token works."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "main"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    env = {
        "VALKEY_URL": valkey_url,
        "AUTH": "jwt",
        "JWT_ALGORITHMS": "HS256,RS256",
        "JWT_SECRET": SECRET,
        "JWT_JWKS_FILE": str(tmp_path / "jwks.json"),
        "SHUTDOWN_GRACE": "3s",
        "SHUTDOWN_DRAIN": "1s",
    }
    claims = {"sub": "mallory", "exp": time.time() + 600,
              "topics": {"publish": ["*"], "subscribe": ["*"]}}  # fmt: skip
    genuine = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "main"})
    forged = {
        "HS256 keyed with the JWK text": forge_hs256(claims, json.dumps(jwk).encode(), kid="main"),
        "HS256 keyed with the public PEM": forge_hs256(claims, pem),
        "alg none": unsigned(claims, kid="main"),
        "unknown kid": forge_hs256(claims, SECRET.encode(), kid="other"),
        "oversized kid": forge_hs256(claims, SECRET.encode(), kid="k" * 2000),
    }
    with ServiceProcess("ingest", **env) as ingest, ServiceProcess("gateway", **env) as gateway:
        async with (
            httpx.AsyncClient(base_url=ingest.url) as producer,
            httpx.AsyncClient(base_url=gateway.url) as consumer,
        ):
            for name, bad in forged.items():
                headers = {"Authorization": f"Bearer {bad}"}
                published = await producer.post(
                    "/api/v1/messages", json={"topic": topic, "payload": 1}, headers=headers
                )
                assert published.status_code == 401, (name, published.text)
                polled = await consumer.get(
                    "/api/v1/poll", params={"topic": topic, "timeout": "0", "token": bad}
                )
                assert polled.status_code == 401, (name, polled.text)
                async with websockets.connect(
                    gateway.ws_url + "/api/v1/ws", additional_headers=headers
                ) as ws:
                    error = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert error["op"] == "error"
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await asyncio.wait_for(ws.recv(), 10)
                    assert closed.value.rcvd is not None
                    assert closed.value.rcvd.code == 4401, name
            good = {"Authorization": f"Bearer {genuine}"}
            published = await producer.post(
                "/api/v1/messages", json={"topic": topic, "payload": 1}, headers=good
            )
            assert published.status_code == 201, published.text
            polled = await consumer.get(
                "/api/v1/poll", params={"topic": topic, "since": "0", "timeout": "0"}, headers=good
            )
            assert [m["id"] for m in polled.json()["messages"]] == [published.json()["id"]]


@pytest.mark.parametrize("module", ["relay_ingest", "relay_gateway"])
def test_an_unusable_jwks_file_stops_either_service_with_one_line(
    tmp_path: Path, module: str
) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_AUTH="jwt", RELAY_JWT_ALGORITHMS="RS256",
               RELAY_JWT_JWKS_FILE=str(tmp_path / "jwks.json"))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "RELAY_JWT_JWKS_FILE" in lines[0]
    assert "oct" in lines[0]
