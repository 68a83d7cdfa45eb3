"""``GET /ui``: the live-tail page, and its assets under ``/ui/`` (contract §10).

Plain HTML, CSS and ES modules from ``static/ui/``, read once when the app is built and served
from memory — no build step, no template engine. ``/ui/relay.js`` is the reusable browser
client (WebSocket with auto-resume, SSE fallback); ``/ui/app.js`` is the page. The only
server-side value in the page is ``RELAY_PUBLIC_INGEST_URL`` (where its publish form posts;
empty: the page's own host on port 8080), carried in a ``<meta>`` tag.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from relaycore.http import ApiError
from relaycore.settings import Settings

__all__ = ["ui_routes"]

STATIC = Path(__file__).parent / "static" / "ui"
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page loads only its own scripts and styles; it connects to the gateway (ws/wss, SSE,
# long-poll) and to ingest wherever RELAY_PUBLIC_INGEST_URL points.
_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src * ws: wss:; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Edited pages show up on reload; the files are small.
    "cache-control": "no-cache",
}


def ui_routes(settings: Settings) -> list[BaseRoute]:
    index = (STATIC / "index.html").read_text(encoding="utf-8")
    page_body = index.replace(
        "{{public_ingest_url}}", html.escape(settings.public_ingest_url, quote=True)
    ).encode()
    assets = {
        path.name: (path.read_bytes(), _TYPES[path.suffix])
        for path in sorted(STATIC.iterdir())
        if path.suffix in _TYPES
    }

    async def page(request: Request) -> Response:
        return Response(page_body, media_type="text/html; charset=utf-8", headers=_HEADERS)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            raise ApiError(404, "not_found", "no such file under /ui/")
        body, media_type = found
        return Response(body, media_type=media_type, headers=_HEADERS)

    return [
        Route("/ui", page, methods=["GET"]),
        Route("/ui/", page, methods=["GET"]),
        Route("/ui/{name}", asset, methods=["GET"]),
    ]
