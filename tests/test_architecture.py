"""The package map stays true: every name docs/architecture.md gives exists,
no module grows past 600 lines, and each layering contract in pyproject.toml
refuses a deliberate bad import (so that `make test`'s lint-imports means
something)."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
while not (ROOT / "pyproject.toml").exists():
    ROOT = ROOT.parent
DOC = ROOT / "docs" / "architecture.md"
# A dotted name in backticks: `ingestd.daemon.core.ingest.Ingest.receive_chunk`.
NAME = re.compile(r"`(ingestd(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`")
MAX_LINES = 600


def resolve(name: str) -> object:
    """The module or attribute `name` names; raises if there is none."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            found = getattr(found, attr)
        return found
    raise ModuleNotFoundError(name)


def test_every_name_in_the_architecture_page_exists():
    names = sorted(set(NAME.findall(DOC.read_text())))
    assert len(names) > 30  # the page names its modules and functions
    missing = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert missing == []


def test_no_module_is_over_600_lines():
    too_long = {
        str(path.relative_to(ROOT)): n
        for folder in ("daemon", "cas", "plugins")
        for path in (ROOT / folder).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}


# A bad import for each contract, in a file of the package it must not leave.
BAD_IMPORTS = {
    "daemon -> plugins -> cas, never back": ("cas/gc.py", "from ingestd.plugins import hookimpl"),
    "API modules do not import each other": ("daemon/http/v1_api.py", "from . import tus_api"),
    "outside cas, only its public surface (ingestd.cas)": (
        "daemon/core/limits.py",
        "from ingestd.cas import records",
    ),
    "daemon by role: cli -> serve -> http -> core, never back": (
        "daemon/core/limits.py",
        "from ..http import errors",
    ),
    "the core knows no HTTP": ("daemon/core/limits.py", "import quart"),
    "the client imports nothing of the server (a teammate's install needs none of it)": (
        "daemon/client/_output.py",
        "from ingestd.daemon.core import config",
    ),
}


def lint_imports(tree: Path) -> str:
    """lint-imports over a copy of the packages at `tree` (as `ingestd.*`)."""
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("lint-imports")),
            "--config",
            str(tree / "pyproject.toml"),
        ],
        cwd=tree,
        env={"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def copy_of_the_packages(tmp_path_factory) -> Path:
    if shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("lint-imports is not installed beside this Python")
    tree = tmp_path_factory.mktemp("layers")
    for folder in ("daemon", "cas", "plugins"):
        shutil.copytree(ROOT / folder, tree / "src" / "ingestd" / folder)
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_contracts_hold_and_each_refuses_a_bad_import(copy_of_the_packages: Path):
    tree = copy_of_the_packages
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    names = {c["name"] for c in contracts["contracts"]}
    assert names == set(BAD_IMPORTS), "every contract has its bad import here"
    clean = lint_imports(tree)
    assert f"Contracts: {len(names)} kept, 0 broken." in clean, clean
    for name, (module, line) in BAD_IMPORTS.items():
        path = tree / "src" / "ingestd" / module
        original = path.read_text()
        path.write_text(original + f"\n{line}  # noqa\n")
        try:
            out = lint_imports(tree)
        finally:
            path.write_text(original)
        broken = [row for row in out.splitlines() if row.endswith("BROKEN")]
        assert any(row.startswith(name) for row in broken), (name, out)


def test_the_cli_imports_what_a_command_needs_only_when_it_runs():
    # Start-up is measured in bench/ (≤ 0.15 s); this keeps its cause true:
    # building the parser (every command, --help, --version) imports none of
    # the heavy modules, and a client command does not load the daemon's.
    heavy = ["httpx", "trio", "lmdb", "quart", "hypercorn", "ingestd.cas", "importlib.metadata"]
    probe = (
        "import sys\n"
        "from ingestd.daemon import cli\n"
        "cli.build_parser()\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
        "from ingestd.daemon.client._commands import _import_for_the_cli\n"
        "_import_for_the_cli('ingestd.daemon.client._transfer_commands')\n"
        "print([m for m in ['trio', 'anyio', 'lmdb', 'quart', 'ingestd.cas', 'rich'] "
        "if m in sys.modules], 'httpx' in sys.modules, 'trio' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["[]", "[] True False"], out
