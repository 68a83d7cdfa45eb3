"""WebSocket frames encoded once, and the ``relay.frames`` scope extension that writes them.

Pure data and typing: no server code. Server → client frames are never masked, so the complete
frame of one event (or of one packed batch of events) is the same bytes for every subscriber:
:func:`text_frame` builds it once, and a connection whose server offers the ``relay.frames``
ASGI scope extension (a :class:`FrameWriter`; relaycore.uvicorn_ext.websocket implements it on
uvicorn) lets the app write those bytes straight to the transport. Under any other server
:func:`frame_writer` returns ``None`` and the app uses ``websocket.send``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["EXTENSION", "FrameWriter", "frame_writer", "text_frame"]

EXTENSION = "relay.frames"

_FIN_TEXT = 0x81
_SHORT = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (RFC 6455 §5.2) carrying ``payload`` (UTF-8)."""
    size = len(payload)
    if size < 126:
        return bytes((_FIN_TEXT, size)) + payload
    if size < 65536:
        return _SHORT.pack(_FIN_TEXT, 126, size) + payload
    return _LONG.pack(_FIN_TEXT, 127, size) + payload


class FrameWriter(Protocol):
    """What the app sees under ``scope["extensions"]["relay.frames"]``."""

    @property
    def frames_writable(self) -> bool:
        """Open, past the handshake, not closing, and the transport is below its high-water mark."""
        ...

    def write_frames(self, data: bytes) -> None:
        """Write complete frames as they are; only call while :attr:`frames_writable`."""
        ...

    def on_frames_writable(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` whenever the transport drains below its low-water mark."""
        ...

    async def wait_frames_writable(self) -> None:
        """Until the transport drained (or the connection is gone)."""
        ...

    @property
    def buffered_bytes(self) -> int:
        """Bytes written but still in the transport's buffer (not yet taken by the kernel)."""
        ...

    def set_close_timeout(self, seconds: float) -> None:
        """How long any close may take before the transport is aborted."""
        ...

    def close_now(self, code: int, reason: str = "", *, frame: bool = True) -> None:
        """Close without waiting for the transport: the close frame (if ``frame``), then abort
        the transport unless the closing handshake ends within the close timeout."""
        ...

    def abort(self) -> None:
        """Drop the connection at once, discarding what its buffer holds."""
        ...


def frame_writer(scope: Any) -> FrameWriter | None:
    """The raw frame path of this connection, if the server offers one."""
    extensions = scope.get("extensions") or {}
    writer: FrameWriter | None = extensions.get(EXTENSION)
    return writer
