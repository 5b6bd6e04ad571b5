"""Mosquitto's password and ACL files on disk, replaced atomically, and the broker's reload.

The ACL file is written first and the password file last: the password file carries the
stream position, so its rename is the commit point. A crash between the two leaves an ACL
block for a user the password file does not have yet, which grants nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from broker_identity.accounts import (
    BrokerState,
    parse_acl_file,
    parse_password_file,
    render_acl_file,
    render_password_file,
    with_topics,
)

logger = logging.getLogger(__name__)

# Mosquitto drops root for its own user before it reads these files: they must be readable
# by it. They hold hashes only, never a password.
FILE_MODE = 0o644


@dataclass(frozen=True)
class BrokerFiles:
    password_file: Path
    acl_file: Path
    pid_file: Path | None = None  # set: the broker is sent SIGHUP after each change

    def load(self) -> BrokerState:
        """The state recorded in the password file (empty when there is none yet)."""
        try:
            state = parse_password_file(self.password_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return BrokerState()
        try:
            granted = parse_acl_file(self.acl_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            granted = {}
        return with_topics(state, granted)

    def write(self, state: BrokerState) -> None:
        """Replace both files with the state, each by one rename."""
        _replace(self.acl_file, render_acl_file(state))
        _replace(self.password_file, render_password_file(state))

    def reload_broker(self) -> bool:
        """Ask the broker to re-read the files (SIGHUP); False when it could not be asked."""
        if self.pid_file is None:
            return False
        try:
            pid = int(self.pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, IndexError) as exc:
            logger.error("cannot reload the broker (pid file %s): %s", self.pid_file, exc)
            return False
        return True


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
