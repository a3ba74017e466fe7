"""Shell completion in the real shells (bash, zsh, fish) with the oldest and the newest
click that pyproject.toml allows, each installed in its own virtual environment.

bash and zsh run interactively on a pseudo-terminal and get Tab keystrokes; fish answers
``complete -C``. Every completion word also exists as a program on PATH that records
being run: completing must never execute a word (click 8.4.0's fish script did).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
COMPLETIONS = {"bash": "sitepeek.bash", "zsh": "_sitepeek", "fish": "sitepeek.fish"}
# Words sitepeek may answer, and the field names of click's own answer formats: none
# of them may ever run.
TRAPS = (
    "serve", "config", "completion", "https", "greenlets", "threads", "processes", "text",
    "json", "plain", "dir", "file", "_",
)  # fmt: skip
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78M])|\r|\x07")
TIMEOUT = 20.0

pytestmark = pytest.mark.timeout(120)


def click_requirement() -> str:
    """The click requirement of pyproject.toml, e.g. ``click>=8.1``."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (requirement,) = [d for d in project["dependencies"] if d.startswith("click")]
    return str(requirement).replace(" ", "")


def oldest_allowed() -> str:
    match = re.fullmatch(r"click>=([\d.]+)(,.*)?", click_requirement())
    assert match, f"the test reads a lower bound from {click_requirement()!r}"
    return f"click=={match.group(1)}"


# The oldest click allowed, and the newest release the index has within the range.
CLICKS = {"oldest": oldest_allowed(), "newest": click_requirement()}


@pytest.fixture(scope="session", params=sorted(CLICKS))
def click_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment (over the shared site-packages) with only click replaced."""
    venv = tmp_path_factory.mktemp(f"click-{request.param}")
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv],
        check=True,
    )
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "install", "--quiet", "--upgrade", "--ignore-installed", "--no-deps",
         CLICKS[str(request.param)]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"pip: {CLICKS[str(request.param)]}: {done.stderr}"
    return python


def click_version(python: Path) -> str:
    return subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('click'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def home(tmp_path: Path, click_python: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A working directory and environment: ``sitepeek`` runs this checkout with the
    venv's click, and every trap word is a program that logs being run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "ran.log"
    for word in TRAPS:
        trap = bin_dir / word
        trap.write_text(f"#!/bin/sh\necho {word} >> {ran}\n")
        trap.chmod(0o755)
    launcher = bin_dir / "sitepeek"
    launcher.write_text(f'#!/bin/sh\nexec {click_python} -m sitepeek "$@"\n')
    launcher.chmod(0o755)
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "srcdir").mkdir()
    (cwd / "srcfile.txt").write_text("not a directory\n")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(SRC),
        "HOME": str(tmp_path),
        "TERM": "xterm",
        "LANG": "C.UTF-8",
    }
    yield cwd, env
    assert not ran.exists(), f"completion ran programs: {ran.read_text()}"


def shell_path(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (apt-get install bash zsh fish)"
    return path


class PtyShell:
    """An interactive shell on a pseudo-terminal, driven by keystrokes."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self.pending = ""
        self.syncs = 0

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, pattern: str) -> str:
        """Read until the output since the last match (escapes removed) matches."""
        deadline = time.monotonic() + TIMEOUT
        while not (match := re.search(pattern, ANSI.sub("", self.pending))):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {ANSI.sub('', self.pending)!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.pending += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the shell exited
                    raise AssertionError(f"shell gone; output {self.pending!r}") from None
        seen = ANSI.sub("", self.pending)
        self.pending = seen[match.end() :]
        return seen[: match.end()]

    def sync(self) -> None:
        """Clear the line, run a command and wait for its output: what came before
        has been handled."""
        self.syncs += 1
        self.send(f"\x15printf 'SYNC%s\\n' {self.syncs}\r")
        self.expect(rf"(?m)^SYNC{self.syncs}\n")

    def close(self) -> None:
        self.send("\x15exit\r")
        try:
            self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)


def interactive(shell: str, cwd: Path, env: dict[str, str]) -> PtyShell:
    """bash or zsh with no user configuration, loading the script as the README says."""
    rc = cwd.parent / f"{shell}rc"
    if shell == "bash":
        rc.write_text('PS1="$ "\neval "$(sitepeek completion bash)"\n')
        argv = [shell_path("bash"), "--noprofile", "--rcfile", str(rc), "-i"]
    else:
        zdotdir = cwd.parent / "zdotdir"
        zdotdir.mkdir()
        (zdotdir / ".zshrc").write_text(
            "PS1='$ '\nautoload -Uz compinit && compinit -u -D\n"
            'eval "$(sitepeek completion zsh)"\n'
        )
        env = {**env, "ZDOTDIR": str(zdotdir)}
        argv = [shell_path("zsh"), "-i"]
    return PtyShell(argv, env, cwd)


def test_the_committed_scripts_are_what_sitepeek_prints(
    click_python: Path, home: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = home
    for shell, name in COMPLETIONS.items():
        done = subprocess.run(
            ["sitepeek", "completion", shell], cwd=cwd, env={**os.environ, **env},
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        committed = (REPO / "completions" / name).read_text()
        assert done.stdout == committed, f"{name} differs with click {click_version(click_python)}"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_tab_in_an_interactive_shell(shell: str, home: tuple[Path, dict[str, str]]) -> None:
    cwd, env = home
    tab = "\t\t" if shell == "bash" else "\t"  # bash lists on the second Tab
    sh = interactive(shell, cwd, env)
    try:
        sh.sync()
        sh.send("sitepeek " + tab)
        for command in ("completion", "config", "https", "serve"):
            sh.expect(rf"\b{command}\b")
        sh.sync()
        sh.send("sitepeek s\t")
        sh.expect(r"sitepeek serve ")
        sh.sync()
        sh.send("sitepeek --workers " + tab)
        sh.expect(r"greenlets +threads +processes")
        sh.sync()
        sh.send("sitepeek --log-format j\t")
        sh.expect(r"sitepeek --log-format json ")
        sh.sync()
        sh.send("sitepeek --wo\t")
        sh.expect(r"sitepeek --workers ")
        sh.sync()
        sh.send("sitepeek serve src\t")  # a directory, never the file next to it
        sh.expect(r"sitepeek serve srcdir/")
        sh.sync()
    finally:
        sh.close()


def test_fish_completes(home: tuple[Path, dict[str, str]]) -> None:
    cwd, env = home
    lines = [
        "sitepeek completion fish | source",
        "complete -C 'sitepeek '",
        "echo SEP",
        "complete -C 'sitepeek s'",
        "echo SEP",
        "complete -C 'sitepeek --workers '",
        "echo SEP",
        "complete -C 'sitepeek --log-format j'",
        "echo SEP",
        "complete -C 'sitepeek serve src'",
    ]
    done = subprocess.run(
        [shell_path("fish"), "--no-config", "-c", "\n".join(lines)], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    answers = [
        [line.split("\t")[0] for line in block.strip("\n").splitlines()]
        for block in done.stdout.split("SEP\n")
    ]
    assert answers == [
        ["completion", "config", "https", "serve"],
        ["serve"],
        ["greenlets", "processes", "threads"],  # fish sorts
        ["json"],
        ["srcdir/"],
    ]
