"""The one place that reaches into uvicorn's private protocol layer.

Both services' fastest paths are uvicorn protocol subclasses, one module per concern:

- :mod:`~relaycore.uvicorn_ext.coalescing`: each HTTP response in one socket write (both
  services);
- :mod:`~relaycore.uvicorn_ext.responses`: the ``relay.response`` extension, prepared long-poll
  answers written straight to waiting requests and SSE chunks straight to started streams
  (gateway);
- :mod:`~relaycore.uvicorn_ext.direct`: the ``relay.direct`` lifespan-state key, requests the
  app answers inside the protocol without an ASGI task (the gateway's polls);
- :mod:`~relaycore.uvicorn_ext.lean`: the gateway's connections start on a protocol with no
  request cycle at all, for whole body-less requests the direct handler takes, and are handed
  over to uvicorn's (the direct one) for anything else;
- :mod:`~relaycore.uvicorn_ext.deadlines`: every HTTP connection's header deadline and
  keep-alive timeout on one timer per loop (both services);
- :mod:`~relaycore.uvicorn_ext.websocket`: the ``relay.frames`` extension, WebSocket frames
  encoded once and written straight to each transport (gateway);
- :mod:`~relaycore.uvicorn_ext.supervisor`: uvicorn's multi-process supervisor with workers
  that run a server of the service's making (the gateway's staged shutdown in every worker);
- :mod:`~relaycore.uvicorn_ext.internals`: every uvicorn internal those rely on, checked.

The app side sees only the pure modules :mod:`relaycore.frames`, :mod:`relaycore.prepared` and
:mod:`relaycore.direct` (the extension protocols and the bytes they carry), so the data model
never imports server code. Tested with the uvicorn range the services declare
(``uvicorn>=0.35,<0.55``). When the installed uvicorn lacks an internal, :func:`server_protocols`
logs what is missing and hands out uvicorn's own protocols instead: the apps then see no
extension in the scope and answer through plain ASGI ``send``, more slowly but correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

from relaycore.logging import get_logger
from relaycore.uvicorn_ext.internals import missing

__all__ = ["ServerProtocols", "configure", "server_protocols"]

log = get_logger("relaycore.uvicorn_ext")


@dataclass(frozen=True, slots=True)
class ServerProtocols:
    """uvicorn's ``http=`` and ``ws=`` options: a protocol class or one of uvicorn's names."""

    http: type | str
    ws: type | str
    extended: bool  # False: uvicorn's own protocols (plain ASGI)


def configure(*, header_timeout: float) -> None:
    """Process-wide options of the protocols, set once at start by each service's entry point
    (and in each worker process): the slowloris guard's header deadline, ``0`` = off
    (:mod:`relaycore.uvicorn_ext.coalescing`). uvicorn's own protocols, the fallback, have no
    such guard."""
    if not missing():
        from relaycore.uvicorn_ext import coalescing

        coalescing.configure(header_timeout=header_timeout)


def server_protocols(*, websockets: bool, prepared_responses: bool) -> ServerProtocols:
    """The relay's protocols when the installed uvicorn has every internal they use.

    ``websockets``: serve WebSockets (the gateway) or refuse upgrades (ingest).
    ``prepared_responses``: offer ``relay.response`` on HTTP requests and new requests to the
    app's ``relay.direct`` handler (the gateway's polls).
    """
    plain_ws = "websockets-sansio" if websockets else "none"
    gone = missing()
    if gone:
        log.warning("uvicorn_internals_changed", missing=gone, fallback="plain ASGI")
        return ServerProtocols(http="httptools", ws=plain_ws, extended=False)
    # Imported only once the internals are known present: an import error is not an option.
    from relaycore.uvicorn_ext.coalescing import CoalescingHttpToolsProtocol
    from relaycore.uvicorn_ext.lean import LeanHttpProtocol
    from relaycore.uvicorn_ext.websocket import RelayWebSocketProtocol

    http: type = LeanHttpProtocol if prepared_responses else CoalescingHttpToolsProtocol
    ws: type | str = RelayWebSocketProtocol if websockets else "none"
    return ServerProtocols(http=http, ws=ws, extended=True)
