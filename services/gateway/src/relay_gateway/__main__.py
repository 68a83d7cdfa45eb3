"""``relay-gateway`` / ``python -m relay_gateway``: run the gateway with uvicorn.

An invalid ``RELAY_*`` value stops the process at start with one line on stderr naming the
variable (exit code 1). uvicorn runs with uvloop and httptools, and the sans-I/O ``websockets``
implementation: no task per connection and no per-connection keepalive task (pings are timers),
which holds many idle connections with the least memory. permessage-deflate stays off (its
per-connection zlib buffers cost ~100s of KiB each), inbound frames are capped at
``RELAY_MAX_WS_FRAME_BYTES`` (larger: close 1009), and uvicorn pings every
``RELAY_WS_PING_INTERVAL`` and drops peers that do not answer within ``RELAY_WS_PING_TIMEOUT``. One
process or ``RELAY_WORKERS`` worker processes, each draining on SIGTERM like a single one:
see :mod:`relay_gateway.serving`.
"""

from __future__ import annotations

import os
import sys

from relay_gateway.serving import serve
from relaycore.auth import check_key_files
from relaycore.settings import ConfigError, Settings

__all__ = ["main"]


def main() -> None:
    try:
        settings = Settings.from_env(os.environ)
        check_key_files(settings)
    except ConfigError as error:
        print(f"relay-gateway: {error}", file=sys.stderr)
        sys.exit(1)
    serve(settings)


if __name__ == "__main__":
    main()
