"""``python -m relaycore.healthcheck``: the container image's ``HEALTHCHECK``.

Exits 0 when the service in this container answers ``GET /health`` with 200 on loopback. One
image runs either service, so both ports are tried (``RELAY_INGEST_PORT``, default 8080;
``RELAY_GATEWAY_PORT``, default 8081). With ``RELAY_TLS_CERT_FILE`` set the services speak
HTTPS; the probe then skips certificate checks (it talks to 127.0.0.1, not the certificate's
name). Standard library only, no settings parsing: it must answer even with a bad config.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

__all__ = ["healthy", "main"]


def healthy(environ: dict[str, str] | os._Environ[str] = os.environ, timeout: float = 2.0) -> bool:
    scheme = "https" if environ.get("RELAY_TLS_CERT_FILE") else "http"
    context = ssl._create_unverified_context() if scheme == "https" else None  # loopback only
    for port in (
        environ.get("RELAY_INGEST_PORT", "8080"),
        environ.get("RELAY_GATEWAY_PORT", "8081"),
    ):
        try:
            with urllib.request.urlopen(
                f"{scheme}://127.0.0.1:{port}/health", timeout=timeout, context=context
            ) as response:
                if response.status == 200:
                    return True
        except OSError:
            continue
    return False


def main() -> None:
    sys.exit(0 if healthy() else 1)


if __name__ == "__main__":
    main()
