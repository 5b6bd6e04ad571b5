"""TimescaleDB in PGlite (WASM) for the tests of this directory.

A TimescaleDB server cannot be installed on our machines; PGlite compiled with the
extension can, through npm (`.ci/run` installs it). It serves one connection at a time
and has no COPY.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_platform.broker import free_port

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def timescale_url() -> Iterator[str]:
    node = shutil.which("node")
    if node is None or not (HERE / "node_modules").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must run the TimescaleDB tests: npm ci --prefix tests/timescale")
        pytest.skip("run `npm ci --prefix tests/timescale` to test the TimescaleDB migrations")
    port = free_port()
    server = subprocess.Popen(
        [node, str(HERE / "server.mjs"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("READY"), line
    yield f"postgresql://postgres:postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    server.terminate()
    server.wait(timeout=20)
