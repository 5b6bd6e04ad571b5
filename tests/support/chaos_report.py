"""Prints the chaos suite's scenario table at the end of the run (a tests/conftest.py plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos import RESULTS, results_table

ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "chaos.md"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    table = results_table()
    terminalreporter.write_sep("=", "chaos scenarios")
    terminalreporter.write_line(table)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(table + "\n")
