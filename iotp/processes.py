"""Running `iotp` commands as child processes: one launcher and one environment builder.

`iotp up`, the benchmarks and the tests all start iotp services this way and stop them the
same way: SIGTERM first so that a service finishes its batch and acknowledges what it
committed, SIGKILL only after a grace period. Each child runs in its own process group, so
that what it starts (Streamlit, a uvicorn worker) stops with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Self

STOP_GRACE_SECONDS = 15.0


class ProcessFailed(RuntimeError):
    """A child exited, or did not say what it was expected to say in time."""


def iotp_argv(*args: str) -> list[str]:
    """The command line of ``iotp ARGS`` with this interpreter (no console script needed)."""
    return [sys.executable, "-m", "cli", *args]


def iotp_environment(
    settings: Mapping[str, str | None] | None = None,
    *,
    inherit_settings: bool = True,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a child: ``base`` (os.environ) with IOTP_ settings applied.

    ``settings`` maps setting names (``database_url`` or ``IOTP_DATABASE_URL``) to values;
    None removes the setting so that the child uses its default. Without
    ``inherit_settings`` the child sees only the settings given here.
    """
    env = dict(os.environ if base is None else base)
    if not inherit_settings:
        env = {k: v for k, v in env.items() if not k.startswith("IOTP_")}
    for name, value in (settings or {}).items():
        key = name if name.startswith("IOTP_") else f"IOTP_{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class IotpProcess:
    """One `iotp` command in a child process, its output appended to a log file."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        *,
        name: str | None = None,
    ) -> None:
        self.args, self.env, self.log = list(args), dict(env), log
        self.name = name or " ".join(self.args[:1])
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> Self:
        """Start the command (again, after it exited); this run's output starts here."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        output: IO[bytes]
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter and our CLI
                iotp_argv(*self.args),
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit by itself; its exit code."""
        return self._started().wait(timeout=timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        """What this run of the command has written so far."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as handle:
            handle.seek(self._offset)
            return handle.read().decode("utf-8", "replace")

    def check(self) -> None:
        """Raise :class:`ProcessFailed` with the end of the log if the child has exited."""
        process = self._started()
        if process.poll() is not None:
            raise ProcessFailed(
                f"iotp {self.name} exited with {process.returncode}:\n{self.output()[-3000:]}"
            )

    def wait_for(self, text: str, timeout: float = 60.0, occurrences: int = 1) -> None:
        """Wait until this run has logged ``text`` (``occurrences`` times)."""
        deadline = time.monotonic() + timeout
        while self.output().count(text) < occurrences:
            self.check()
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"iotp {self.name} did not log {text!r} in {timeout:.0f}s:\n"
                    f"{self.output()[-3000:]}"
                )
            time.sleep(0.02)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's whole process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._started().pid, sig)

    def kill(self) -> int:
        """SIGKILL, as a crash would: nothing gets to finish."""
        self.signal(signal.SIGKILL)
        return self._started().wait(timeout=30)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code (None if never run)."""
        stop_all([self], grace)
        return self.returncode

    def _started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise ProcessFailed(f"iotp {self.name} was never started")
        return self.process


def stop_all(
    children: Iterable[IotpProcess], grace: float = STOP_GRACE_SECONDS
) -> list[IotpProcess]:
    """Stop every running child together: SIGTERM to all, SIGKILL to those left after grace.

    Returns the children that had to be killed, so that a caller can say which ignored SIGTERM.
    """
    running = [child for child in children if child.running()]
    for child in running:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    killed = []
    for child in running:
        process = child._started()
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.signal(signal.SIGKILL)
            process.wait()
            killed.append(child)
    return killed
