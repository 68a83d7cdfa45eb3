"""uvicorn's multi-process supervisor, with worker processes that run a server of our making.

With ``workers`` > 1, uvicorn's supervisor (``uvicorn.supervisors.Multiprocess``) binds the
socket, starts the workers and, on SIGTERM, signals every worker at once; each worker runs
uvicorn's plain ``Server``. A service whose shutdown is staged (the gateway spreads its 1012
closes over a drain window) needs its own ``Server`` subclass in every worker, and uvicorn has
no option for that. :class:`Supervisor` is uvicorn's, except that its workers are
:class:`ServerWorker` processes that run ``build_server()``:

- ``Process.target`` is what runs in the spawned child; it starts a health-check thread and then
  runs ``Process.server``, which uvicorn builds lazily. :class:`ServerWorker` builds its server
  *before* that, so the thread never builds a second, plain one.
- ``Multiprocess`` creates its ``Process`` objects by name in four methods
  (:data:`SPAWNING_METHODS`); :class:`Supervisor` overrides exactly those with the same steps,
  creating :class:`ServerWorker` instead. The internals check
  (:mod:`relaycore.uvicorn_ext.internals`) asserts that these four are still the only methods
  that create processes, and ``libs/relaycore/tests/test_uvicorn_ext.py`` pins the uvicorn
  minor version these copies were made from.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process, logger

__all__ = ["SPAWNING_METHODS", "ServerWorker", "Supervisor"]

SPAWNING_METHODS = ("init_processes", "keep_subprocess_alive", "restart_all", "handle_ttin")
"""The ``Multiprocess`` methods that create worker processes (see the module docstring)."""

BuildServer = Callable[[], uvicorn.Server]


class ServerWorker(Process):
    """A uvicorn worker process whose server is ``build_server()``, called in the child.

    ``build_server`` must be a module-level function: spawned children receive it pickled.
    """

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], build_server: BuildServer
    ) -> None:
        self.build_server = build_server
        super().__init__(config, sockets)

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        self._server = self.build_server()
        super().target(sockets)


class Supervisor(Multiprocess):
    """uvicorn's supervisor, with :class:`ServerWorker` processes.

    Each override repeats uvicorn 0.54's method step for step, with ``ServerWorker`` where
    uvicorn writes ``Process``.
    """

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], build_server: BuildServer
    ) -> None:
        super().__init__(config, sockets)
        self.build_server = build_server

    def _worker(self) -> ServerWorker:
        return ServerWorker(self.config, self.sockets, self.build_server)

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            process = self._worker()
            process.start()
            self.processes.append(process)

    def restart_all(self) -> None:
        for idx, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new_process = self._worker()
            new_process.start()
            ready = new_process.wait_until_ready(
                self.config.timeout_worker_healthcheck, self.should_exit
            )
            if not ready:
                new_process.kill()
                new_process.join()
                if not self.should_exit.is_set():
                    logger.error(
                        f"New child process [{new_process.pid}] was not ready in time; "
                        f"keeping worker [{old_process.pid}] and aborting the restart."
                    )
                return
            old_process.terminate()
            old_process.join()
            self.processes[idx] = new_process

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error(
                    f"Child process [{process.pid}] failed to start, stopping the parent process."
                )
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            replacement = self._worker()
            replacement.start()
            self.processes[idx] = replacement

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        process = self._worker()
        process.start()
        self.processes.append(process)
