"""The import rules of STYLE.md ("Layout"), checked by parsing every module.

A part imports the shared kernel and itself; the dashboard may also import read_models.
The kernel imports no part. Only the composition root (cli) knows every part: nothing else
imports cli, the dashboard or the simulator, and no part imports the local-only machinery
(local_platform) or the benchmarks. Tests import helpers from tests.support, never from a
conftest.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

KERNEL = "iotp"
PARTS = ("command_api", "ingest", "broker_identity", "read_models", "dashboard", "device_simulator")
# What each top-level package may import of the others (itself always).
MAY_IMPORT: dict[str, frozenset[str]] = {
    KERNEL: frozenset(),
    "command_api": frozenset({KERNEL}),
    "ingest": frozenset({KERNEL}),
    "broker_identity": frozenset({KERNEL}),
    "read_models": frozenset({KERNEL}),
    "device_simulator": frozenset({KERNEL}),
    "dashboard": frozenset({KERNEL, "read_models"}),
    # The alarm process is the command side's process manager: it queues its events in the
    # command side's outbox (command_api.outbox), in its own transaction.
    "alarms": frozenset({KERNEL, "command_api"}),
    # The notifier (`iotp notify`): webhook deliveries of the alarm events.
    "notifications": frozenset({KERNEL}),
    # Local-only machinery runs the services; the benchmarks run them on a local broker.
    "local_platform": frozenset(
        {KERNEL, "command_api", "ingest", "broker_identity", "read_models"}
    ),
    "benchmarks": frozenset({KERNEL, "command_api", "ingest", "read_models", "local_platform"}),
    # The composition root: the one place that knows every part.
    "cli": frozenset({KERNEL, *PARTS, "alarms", "notifications", "local_platform", "benchmarks"}),
}
PACKAGES = frozenset(MAY_IMPORT)


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import, wherever it stands (functions included)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def violations(root: Path, may_import: Mapping[str, frozenset[str]]) -> list[str]:
    """Every import of a package that the importing package may not import."""
    packages = set(may_import)
    found = []
    for package, allowed in sorted(may_import.items()):
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, module in imported_modules(tree):
                target = module.partition(".")[0]
                if target in packages and target != package and target not in allowed:
                    found.append(f"{path.relative_to(root)}:{line}: {package} imports {module}")
    return found


def test_every_package_imports_only_what_the_layout_allows() -> None:
    assert violations(ROOT, MAY_IMPORT) == []


def test_every_top_level_package_has_a_rule() -> None:
    """A new package must be placed in the layout before it can import anything."""
    found = {
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if path.parent.name != "tests" and not path.parent.name.startswith(".")
    }
    assert found == PACKAGES


def test_the_rules_say_what_style_md_says() -> None:
    assert MAY_IMPORT[KERNEL] == frozenset(), "the kernel imports no part"
    for package, allowed in MAY_IMPORT.items():
        if package != "cli":
            assert not allowed & {"cli", "dashboard", "device_simulator"}, package
    for part in PARTS:
        also = {"read_models"} if part == "dashboard" else set()
        assert MAY_IMPORT[part] == {KERNEL, *also}, "a part imports the kernel and itself"


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("iotp", "from ingest.service import run_ingest\n"),
        ("iotp", "def later() -> None:\n    import cli.app\n"),
        ("read_models", "from local_platform.broker import free_port\n"),
        ("ingest", "import benchmarks.ingest\n"),
        ("benchmarks", "from device_simulator import runner\n"),
        ("command_api", "from read_models import queries\n"),
    ],
)
def test_a_forbidden_import_is_found(tmp_path: Path, package: str, source: str) -> None:
    for name in MAY_IMPORT:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("from iotp import settings\n")
    (tmp_path / package / "added.py").write_text(source)
    (found,) = violations(tmp_path, MAY_IMPORT)
    assert found.startswith(f"{package}/added.py:")


def test_tests_import_no_conftest() -> None:
    """Shared helpers live in tests.support; fixtures come through pytest_plugins."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        for line, module in imported_modules(ast.parse(path.read_text())):
            if module.rpartition(".")[2] == "conftest" or module == "tests":
                found.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert found == []
