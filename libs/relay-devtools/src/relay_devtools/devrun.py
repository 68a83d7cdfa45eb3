"""``make run``: the whole relay on one machine — embedded Valkey, ingest and gateway.

``python -m relay_devtools.devrun [--only NAME[,NAME...]]`` checks that every port it needs is free
(one clear line and exit code 1 if not), then runs the processes under honcho, which prefixes
their output, stops all of them when one exits, and on Ctrl-C (SIGINT) or SIGTERM sends
SIGTERM to each process group and SIGKILL after 5 s to whatever is left.

Run it from the repository root (``make run`` does): Valkey starts from ``./valkey.conf`` with
its data in ``$RELAY_DATA_DIR/valkey`` (default ``.data/valkey``), so a second run replays the
AOF and sees every earlier message. Each service connects as its own ACL user, with the dev
password read from ``valkey.conf``.

Environment (besides the services' own ``RELAY_*`` settings, passed through):

=======================  ===========  ===================================================
variable                 default      meaning
=======================  ===========  ===================================================
``RELAY_VALKEY_PORT``    ``6379``     port of the embedded Valkey (loopback only)
``RELAY_INGEST_PORT``    ``8080``     ingest's port (the service's own setting)
``RELAY_GATEWAY_PORT``   ``8081``     gateway's port (the service's own setting)
``RELAY_DATA_DIR``       ``.data``    where Valkey keeps its AOF (``<dir>/valkey``)
``RELAY_SHUTDOWN_GRACE`` ``4s``       services' shutdown on Ctrl-C (below honcho's 5 s kill)
``RELAY_SHUTDOWN_DRAIN`` ``1s``       gateway's WebSocket drain window within that grace
=======================  ===========  ===================================================
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relay_devtools.embedded import port_is_free
from relaycore.settings import ConfigError, Settings
from relaycore.values import parse_port

__all__ = [
    "DevProcess",
    "DevRunConfig",
    "acl_password",
    "busy_ports",
    "main",
    "plan",
]

PROCESS_NAMES = ("valkey", "ingest", "gateway")
# honcho SIGKILLs what has not exited 5 s after SIGTERM: the dev services drain faster.
DEV_SHUTDOWN_GRACE = "4s"
DEV_SHUTDOWN_DRAIN = "1s"


@dataclass(frozen=True)
class DevRunConfig:
    """Where ``make run`` puts things, from the environment (see the module docstring)."""

    root: Path
    data_dir: Path
    valkey_port: int
    settings: Settings
    # Settings the dev stack sets for both services unless the environment already does.
    service_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], root: Path) -> DevRunConfig:
        settings = Settings.from_env(environ)
        raw_port = environ.get("RELAY_VALKEY_PORT", "6379")
        try:
            valkey_port = parse_port(raw_port)
        except ValueError as exc:
            raise ConfigError("RELAY_VALKEY_PORT", raw_port, str(exc)) from None
        data_dir = Path(environ.get("RELAY_DATA_DIR", ".data"))
        if not data_dir.is_absolute():
            data_dir = root / data_dir
        service_env = {}
        if "RELAY_SHUTDOWN_GRACE" not in environ:
            service_env["RELAY_SHUTDOWN_GRACE"] = DEV_SHUTDOWN_GRACE
            # The gateway's drain window must stay shorter than its grace.
            service_env["RELAY_SHUTDOWN_DRAIN"] = environ.get(
                "RELAY_SHUTDOWN_DRAIN", DEV_SHUTDOWN_DRAIN
            )
        return cls(root, data_dir, valkey_port, settings, service_env)

    @property
    def valkey_conf(self) -> Path:
        return self.root / "valkey.conf"

    def valkey_url(self, user: str) -> str:
        password = acl_password(self.valkey_conf, user)
        return f"valkey://{user}:{password}@127.0.0.1:{self.valkey_port}"


@dataclass(frozen=True)
class DevProcess:
    """One process of the dev stack: what to run, where it listens, what it is for users."""

    name: str
    command: Sequence[str]
    host: str
    port: int
    port_variable: str
    env: Mapping[str, str] = field(default_factory=dict)
    urls: Sequence[str] = ()


def acl_password(conf: Path, user: str) -> str:
    """The password of ``user`` in a valkey.conf ``user <name> ... >password`` line."""
    for line in conf.read_text().splitlines():
        words = line.split()
        if len(words) > 2 and words[0] == "user" and words[1] == user:
            for word in words[2:]:
                if word.startswith(">"):
                    return word[1:]
    raise ValueError(f"{conf} defines no password for the ACL user {user!r}")


def plan(config: DevRunConfig, names: Sequence[str] = PROCESS_NAMES) -> list[DevProcess]:
    """The processes to run, in start order: the data behind ``make run``."""
    unknown = [name for name in names if name not in PROCESS_NAMES]
    if unknown:
        raise ValueError(f"unknown process {unknown[0]!r}; choose from {', '.join(PROCESS_NAMES)}")
    bin_dir = Path(sys.executable).parent
    settings = config.settings
    valkey_dir = config.data_dir / "valkey"
    embedded = [sys.executable, "-m", "relay_devtools.embedded", "--conf", str(config.valkey_conf)]
    embedded += ["--port", str(config.valkey_port), "--dir", str(valkey_dir)]
    processes = []
    if "valkey" in names:
        processes.append(
            DevProcess(
                name="valkey",
                command=embedded,
                host="127.0.0.1",
                port=config.valkey_port,
                port_variable="RELAY_VALKEY_PORT",
                urls=[f"valkey://127.0.0.1:{config.valkey_port}  (data: {valkey_dir})"],
            )
        )
    if "ingest" in names:
        processes.append(
            DevProcess(
                name="ingest",
                command=[str(bin_dir / "relay-ingest")],
                host=settings.ingest_host,
                port=settings.ingest_port,
                port_variable="RELAY_INGEST_PORT",
                env={**config.service_env, "RELAY_VALKEY_URL": config.valkey_url("ingest")},
                urls=[f"http://localhost:{settings.ingest_port}"],
            )
        )
    if "gateway" in names:
        processes.append(
            DevProcess(
                name="gateway",
                command=[str(bin_dir / "relay-gateway")],
                host=settings.gateway_host,
                port=settings.gateway_port,
                port_variable="RELAY_GATEWAY_PORT",
                env={**config.service_env, "RELAY_VALKEY_URL": config.valkey_url("gateway")},
                urls=[
                    f"http://localhost:{settings.gateway_port}",
                    f"ws://localhost:{settings.gateway_port}/api/v1/ws",
                ],
            )
        )
    return processes


def busy_ports(processes: Sequence[DevProcess]) -> list[DevProcess]:
    return [p for p in processes if not port_is_free(p.host, p.port)]


def missing_programs(processes: Sequence[DevProcess]) -> list[DevProcess]:
    return [p for p in processes if not Path(p.command[0]).exists()]


def _fail(message: str) -> None:
    print(f"make run: {message}", file=sys.stderr)
    sys.exit(1)


def run(processes: Sequence[DevProcess], environ: Mapping[str, str]) -> int:
    """Run ``processes`` under honcho until Ctrl-C/SIGTERM or until one of them exits."""
    # honcho ships no type information; Manager/Printer are its documented programmatic API.
    from honcho.manager import Manager  # type: ignore[import-untyped]
    from honcho.printer import Printer  # type: ignore[import-untyped]

    manager = Manager(Printer(sys.stdout, colour=sys.stdout.isatty()))
    for process in processes:
        env = {**environ, **process.env, "PYTHONUNBUFFERED": "1"}
        # `exec` so the shell honcho starts is replaced by the program and signals reach it.
        manager.add_process(process.name, "exec " + shlex.join(process.command), env=env)
    print("Pulsar Relay (dev) — Ctrl-C stops everything", flush=True)
    for process in processes:
        for url in process.urls:
            print(f"  {process.name:<8} {url}", flush=True)
    manager.loop()
    code: int = manager.returncode or 0
    # 130/143: stopped on request (Ctrl-C / SIGTERM) and every process has exited.
    return 0 if code in (130, 143) else code


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m relay_devtools.devrun",
        description="Run embedded Valkey, ingest and gateway together (make run).",
    )
    parser.add_argument(
        "--only",
        default=",".join(PROCESS_NAMES),
        help="comma-separated subset of: " + ", ".join(PROCESS_NAMES),
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    try:
        config = DevRunConfig.from_env(os.environ, Path.cwd())
        if not config.valkey_conf.is_file():
            _fail(f"{config.valkey_conf} not found; run from the repository root")
        processes = plan(config, names)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
        return
    for process in missing_programs(processes):
        _fail(f"{process.command[0]} is not installed; run `make install`")
    for process in busy_ports(processes):
        _fail(
            f"port {process.port} ({process.name}) on {process.host} is already in use; "
            f"stop what holds it or set {process.port_variable}"
        )
    sys.exit(run(processes, os.environ))


if __name__ == "__main__":
    main()
