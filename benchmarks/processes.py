"""CPU and memory of the processes a benchmark involves, from /proc through psutil."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

import psutil


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class CpuMeter:
    """CPU seconds used by groups of processes between ``start()`` and ``stop()``.

    A group is fixed processes, or every process with given names: those are looked up
    again at the end, so that a server's per-connection processes started meanwhile (one
    PostgreSQL backend per client) count in full.
    """

    groups: dict[str, list[psutil.Process]] = field(default_factory=dict)
    named: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine_start: tuple[float, float] = (0.0, 0.0)

    def add(self, name: str, processes: list[psutil.Process]) -> None:
        self.groups.setdefault(name, []).extend(processes)

    def add_named(self, name: str, *process_names: str) -> None:
        self.named[name] = process_names

    def _processes(self, name: str) -> list[psutil.Process]:
        if name in self.named:
            return by_name(*self.named[name])
        return self.groups[name]

    def start(self) -> None:
        self._start = {
            name: {p.pid: _cpu(p) for p in self._processes(name)}
            for name in (*self.groups, *self.named)
        }
        self._machine_start = _machine_cpu()

    def machine(self, seconds: float, digits: int = 2) -> MachineCpu:
        """The whole machine's cores over the ``seconds`` since start(): every process, the
        bench's own and the publishers' included, so a run's figures can be set against
        what the machine had to give."""
        busy, steal = _machine_cpu()
        return MachineCpu(
            cores=psutil.cpu_count() or 1,
            busy=round((busy - self._machine_start[0]) / seconds, digits),
            steal=round((steal - self._machine_start[1]) / seconds, digits),
        )

    def stop(self, seconds: float, digits: int = 2) -> dict[str, float]:
        """Cores used by each group over the ``seconds`` since start(), to ``digits``."""
        used: dict[str, float] = {}
        for name, before in self._start.items():
            total = 0.0
            for process in self._processes(name):
                total += _cpu(process) - before.get(process.pid, 0.0)
            used[name] = round(total / seconds, digits)
        return used


@dataclass(frozen=True)
class MachineCpu:
    """Cores of the machine in use over a run: ``busy`` (user, system, interrupts, any
    process) and ``steal`` (taken by the hypervisor for other guests), of ``cores``."""

    cores: int
    busy: float
    steal: float


def _machine_cpu() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot."""
    times = psutil.cpu_times()
    steal = getattr(times, "steal", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle - steal - _guest(times), steal


def _guest(times: Any) -> float:
    # Linux counts guest time inside user time as well: counted once.
    return getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)


def by_name(*names: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in names:
            found.append(process)
    return found


def peak_rss_mb(process: psutil.Process) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    try:
        with open(f"/proc/{process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(process.memory_info().rss / 2**20, 1)


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def reap(process: subprocess.Popen[Any]) -> float:
    """Wait for ``process`` to exit; its CPU seconds, which psutil cannot read after the exit.

    os.wait4 reaps the child itself, so its exit code is handed to ``process``: Popen's own
    poll() and wait() then answer from it instead of waiting for a child that is gone.
    """
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime
