"""The import rules of DESIGN.md, checked by walking the source with ast."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "sitepeek"
THIRD_PARTY = {"click", "gevent", "watchdog", "brotli", "zstandard", "segno", "pytest"}
# Which of our modules may import each third-party package (DESIGN.md "Modules").
ALLOWED = {
    "click": {"cli"},
    "watchdog": {"reload"},
    "gevent": {"workers.greenlets", "workers.processes"},
    "brotli": {"compression"},
    "zstandard": {"compression"},
    "segno": {"console"},
    "pytest": {"pytest_plugin"},
}


def _modules() -> dict[str, set[str]]:
    """Module name (relative to sitepeek) -> top-level names it imports."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Constant) and node.value in THIRD_PARTY:
                imported.add(node.value)  # importlib.import_module("brotli")
        found[name] = imported
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_third_party_packages_are_imported_only_where_designed(package: str) -> None:
    users = {name for name, imported in _modules().items() if package in imported}
    assert users <= ALLOWED[package], users - ALLOWED[package]


@pytest.mark.parametrize("module", ["http11", "resolver", "inject", "config", "representation"])
def test_protocol_and_path_modules_use_the_standard_library_only(module: str) -> None:
    assert not (_modules()[module] & THIRD_PARTY)


def test_threads_model_never_imports_gevent() -> None:
    code = (
        "import sys, pathlib\n"
        "from sitepeek import server, workers\n"
        "from sitepeek.config import Config\n"
        "from sitepeek.handler import Handler\n"
        "model = workers.load('threads')\n"
        "from sitepeek.workers.threads import ThreadIo\n"
        "Handler(Config(root=pathlib.Path('.'), reload=False), ThreadIo())\n"
        "assert 'gevent' not in sys.modules, sorted(m for m in sys.modules if 'gevent' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_importing_sitepeek_starts_and_patches_nothing() -> None:
    code = (
        "import socket, threading, sys\n"
        "before = threading.active_count()\n"
        "import sitepeek, sitepeek.cli\n"
        "assert threading.active_count() == before\n"
        "assert 'gevent' not in sys.modules\n"
        "assert socket.socket.__module__ == 'socket'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
