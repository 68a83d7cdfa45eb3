"""Every uvicorn (and websockets) internal the extension relies on, and the check of each.

uvicorn's protocol classes are not a public API: a release may rename an attribute the
extension reads or a method it overrides, and nothing in the type system would say so. This
module lists each one — modules, names, methods, and the instance attributes the extension
reads or sets (found by reading the assignments in uvicorn's own class source, since they exist
only on instances) — plus the access-log format the prepared answers repeat. :func:`missing`
names whatever is gone; the test suite asserts it is empty, so an upgrade fails loudly with the
attribute's name, and :func:`relaycore.uvicorn_ext.server_protocols` falls back to uvicorn's own
protocols at start when it is not.

Only this package may import ``uvicorn.protocols`` or ``uvicorn._types`` (ruff TID251).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from dataclasses import dataclass, field
from functools import cache
from typing import Any

__all__ = ["REQUIRED", "Requirement", "missing"]


@dataclass(frozen=True)
class Requirement:
    """``module.name`` must exist; for a class, with these methods and instance attributes."""

    module: str
    name: str
    methods: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    # Text that must appear in the source of a method, as "method: text".
    source: tuple[tuple[str, str], ...] = field(default=())


_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"
_SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl"

REQUIRED: tuple[Requirement, ...] = (
    # coalescing.CoalescingHttpToolsProtocol, responses.RelayHttpProtocol and
    # direct.DirectHttpProtocol (which starts, or does not start, each request's ASGI task).
    Requirement(
        _HTTPTOOLS,
        "HttpToolsProtocol",
        methods=(
            "connection_made",
            "connection_lost",
            "on_message_begin",
            "on_headers_complete",
            "on_response_complete",
            "handle_websocket_upgrade",
            "_start_asgi_task",
            "_unset_keepalive_if_required",
            "timeout_keep_alive_handler",
        ),
        attributes=(
            "transport",
            "loop",
            "cycle",
            "scope",
            "server_state",
            "app",
            "app_state",
            "flow",
            "pipeline",
            "timeout_keep_alive",
            "timeout_keep_alive_task",
        ),
        source=(
            # The task is started from on_headers_complete with the app it would run.
            ("on_headers_complete", "self._start_asgi_task(self.cycle, app)"),
            # coalescing repeats on_response_complete with the keep-alive timer on its wheel.
            ("on_response_complete", "self.server_state.total_requests += 1"),
            ("on_response_complete", "self.flow.resume_reading()"),
            ("on_response_complete", "cycle, app = self.pipeline.pop()"),
            ("on_response_complete", "self.timeout_keep_alive_task = self.loop.call_later("),
        ),
    ),
    # responses.CycleResponseWriter completes a cycle the way RequestResponseCycle.send does.
    Requirement(
        _HTTPTOOLS,
        "RequestResponseCycle",
        methods=("send",),
        attributes=(
            "on_response",
            "scope",
            "transport",
            "flow",
            "access_log",
            "access_logger",
            "response_started",
            "response_complete",
            "disconnected",
            "keep_alive",
            "waiting_for_100_continue",
            "message_event",
            # write_stream: only into a response uvicorn chunks, framed as its send frames.
            "chunked_encoding",
        ),
        source=(
            ("send", "'%s - \"%s %s HTTP/%s\" %d'"),
            ("send", 'content = [b"%x\\r\\n" % len(body), body, b"\\r\\n"]'),
        ),
    ),
    Requirement("uvicorn.protocols.http.flow_control", "FlowControl", attributes=("write_paused",)),
    Requirement("uvicorn.protocols.utils", "get_client_addr"),
    Requirement("uvicorn.protocols.utils", "get_path_with_query_string"),
    # lean.LeanHttpProtocol serves connections in uvicorn's place (shutdown, request count,
    # default headers) and hands them over to the protocol above with uvicorn's constructor.
    Requirement(
        "uvicorn.server",
        "ServerState",
        attributes=("default_headers", "connections", "total_requests"),
    ),
    Requirement(
        "uvicorn.config",
        "Config",
        attributes=("root_path", "timeout_keep_alive", "limit_concurrency"),
    ),
    Requirement(
        _HTTPTOOLS,
        "HttpToolsProtocol",
        methods=("__init__", "shutdown"),
        source=(("__init__", "_loop: asyncio.AbstractEventLoop | None = None"),),
    ),
    # websocket.RelayWebSocketProtocol.
    Requirement(
        _SANSIO,
        "WebSocketsSansIOProtocol",
        methods=(
            "__init__",
            "send",
            "handle_connect",
            "resume_writing",
            "connection_lost",
            "schedule_ping",
            "send_keepalive_ping",
            # The bounded close (close_now, abort deadline).
            "keepalive_timeout",
            "handle_close",
        ),
        attributes=(
            "conn",
            "loop",
            "ping_timer",
            "ping_interval",
            "last_ping_rtt",
            "queue",
            "writable",
            "request",
            "response",
            "handshake_complete",
            "close_sent",
            "disconnected",
            "transport",
            "scope",
            "close_timer",
            "close_timeout",
            "read_paused",
        ),
    ),
    # websocket.RelayWebSocketProtocol swaps the websockets parser that holds the handshake.
    Requirement(
        "websockets.protocol", "Protocol", methods=("parse",), attributes=("parser", "reader")
    ),
    Requirement("websockets.protocol", "OPEN"),
    Requirement("websockets.streams", "StreamReader", methods=("at_eof",), attributes=("buffer",)),
    Requirement("uvicorn._types", "ASGIReceiveEvent"),
    Requirement("uvicorn._types", "ASGISendEvent"),
    Requirement("uvicorn.config", "Config"),
)


@cache
def _assigned(cls: type) -> frozenset[str]:
    """Names assigned as ``self.<name>`` anywhere in ``cls`` and its bases of the same package."""
    names: set[str] = set()
    package = cls.__module__.partition(".")[0]
    for klass in cls.__mro__:
        if klass.__module__.partition(".")[0] != package:
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        for node in ast.walk(tree):
            targets: list[Any] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    names.add(target.attr)
    return frozenset(names)


def _check(requirement: Requirement) -> list[str]:
    where = f"{requirement.module}.{requirement.name}"
    try:
        module = importlib.import_module(requirement.module)
    except ImportError:
        return [requirement.module]
    target = getattr(module, requirement.name, None)
    if target is None:
        return [where]
    problems = [f"{where}.{name}()" for name in requirement.methods if not hasattr(target, name)]
    if requirement.attributes:
        try:
            assigned = _assigned(target)
        except (OSError, TypeError, SyntaxError):
            return [f"{where} (source unreadable)"]
        problems += [f"{where}.{name}" for name in requirement.attributes if name not in assigned]
    for method, text in requirement.source:
        function = getattr(target, method, None)
        try:
            found = function is not None and text in inspect.getsource(function)
        except (OSError, TypeError):
            found = False
        if not found:
            problems.append(f"{where}.{method}() no longer contains {text}")
    return problems


def missing(required: tuple[Requirement, ...] = REQUIRED) -> list[str]:
    """What of ``required`` the installed uvicorn lacks, by dotted name (empty: all there)."""
    return [problem for requirement in required for problem in _check(requirement)]
