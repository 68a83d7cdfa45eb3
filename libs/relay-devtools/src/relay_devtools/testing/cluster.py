"""A real multi-primary Valkey Cluster for tests: several ``valkey-server`` processes.

Each node is a :class:`~relay_devtools.testing.servers.ValkeyProcess` in cluster mode on a free port
with an explicitly chosen free cluster-bus port (the default bus port, port + 10000, may be
taken), in its own temp dir. The slots are split evenly by hand (``CLUSTER ADDSLOTSRANGE``), the
nodes joined with ``CLUSTER MEET``, and replicas attached with ``CLUSTER REPLICATE``; the cluster
is ready once every node reports ``cluster_state:ok`` and knows every other node.

Settings chosen for fault tests: ``cluster-require-full-coverage no`` (a dead primary makes only
its own slots unavailable, as production should be configured), a short
``cluster-node-timeout`` (failures are detected in about a second) and
``cluster-replica-validity-factor 0`` (a replica may always take over).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Sequence
from types import TracebackType

from relay_devtools.testing.servers import ValkeyProcess, free_port
from relaycore.keys import key_slot

__all__ = ["ValkeyCluster", "command", "key_slot"]

SLOT_COUNT = 16384


def command(node: ValkeyProcess, *args: str, timeout: float = 5.0) -> bytes:
    """One command over a plain socket (RESP2); the raw reply. For setting the cluster up."""
    request = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args
    )
    with socket.create_connection((node.host, node.port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = sock.recv(65536)
        while not reply.endswith(b"\r\n"):
            reply += sock.recv(65536)
        if reply.startswith(b"$"):  # bulk string: $<length>\r\n<data>\r\n
            header, _, _ = reply.partition(b"\r\n")
            while len(reply) < len(header) + 2 + int(header[1:]) + 2:
                reply += sock.recv(65536)
    return reply


def _bulk(reply: bytes) -> str:
    """The text of a bulk-string reply."""
    header, _, rest = reply.partition(b"\r\n")
    if not header.startswith(b"$"):
        raise RuntimeError(f"unexpected reply {reply[:200]!r}")
    return rest[: int(header[1:])].decode()


class ValkeyCluster:
    """``primaries`` cluster-enabled Valkey processes with even slot ranges, and replicas.

    ``replicas`` replicas are attached to primary 0, 1, ... in turn. Node objects keep their
    port and data dir across :meth:`kill` / :meth:`restart` (``nodes.conf`` in the data dir
    brings a restarted node back with its id and, if still its own, its slots).
    """

    def __init__(
        self,
        *,
        primaries: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        extra_args: Sequence[str] = (),
    ) -> None:
        step = SLOT_COUNT // primaries
        self.slots = [
            (n * step, SLOT_COUNT - 1 if n == primaries - 1 else (n + 1) * step - 1)
            for n in range(primaries)
        ]
        self.primary_count = primaries
        self.node_count = primaries + replicas
        self.extra_args = [
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-replica-migration", "no",
            *extra_args,
        ]  # fmt: skip
        self.nodes: list[ValkeyProcess] = []
        self.buses: list[int] = []
        self._build()
        self.ids: list[str] = []

    def _build(self) -> None:
        """Node objects on fresh free ports, every client and bus port distinct."""
        ports: set[int] = set()
        while len(ports) < 2 * self.node_count:
            ports.add(free_port())
        chosen = list(ports)
        random.shuffle(chosen)
        self.nodes, self.buses = [], []
        for n in range(self.node_count):
            port, bus = chosen[2 * n], chosen[2 * n + 1]
            self.buses.append(bus)
            self.nodes.append(
                ValkeyProcess(
                    port=port,
                    extra_args=[
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-port", str(bus),
                        *self.extra_args,
                    ],
                )
            )  # fmt: skip

    @property
    def primaries(self) -> list[ValkeyProcess]:
        return self.nodes[: self.primary_count]

    @property
    def replicas(self) -> list[ValkeyProcess]:
        return self.nodes[self.primary_count :]

    @property
    def url(self) -> str:
        """A seed URL (the first primary); cluster clients discover the rest."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        self.ids = [_bulk(command(node, "CLUSTER", "MYID")) for node in self.nodes]
        for n, (node, (first, last)) in enumerate(zip(self.primaries, self.slots, strict=True)):
            # Distinct epochs up front: no epoch-collision resolution round before state ok.
            command(node, "CLUSTER", "SET-CONFIG-EPOCH", str(n + 1))
            reply = command(node, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
            if reply != b"+OK\r\n":
                raise RuntimeError(f"ADDSLOTSRANGE failed: {reply!r}")
        for node, bus in zip(self.nodes[1:], self.buses[1:], strict=True):
            command(self.nodes[0], "CLUSTER", "MEET", node.host, str(node.port), str(bus))
        self.wait_until(self._all_know_each_other, timeout, "the cluster did not form")
        for n, replica in enumerate(self.replicas):
            primary = self.ids[n % self.primary_count]
            reply = command(replica, "CLUSTER", "REPLICATE", primary)
            if reply != b"+OK\r\n":
                raise RuntimeError(f"CLUSTER REPLICATE failed: {reply!r}")
        self.wait_until(self.is_ok, timeout, "the cluster did not reach cluster_state:ok")
        for replica in self.replicas:
            self.wait_until(
                lambda replica=replica: (
                    b"master_link_status:up" in command(replica, "INFO", "replication")
                ),
                timeout,
                "a replica did not sync",
            )

    def _all_know_each_other(self) -> bool:
        count = b"cluster_known_nodes:%d" % len(self.nodes)
        return all(count in command(node, "CLUSTER", "INFO") for node in self.running_nodes())

    def running_nodes(self) -> list[ValkeyProcess]:
        return [node for node in self.nodes if node.process is not None]

    def is_ok(self) -> bool:
        """Every running node says ``cluster_state:ok``."""
        try:
            return all(
                b"cluster_state:ok" in command(node, "CLUSTER", "INFO")
                for node in self.running_nodes()
            )
        except OSError:
            return False

    @staticmethod
    def wait_until(check: object, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():  # type: ignore[operator]  # any zero-argument predicate
            if time.monotonic() > deadline:
                raise RuntimeError(message)
            time.sleep(0.05)

    def owner(self, topic: str) -> int:
        """Index of the primary (as started) whose slot range holds ``topic``."""
        slot = key_slot(topic)
        return next(n for n, (first, last) in enumerate(self.slots) if first <= slot <= last)

    def topics_on(self, prefix: str, primary: int, count: int) -> list[str]:
        """``count`` topic names starting with ``prefix`` whose slots are on ``primary``."""
        names: list[str] = []
        n = 0
        while len(names) < count:
            name = f"{prefix}-{n}"
            if self.owner(name) == primary:
                names.append(name)
            n += 1
        return names

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``: a crash, no shutdown."""
        self.nodes[index].stop()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start node ``index`` again (same port, data dir, node id) and wait for state ok."""
        self.nodes[index].start()
        self.wait_until(self.is_ok, timeout, "the cluster did not recover")

    def role(self, index: int) -> str:
        reply = command(self.nodes[index], "INFO", "replication")
        return "primary" if b"role:master" in reply else "replica"

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> ValkeyCluster:
        # A port free when chosen can be taken by another process before the server binds it
        # (the machine is shared): start again on fresh ports, a few times.
        for attempt in range(3):
            try:
                self.start()
                return self
            except (RuntimeError, OSError):
                self.close()
                if attempt == 2:
                    raise
                self._build()
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
