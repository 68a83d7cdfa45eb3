"""Test support shared by every member's suite: real Valkey processes and real uvicorn servers.

Nothing here fakes Valkey: :class:`ValkeyProcess` runs the real ``valkey-server`` binary.
"""

from relaycore.testing.processes import ServiceProcess
from relaycore.testing.servers import UvicornServer, ValkeyProcess, free_port

__all__ = ["ServiceProcess", "UvicornServer", "ValkeyProcess", "free_port"]
