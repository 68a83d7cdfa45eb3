"""Test support shared by every member's suite: real Valkey processes and real uvicorn servers.

Nothing here fakes Valkey: :class:`ValkeyProcess` runs the real ``valkey-server`` binary, and
:class:`Deployment` runs real ingest and gateway processes.
"""

from relay_devtools.testing.cluster import ValkeyCluster
from relay_devtools.testing.deployment import DeployedProcess, Deployment, descendants, kill_tree
from relay_devtools.testing.processes import ServiceProcess
from relay_devtools.testing.servers import UvicornServer, ValkeyProcess, free_port

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
