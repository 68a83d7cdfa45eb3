"""Test support shared by every member's suite: real Valkey processes and real uvicorn servers.

Nothing here fakes Valkey: :class:`ValkeyProcess` runs the real ``valkey-server`` binary, and
:class:`Deployment` runs real ingest and gateway processes.
"""

from relaycore.testing.cluster import ValkeyCluster
from relaycore.testing.deployment import DeployedProcess, Deployment, descendants, kill_tree
from relaycore.testing.processes import ServiceProcess
from relaycore.testing.servers import UvicornServer, ValkeyProcess, free_port

__all__ = [
    "DeployedProcess",
    "Deployment",
    "ServiceProcess",
    "UvicornServer",
    "ValkeyCluster",
    "ValkeyProcess",
    "descendants",
    "free_port",
    "kill_tree",
]
