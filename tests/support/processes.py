"""iotp commands as a test runs them, through the one launcher (iotp.processes)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from iotp.processes import IotpProcess, iotp_argv, stop_all

READY_SECONDS = 30.0
STOP_GRACE_SECONDS = 20.0


class ServiceProcess(IotpProcess):
    """An iotp service under test: started means ready, and it must stop on SIGTERM.

    ``ready`` is what the service logs once it serves (None: do not wait). A service that
    needs SIGKILL to stop fails the test: stopping cleanly is part of what is tested.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        *,
        ready: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(args, env, log, name=name)
        self.ready = ready

    def start(self) -> Self:
        super().start()
        if self.ready is not None:
            self.wait_for(self.ready, timeout=READY_SECONDS)
        return self

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        if stop_all([self], grace):
            raise AssertionError(f"iotp {self.name} ignored SIGTERM:\n{self.output()[-3000:]}")
        return self.returncode


def run_iotp(
    *args: str, env: Mapping[str, str], timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``iotp ARGS`` (given ``stdin``) to its end; its exit code and output, checked by
    the caller."""
    return subprocess.run(
        iotp_argv(*args),
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
