"""Requests answered by the server's protocol itself, without an ASGI call (``relay.direct``).

Pure typing: no server code. A long-poll that finds its answer in memory, or parks until the
next message, is a few dictionary lookups of work; the ASGI call around it — a task per
request, the middleware and routing chain, the ``receive``/``send`` messages, the awaited
future of a parked poll — cost the gateway three times nchan's CPU per delivered message. An
app that can answer some requests synchronously puts a :data:`DirectHandler` into its lifespan
state under :data:`DIRECT` (Starlette: ``yield {DIRECT: handler}`` from the lifespan). A server
that knows the key (relaycore.uvicorn_ext.direct implements it on uvicorn) offers every new
request to the handler before it starts the ASGI call; a server that does not simply never
calls it, and every request takes the ordinary path.

The handler runs inside the server's parser callback, so it must not block or await. It returns
``False`` to decline (nothing written: the ASGI app gets the request as usual) or ``True`` to
take it: then it has answered, or answers later, exactly once, through :meth:`respond` or
:meth:`~relaycore.prepared.ResponseWriter.write_prepared` — unless the peer goes first, which
calls :attr:`DirectRequest.on_disconnect`. Requests with a body are not offered (the body
would not have arrived yet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from relaycore.prepared import ResponseWriter

__all__ = ["DIRECT", "DirectHandler", "DirectRequest"]

DIRECT = "relay.direct"


class DirectRequest(ResponseWriter, Protocol):
    """One request offered to a :data:`DirectHandler`: its head, and how to answer it."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str:
        """The path without the query, ``root_path`` included (as ASGI's ``scope["path"]``)."""
        ...

    @property
    def root_path(self) -> str: ...

    @property
    def query_string(self) -> bytes: ...

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Lowercase names, in the order received (as ASGI's ``scope["headers"]``)."""
        ...

    on_disconnect: Callable[[], None] | None
    """Called once if the peer goes away before the request is answered."""

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Answer now: ``status``, ``headers`` (with ``content-type`` and ``content-length``)
        and ``body``, with the server's default headers and keep-alive handling added. Once
        the request is answered, or its peer gone, this does nothing."""
        ...


DirectHandler = Callable[[DirectRequest], bool]
"""Takes a request (``True``: answered now or later) or declines it (``False``)."""
