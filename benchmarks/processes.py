"""CPU and memory of the processes a benchmark involves, from /proc through psutil."""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil


@dataclass
class CpuMeter:
    """CPU seconds used by groups of processes between ``start()`` and ``stop()``."""

    groups: dict[str, list[psutil.Process]] = field(default_factory=dict)
    _start: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, processes: list[psutil.Process]) -> None:
        self.groups.setdefault(name, []).extend(processes)

    def _used(self, name: str) -> float:
        total = 0.0
        for process in self.groups[name]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    def start(self) -> None:
        self._start = {name: self._used(name) for name in self.groups}

    def stop(self, seconds: float) -> dict[str, float]:
        """Cores used by each group over the ``seconds`` since start()."""
        return {
            name: round((self._used(name) - self._start.get(name, 0.0)) / seconds, 2)
            for name in self.groups
        }


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
