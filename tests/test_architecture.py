"""The import rules of DESIGN.md, checked by walking the source with ast.

``IMPORTS`` is the allowed graph of sitepeek's own modules: an import not in it fails,
an entry no module uses fails (the table stays true), and the graph must be acyclic.
Imports inside functions and under ``TYPE_CHECKING`` count: a cycle hidden in a
function is still a cycle.
"""

from __future__ import annotations

import ast
import re
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


# Module -> the sitepeek modules it may import ("sitepeek" is the package's __init__).
# Leaves first, then the layers above them (DESIGN.md "Modules").
IMPORTS: dict[str, set[str]] = {
    "version": set(),
    "_lifeline": set(),
    "build": {"changes", "commands", "reload", "snapshot"},
    "commands": {"changes"},
    "snapshot": set(),
    "sitepeek": {"api", "version"},
    "changes": set(),
    "concurrency": set(),
    "console": set(),
    "hosts": set(),
    "http11": set(),
    "inject": set(),
    "fingerprints": set(),
    "tabs": set(),
    "reload": {"console", "fingerprints"},
    "representation": set(),
    "routes": set(),
    "qvalues": set(),
    "certs": set(),
    "tls": {"concurrency"},
    "websocket": {"http11"},
    "rules": {"http11"},
    "resolver": {"http11", "qvalues", "representation"},
    "listing": {"console", "resolver"},
    "entities": {"inject", "representation"},
    "compression": {"entities", "http11", "qvalues", "representation"},
    "hotcache": {"compression", "entities", "http11", "responses", "rules"},
    "config": {"http11", "resolver", "routes"},
    "log": {"concurrency", "config", "console"},
    "responses": {"version", "http11", "representation"},
    "connections": {"concurrency", "entities", "hotcache", "http11", "responses"},
    "proxy": {"concurrency", "http11", "representation", "responses", "routes"},
    "livereload": {"version", "changes", "concurrency", "inject", "tabs", "websocket"},
    "plan": {"entities", "hotcache", "resolver", "routes"},
    "site": {
        "config",
        "console",
        "entities",
        "hosts",
        "hotcache",
        "http11",
        "inject",
        "listing",
        "livereload",
        "plan",
        "resolver",
        "responses",
        "routes",
        "rules",
    },
    "writer": {
        "compression",
        "concurrency",
        "connections",
        "entities",
        "hotcache",
        "http11",
        "inject",
        "representation",
        "resolver",
        "responses",
    },
    "parking": {"concurrency", "config", "connections", "hotcache", "http11", "log"},
    "handler": {
        "changes",
        "concurrency",
        "config",
        "connections",
        "entities",
        "hosts",
        "hotcache",
        "http11",
        "livereload",
        "log",
        "parking",
        "responder",
        "tls",
        "tlsport",
    },
    "responder": {
        "changes",
        "concurrency",
        "config",
        "console",
        "connections",
        "entities",
        "hotcache",
        "http11",
        "livereload",
        "log",
        "plan",
        "proxy",
        "responses",
        "site",
        "websocket",
        "writer",
    },
    "tlsport": {
        "concurrency",
        "connections",
        "entities",
        "hosts",
        "http11",
        "log",
        "site",
        "tls",
        "writer",
    },
    "workers.base": {"changes", "concurrency", "config", "console"},
    "workers": {"workers.base"},
    "workers.greenlets": {"changes", "config", "workers.base"},
    "workers.threads": {"changes", "config", "console", "workers.base"},
    "workers.processes": {
        "changes",
        "concurrency",
        "config",
        "console",
        "workers.base",
        "workers.greenlets",
    },
    "banner": {"config", "console", "site", "version"},
    "server": {
        "banner",
        "build",
        "changes",
        "concurrency",
        "config",
        "console",
        "handler",
        "reload",
        "certs",
        "commands",
        "snapshot",
        "workers",
        "workers.base",
    },
    "reloadclient": {"livereload", "websocket"},
    "api": {"config", "reloadclient"},
    "pytest_plugin": {"api"},
    "cli": {"version", "certs", "config", "server", "tls", "trust"},
    "trust": {"certs"},
    "__main__": {"cli"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "sitepeek"


def _own_imports() -> dict[str, set[str]]:
    """Module -> the sitepeek modules it imports, wherever the import statement is."""
    modules = {_module_name(path) for path in SRC.rglob("*.py")}
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if node.module == "sitepeek":
                    # "from sitepeek import proxy" imports a module; "__version__" the package.
                    names = [
                        f"sitepeek.{alias.name}" if alias.name in modules else "sitepeek"
                        for alias in node.names
                    ]
                else:
                    names = [node.module]
            for name in names:
                if name == "sitepeek":
                    imported.add("sitepeek")
                elif name.startswith("sitepeek."):
                    imported.add(name.removeprefix("sitepeek."))
        found[_module_name(path)] = imported
    return found


def test_every_module_is_in_the_import_table() -> None:
    assert set(_own_imports()) == set(IMPORTS)


@pytest.mark.parametrize("module", sorted(IMPORTS))
def test_imports_follow_the_table(module: str) -> None:
    imported = _own_imports()[module]
    assert imported - IMPORTS[module] == set(), f"{module}: imports not in IMPORTS"
    assert IMPORTS[module] - imported == set(), f"{module}: IMPORTS lists unused imports"


def test_the_import_graph_is_acyclic() -> None:
    graph = _own_imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            cycle = (*path[path.index(module) :], module)
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_the_cycle_check_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = {"config": {"proxy"}, "proxy": {"workers.base"}, "workers.base": {"config"}}
    monkeypatch.setattr(sys.modules[__name__], "_own_imports", lambda: graph)
    expected = re.escape("config -> proxy -> workers.base -> config")
    with pytest.raises(pytest.fail.Exception, match=expected):
        test_the_import_graph_is_acyclic()


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


@pytest.mark.parametrize(
    "module",
    [
        "http11",
        "resolver",
        "inject",
        "config",
        "representation",
        "routes",
        "concurrency",
        "qvalues",
    ],
)
def test_protocol_and_path_modules_use_the_standard_library_only(module: str) -> None:
    assert not (_modules()[module] & THIRD_PARTY)


# print() writes the text and its newline apart: with unbuffered output another thread's
# line can land between them and two lines become one. Only the server's start, before
# any thread, may call it; everything else writes whole lines (console.write_line).
PRINTS_ALLOWED = {"server"}


def test_print_is_called_only_before_threads_start() -> None:
    printing = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "print"
            ):
                printing.add(_module_name(path))
    assert printing <= PRINTS_ALLOWED


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
