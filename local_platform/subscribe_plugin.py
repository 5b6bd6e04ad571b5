"""The broker's SUBSCRIBE check: builds local_platform/iotp_subscribe_acl.c for our Mosquitto.

Mosquitto 2.0's ACL file grants every SUBSCRIBE (docs/security.md), so the broker that
`iotp up` and the tests run loads this plugin: a device may subscribe only inside
devices/<its id>/, and never to ingest's shared subscription.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

PLUGIN_SOURCE = "iotp_subscribe_acl.c"
PLUGIN_NAME = "iotp_subscribe_acl.so"


class PluginBuildError(RuntimeError):
    """No C compiler, or the plugin did not compile."""


def build_subscribe_plugin(directory: Path) -> Path:
    """Compile the plugin into ``directory`` (once per source change); its path."""
    source = resources.files("local_platform").joinpath(PLUGIN_SOURCE).read_text(encoding="utf-8")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / PLUGIN_NAME
    copy = directory / PLUGIN_SOURCE
    if target.exists() and copy.exists() and copy.read_text(encoding="utf-8") == source:
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise PluginBuildError(
            "a C compiler (cc) is needed to build the broker's SUBSCRIBE check"
            " (Debian: apt-get install gcc)"
        )
    copy.write_text(source, encoding="utf-8")
    built = subprocess.run(  # noqa: S603 - our own source, a compiler from PATH
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(target), str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        target.unlink(missing_ok=True)
        raise PluginBuildError(f"{PLUGIN_SOURCE} did not compile: {built.stderr.strip()}")
    return target
