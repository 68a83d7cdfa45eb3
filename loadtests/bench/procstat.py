"""CPU time and resident memory of processes, read from /proc (Linux only, like the bench)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MACHINE", "CpuMeter", "children", "cpu_seconds", "machine_busy_seconds", "rss_kib"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by all threads of ``pid`` (0.0 once it is gone).

    From each thread's ``schedstat`` (nanoseconds of run time): ``/proc/<pid>/stat`` counts in
    10 ms ticks, which at a few thousand deliveries per step is several µs of error per
    delivery. Threads count (Valkey's I/O threads, GLIDE's Rust runtime). Falls back to
    ``stat`` where the kernel has no schedstat.
    """
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = os.listdir(task_dir)
    except OSError:
        return 0.0
    total_ns, read = 0, 0
    for task in tasks:
        try:
            total_ns += int((task_dir / task / "schedstat").read_text().split()[0])
            read += 1
        except (OSError, ValueError, IndexError):
            continue  # that thread exited meanwhile (or no schedstat: see below)
    return total_ns / 1e9 if read else _stat_cpu_seconds(pid)


def _stat_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Field 2 (comm) may contain spaces; everything after the last ')' is space-separated.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy (not idle, not waiting on I/O) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS


MACHINE = "_machine"


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def children(pid: int) -> list[int]:
    """Direct child pids of ``pid`` (e.g. nginx's worker under its master)."""
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


@dataclass
class CpuMeter:
    """CPU used by a set of processes between ``start()`` and ``stop()``, as % of one core.

    The result also holds ``MACHINE``: every process on the machine, so what the bench did not
    start (other jobs sharing the cores) shows up as the difference.
    """

    pids: dict[str, int]
    _start_cpu: dict[str, float] | None = None
    _start_wall: float = 0.0

    def start(self) -> None:
        self._start_cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._start_cpu[MACHINE] = machine_busy_seconds()
        self._start_wall = time.monotonic()

    def seconds(self) -> dict[str, float]:
        """CPU seconds each process used since ``start()`` (the meter keeps running)."""
        assert self._start_cpu is not None, "start() first"
        return {name: cpu_seconds(pid) - self._start_cpu[name] for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        assert self._start_cpu is not None, "start() first"
        wall = max(time.monotonic() - self._start_wall, 1e-9)
        used = {
            name: 100.0 * (cpu_seconds(pid) - self._start_cpu[name]) / wall
            for name, pid in self.pids.items()
        }
        used[MACHINE] = 100.0 * (machine_busy_seconds() - self._start_cpu[MACHINE]) / wall
        return used
