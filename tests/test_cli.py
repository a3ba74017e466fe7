"""The command line: options from one table, config files, the environment, precedence,
errors and exit statuses, completion scripts, the banner and the summary line."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conftest import H11Client, start_server
from pki import write_pair
from sitepeek import __version__, cli, console, server
from sitepeek import banner as banners
from sitepeek.config import OPTIONS, Config

REPO = Path(__file__).resolve().parent.parent
COMPLETIONS = {"bash": "sitepeek.bash", "zsh": "_sitepeek", "fish": "sitepeek.fish"}
SITEPEEK_VARS = [name for name in os.environ if name.startswith("SITEPEEK_")]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No SITEPEEK_* from the developer's shell, no config file of the checkout."""
    for name in SITEPEEK_VARS:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<p>hi</p>\n")
    (root / "app.html").write_text("<p>app</p>\n")  # a --spa fallback
    return root


class Captured:
    """Stands in for server.serve: records the Config instead of serving."""

    def __init__(self) -> None:
        self.configs: list[Config] = []

    def __call__(self, config: Config, out: object = None) -> None:
        self.configs.append(config)

    @property
    def config(self) -> Config:
        (only,) = self.configs
        return only


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    fake = Captured()
    monkeypatch.setattr(server, "serve", fake)
    return fake


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.cli, list(args), env=env, prog_name="sitepeek")


# -- every option ------------------------------------------------------------------------
OPTION_CASES: list[tuple[list[str], dict[str, Any]]] = [
    (["--host", "0.0.0.0"], {"host": "0.0.0.0"}),
    (["-p", "9001"], {"port": 9001}),
    (["--port", "0"], {"port": 0}),
    (["--strict-port"], {"strict_port": True}),
    (["--workers", "threads"], {"workers": "threads"}),
    (["--workers", "processes", "--processes", "3"], {"workers": "processes", "processes": 3}),
    (["--workers", "threads", "--threads", "5"], {"workers": "threads", "threads": 5}),
    (["--max-connections", "7"], {"max_connections": 7}),
    (["--keepalive-timeout", "1.5"], {"keepalive_timeout": 1.5}),
    (["--header-timeout", "2"], {"header_timeout": 2.0}),
    (["--send-timeout", "7.5"], {"send_timeout": 7.5}),
    (["--no-compress"], {"compress": False}),
    (["--compress"], {"compress": True}),
    (["--no-reload"], {"reload": False}),
    (["--reload-delay", "250"], {"reload_delay": 0.25}),
    (["--ignore", "*.tmp", "--ignore", "dist/*"], {"ignore": ("*.tmp", "dist/*")}),
    (["--poll"], {"poll": True}),
    (["--open"], {"open": "/"}),
    (["--open", "/docs/"], {"open": "/docs/"}),
    (["--open=/a b/"], {"open": "/a b/"}),
    (["--qr"], {"qr": True}),
    (["-q"], {"quiet": True}),
    (["--quiet"], {"quiet": True}),
    (["--log-format", "json"], {"log_format": "json"}),
    (["--spa"], {"spa": "index.html"}),
    (["--spa", "app.html"], {"spa": "app.html"}),
    (["--no-clean-urls"], {"clean_urls": False}),
    (["--no-listing"], {"listing": False}),
    (["--no-rules"], {"rules": False}),
    (["--base", "repo"], {"base": "/repo/"}),
    (["--base", "/docs/v2"], {"base": "/docs/v2/"}),
    (["--cors"], {"cors": True}),
    (
        ["--header", "X-Frame-Options: DENY", "--header", "X-A:b"],
        {"header": (("X-Frame-Options", "DENY"), ("X-A", "b"))},
    ),
    (["--proxy", "/api=http://127.0.0.1:3000"], {"proxy": ("/api=http://127.0.0.1:3000",)}),
    (["--allowed-host", "dev.test"], {"allowed_host": ("dev.test",)}),
    (["--build", "mkdocs build -q"], {"build": "mkdocs build -q"}),
    (["--run", "tsc --watch", "--run", "npm start"], {"run": ("tsc --watch", "npm start")}),
    (["--https"], {"https": True}),
    # (relative to the test's directory, where a certificate pair is written)
    (
        ["--cert", "cert.pem", "--key", "key.pem"],
        {"cert": Path("cert.pem"), "key": Path("key.pem")},
    ),
]


def test_defaults(captured: Captured, site: Path) -> None:
    assert invoke("serve", str(site)).exit_code == 0
    assert captured.config == Config(root=site.resolve())


@pytest.mark.parametrize(("args", "expected"), OPTION_CASES, ids=str)
@pytest.mark.parametrize("where", ["after", "before"])
def test_every_option_reaches_the_config(
    captured: Captured, site: Path, args: list[str], expected: dict[str, Any], where: str
) -> None:
    if where == "before" and args == ["--open"]:
        args = ["--open=/"]  # a bare --open would take "serve" for its PATH (see below)
    if where == "before" and args == ["--spa"]:
        args = ["--spa=index.html"]  # likewise
    argv = ["serve", str(site), *args] if where == "after" else [*args, "serve", str(site)]
    if "--cert" in args:
        write_pair(Path.cwd())
        expected = {name: Path.cwd() / value for name, value in expected.items()}
    result = invoke(*argv)
    assert result.exit_code == 0, result.output
    assert captured.config == replace(Config(root=site.resolve()), **expected)


def test_every_option_of_the_table_is_covered() -> None:
    flags = {arg for args, _ in OPTION_CASES for arg in args if arg.startswith("-")}
    for option in OPTIONS:
        if option.name == "watch":
            continue  # test_watch
        spellings = (option.flag, option.short, f"--no-{option.key}")
        assert any(f.split("=")[0] in spellings for f in flags), option.name
        assert option.name in {f.name for f in fields(Config)}


def test_watch(captured: Captured, site: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    assert invoke("serve", str(site), "--watch", "src", "--watch", str(site)).exit_code == 0
    assert captured.config.watch == ((tmp_path / "src").resolve(), site.resolve())


def test_plain_sitepeek_serves_the_current_directory(captured: Captured, tmp_path: Path) -> None:
    assert invoke("--port", "1234").exit_code == 0
    assert captured.config.root == tmp_path.resolve()
    assert captured.config.port == 1234


def test_an_option_after_serve_wins_over_the_same_before(captured: Captured, site: Path) -> None:
    result = invoke("--port", "1", "--ignore", "a", "serve", str(site), "--port", "2")
    assert result.exit_code == 0
    assert (captured.config.port, captured.config.ignore) == (2, ("a",))


# -- usage errors: one Usage line, exit status 2 ------------------------------------------
USAGE_ERRORS = [
    (["serve", "missing"], "Directory 'missing' does not exist."),
    (["serve", "file.txt"], "Directory 'file.txt' is a file."),
    (["--port", "70000"], "Invalid value for '--port' / '-p': 70000 is not in the range 0-65535"),
    (["--port", "http"], "Invalid value for '--port' / '-p': 'http' is not an integer"),
    (["-p", "-1"], "-1 is not in the range 0-65535"),
    (
        ["--workers", "fibers"],
        "Invalid value for '--workers': 'fibers' is not one of greenlets, threads, processes",
    ),
    (["--processes", "0"], "Invalid value for '--processes': 0 is less than the minimum of 1"),
    (["--threads", "0"], "Invalid value for '--threads': 0 is less than the minimum of 1"),
    (["--threads", "many"], "Invalid value for '--threads': 'many' is not an integer"),
    (["--threads", "-3"], "Invalid value for '--threads': -3 is less than the minimum of 1"),
    (["--max-connections", "0"], "0 is less than the minimum of 1"),
    (["--keepalive-timeout", "0.01"], "0.01 is less than the minimum of 0.1"),
    (["--header-timeout", "soon"], "'soon' is not a number"),
    (["--reload-delay", "-5"], "-5 is less than the minimum of 0"),
    (["--watch", "nowhere"], "Invalid value for '--watch': path 'nowhere' does not exist"),
    (["--open", "docs"], "'docs' is not a URL path: start it with /"),
    (["--open", "serve"], "'serve' is not a URL path: start it with / (or write --open=/ or put"),
    (["--log-format", "xml"], "'xml' is not one of text, json"),
    (["--header", "Bad"], "'Bad' is not a header field: write 'Name: value'"),
    (["--header", "Content-Length: 5"], "Content-Length is set by sitepeek itself"),
    (["--proxy", "/api=https://x"], "https:// backends are not supported"),
    (["--proxy", "api"], "expected PREFIX=URL, for example /api=http://127.0.0.1:8000"),
    (["--base", "/a%20b/"], "not a valid base path: '/a%20b/'"),
    (["--spa=../x"], "'../x' is not a file name inside the site"),
    (["--build", " "], "Invalid value for '--build': the command is empty"),
    (["--run", ""], "Invalid value for '--run': the command is empty"),
    (["--no-such-option"], "--no-such-option"),  # click words it differently by version
    (["serve", "--bogus"], "--bogus"),
    (["completion", "tcsh"], "Invalid value for '{bash|zsh|fish}': 'tcsh' is not one of"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS, ids=str)
def test_usage_errors(captured: Captured, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    result = invoke(*args)
    assert result.exit_code == 2
    assert "Usage: sitepeek" in result.output
    assert message in result.output
    assert captured.configs == []


# -- config files -----------------------------------------------------------------------
def test_sitepeek_toml(captured: Captured, tmp_path: Path, site: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "sitepeek.toml").write_text(
        'port = 9100\nworkers = "threads"\nmax-connections = 50\nkeepalive_timeout = 2\n'
        'reload = false\nwatch = ["src"]\nignore = "*.log"\nopen = true\nlog-format = "json"\n'
    )
    assert invoke("serve", str(site)).exit_code == 0
    assert captured.config == replace(
        Config(root=site.resolve()),
        port=9100,
        workers="threads",
        max_connections=50,
        keepalive_timeout=2.0,
        reload=False,
        watch=((tmp_path / "src").resolve(),),
        ignore=("*.log",),
        open="/",
        log_format="json",
    )


def test_build_and_run_in_config_files(captured: Captured, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.sitepeek]\nbuild = "make html"\nrun = ["tsc -w", "npm start"]\n'
    )
    assert invoke("serve", "missing/site").exit_code == 0
    assert captured.config.build == "make html"
    assert captured.config.run == ("tsc -w", "npm start")
    # The directory a build fills is created for it; without --build it must exist.
    assert (tmp_path / "missing" / "site").is_dir()
    result = invoke("serve", "other", "--build", "")
    assert result.exit_code == 2
    assert not (tmp_path / "other").exists()
    (tmp_path / "sitepeek.toml").write_text("build = ''\n")
    result = invoke()
    assert result.exit_code == 2
    assert "sitepeek.toml: key 'build': the command is empty" in result.output


def test_pyproject_tool_table(captured: Captured, tmp_path: Path, site: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.sitepeek]\nport = 9200\nstrict-port = true\n'
    )
    assert invoke("serve", str(site)).exit_code == 0
    assert (captured.config.port, captured.config.strict_port) == (9200, True)


def test_pyproject_without_our_table_is_ignored(captured: Captured, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    assert invoke().exit_code == 0
    assert captured.config.port == 8000


def test_sitepeek_toml_wins_over_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.sitepeek]\nport = 1\nhost = '::'\n")
    (tmp_path / "sitepeek.toml").write_text("port = 2\n")
    result = invoke("config")
    assert result.exit_code == 0
    assert re.search(r"^port = 2 +# sitepeek.toml$", result.output, re.M)
    assert re.search(r'^host = "127.0.0.1" +# default$', result.output, re.M)  # not merged
    assert "pyproject.toml [tool.sitepeek] is ignored: sitepeek.toml wins" in result.output


FILE_ERRORS = [
    ("sitepeek.toml", "prot = 1\n", "sitepeek.toml: unknown key 'prot' (did you mean 'port'?)"),
    ("sitepeek.toml", "port = 'x'\n", "sitepeek.toml: key 'port': 'x' is not an integer"),
    ("sitepeek.toml", "port = 99999\n", "sitepeek.toml: key 'port': 99999 is not in the range"),
    ("sitepeek.toml", "port = true\n", "key 'port': expected an integer, got a boolean (True)"),
    ("sitepeek.toml", "reload = 'no'\n", "key 'reload': expected true or false, got a string"),
    ("sitepeek.toml", "workers = 'x'\n", "key 'workers': 'x' is not one of greenlets"),
    ("sitepeek.toml", "watch = ['nope']\n", "key 'watch': path 'nope' does not exist"),
    ("sitepeek.toml", "[server]\nport = 1\n", "sitepeek.toml: unknown key 'server'"),
    ("sitepeek.toml", "port = \n", "sitepeek.toml: invalid TOML: "),
    (
        "sitepeek.toml",
        "max-connections = 1\nmax_connections = 2\n",
        "'max-connections' and 'max_connections' are the same key",
    ),
    ("sitepeek.toml", "print-config = true\n", "unknown key 'print-config'"),
    (
        "pyproject.toml",
        "[tool.sitepeek]\nhost = 1\n",
        "pyproject.toml [tool.sitepeek]: key 'host': expected a string, got an integer (1)",
    ),
    ("pyproject.toml", "[tool]\nsitepeek = 3\n", "pyproject.toml [tool.sitepeek]: expected a"),
    ("sitepeek.toml", "root = 'nope'\n", "sitepeek.toml: key 'root': "),
    ("sitepeek.toml", "root = 3\n", "key 'root': expected a directory name, got an integer"),
    ("sitepeek.toml", "root = ''\n", "key 'root': expected a directory name"),
    ("sitepeek.toml", "dir = 'docs'\n", "unknown key 'dir' (did you mean 'root'?)"),
    ("pyproject.toml", "[tool.sitepeek]\nroot = 'x'\n", "[tool.sitepeek]: key 'root': "),
]


@pytest.mark.parametrize(("name", "text", "message"), FILE_ERRORS, ids=str)
def test_config_file_errors_name_the_file_and_the_key(
    captured: Captured, tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    for args in ([], ["config"], ["serve", "--port", "1"]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: "), result.output
        assert message in result.output
        assert "Usage:" not in result.output and "Traceback" not in result.output
    assert captured.configs == []


# -- environment ------------------------------------------------------------------------
def test_environment_variables(captured: Captured, tmp_path: Path, site: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = {
        "SITEPEEK_PORT": "9300",
        "SITEPEEK_RELOAD": "0",
        "SITEPEEK_COMPRESS": "False",
        "SITEPEEK_STRICT_PORT": "yes",
        "SITEPEEK_WATCH": "a, b",
        "SITEPEEK_IGNORE": "*.tmp,*.log",
        "SITEPEEK_KEEPALIVE_TIMEOUT": "0.5",
        "SITEPEEK_OPEN": "/docs/",
        "SITEPEEK_QUIET": "on",
        "SITEPEEK_HOST": "",  # empty: unset
    }
    assert invoke("serve", str(site), env=env).exit_code == 0
    assert captured.config == replace(
        Config(root=site.resolve()),
        port=9300,
        reload=False,
        compress=False,
        strict_port=True,
        watch=((tmp_path / "a").resolve(), (tmp_path / "b").resolve()),
        ignore=("*.tmp", "*.log"),
        keepalive_timeout=0.5,
        open="/docs/",
        quiet=True,
    )


def test_repeatable_variables_hold_one_value_per_line(captured: Captured, site: Path) -> None:
    # A command or a header's value may hold commas: only a newline separates those;
    # the other repeatable options take commas as well as newlines.
    env = {
        "SITEPEEK_RUN": "node -e 'a(1,2)'\nnpx tsc --watch\r\n\n",
        "SITEPEEK_HEADER": "Cache-Control: no-cache, no-store\nX-Frame-Options: DENY",
        "SITEPEEK_IGNORE": "*.tmp,*.log\ndrafts/*",
        "SITEPEEK_ALLOWED_HOST": "a.test\nb.test,c.test",
    }
    assert invoke("serve", str(site), env=env).exit_code == 0
    config = captured.config
    assert config.run == ("node -e 'a(1,2)'", "npx tsc --watch")
    assert config.header == (
        ("Cache-Control", "no-cache, no-store"),
        ("X-Frame-Options", "DENY"),
    )
    assert config.ignore == ("*.tmp", "*.log", "drafts/*")
    assert config.allowed_host == ("a.test", "b.test", "c.test")


@pytest.mark.parametrize(("value", "expected"), [("1", "/"), ("true", "/"), ("off", None)])
def test_open_from_the_environment(captured: Captured, value: str, expected: str | None) -> None:
    assert invoke(env={"SITEPEEK_OPEN": value}).exit_code == 0
    assert captured.config.open == expected


ENV_ERRORS = [
    ("SITEPEEK_PORT", "abc", "environment variable SITEPEEK_PORT: 'abc' is not an integer"),
    ("SITEPEEK_RELOAD", "maybe", "SITEPEEK_RELOAD: 'maybe' is not a boolean"),
    ("SITEPEEK_WORKERS", "fibers", "SITEPEEK_WORKERS: 'fibers' is not one of"),
    ("SITEPEEK_THREADS", "0", "SITEPEEK_THREADS: 0 is less than the minimum of 1"),
    ("SITEPEEK_WATCH", "a,nope", "SITEPEEK_WATCH: path 'nope' does not exist"),
    ("SITEPEEK_PROT", "1", "unknown environment variable SITEPEEK_PROT (did you mean"),
    ("SITEPEEK_port", "1", "unknown environment variable SITEPEEK_port"),
]


@pytest.mark.parametrize(("name", "value", "message"), ENV_ERRORS, ids=str)
def test_environment_errors_name_the_variable(
    captured: Captured, tmp_path: Path, name: str, value: str, message: str
) -> None:
    (tmp_path / "a").mkdir()
    result = invoke("config", env={name: value})
    assert result.exit_code == 2
    assert result.output == f"Error: {result.output[7:]}"
    assert message in result.output


# -- precedence and `sitepeek config` -----------------------------------------------------
def source_of(output: str, key: str) -> tuple[str, str]:
    match = re.search(rf"^{key} = (\S+) +# (.+)$", output, re.M)
    assert match, output
    return match.group(1), match.group(2)


def test_precedence_command_line_env_file_default(tmp_path: Path) -> None:
    (tmp_path / "sitepeek.toml").write_text("port = 1111\nhost = '0.0.0.0'\nworkers = 'threads'\n")
    env = {"SITEPEEK_PORT": "2222", "SITEPEEK_HOST": "::"}
    result = invoke("config", "--port", "3333", env=env)
    assert result.exit_code == 0
    assert source_of(result.output, "port") == ("3333", "command line")
    assert source_of(result.output, "host") == ('"::"', "SITEPEEK_HOST")
    assert source_of(result.output, "workers") == ('"threads"', "sitepeek.toml")
    assert source_of(result.output, "max-connections") == ("1000", "default")
    assert f"# config file: {tmp_path / 'sitepeek.toml'}" in result.output


def test_print_config_flag_and_subcommand_agree(tmp_path: Path, site: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.sitepeek]\nreload-delay = 5\n")
    env = {"SITEPEEK_QR": "1"}
    as_command = invoke("config", str(site), "-p", "1", env=env)
    for args in (
        ["serve", str(site), "-p", "1", "--print-config"],
        ["--print-config", "-p", "1", "serve", str(site)],
    ):
        result = invoke(*args, env=env)
        assert result.exit_code == 0
        assert result.output == as_command.output
    assert source_of(as_command.output, "reload-delay") == ("5", "pyproject.toml [tool.sitepeek]")
    assert source_of(as_command.output, "qr") == ("true", "SITEPEEK_QR")
    assert f"serving {site.resolve()}" in as_command.output


def test_config_output_is_toml_that_reproduces_the_settings(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    args = ["config", "--host", "::", "--ignore", 'a"b', "--watch", "w", "--keepalive-timeout"]
    first = invoke(*args, "2.5", "--open", "/x/", "--no-compress")
    assert first.exit_code == 0
    parsed = tomllib.loads(first.output)
    assert parsed["host"] == "::" and parsed["ignore"] == ['a"b'] and "processes" not in parsed
    (tmp_path / "sitepeek.toml").write_text(first.output)
    second = invoke("config")
    assert second.exit_code == 0
    strip = re.compile(r" +# .*$|^#.*$", re.M)
    assert strip.sub("", second.output) == strip.sub("", first.output)


def test_config_with_the_defaults_says_no_file(tmp_path: Path) -> None:
    result = invoke("config")
    assert result.exit_code == 0
    assert "# config file: none" in result.output
    assert re.search(r"^# processes: one per CPU +# default$", result.output, re.M)
    assert all(line.endswith("# default") for line in result.output.splitlines()[3:])


# -- help, version, completion ------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["serve"], ["config"], ["completion"]])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_everywhere(command: list[str], flag: str) -> None:
    result = invoke(*command, flag)
    assert result.exit_code == 0
    assert result.output.startswith("Usage: sitepeek")


@pytest.mark.parametrize("command", [[], ["serve"], ["config"]])
@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version_everywhere(command: list[str], flag: str) -> None:
    result = invoke(*command, flag)
    assert (result.exit_code, result.output) == (0, f"sitepeek, version {__version__}\n")


def test_help_lists_every_option() -> None:
    output = invoke("serve", "-h").output
    for option in OPTIONS:
        assert option.flag in output
    assert "[default: (one per CPU)]" in output


@pytest.mark.parametrize("shell", sorted(COMPLETIONS))
def test_completion_scripts_are_up_to_date(shell: str) -> None:
    result = invoke("completion", shell)
    assert result.exit_code == 0
    committed = (REPO / "completions" / COMPLETIONS[shell]).read_text()
    assert result.output == committed, "stale: run completions/generate.sh"
    assert "_SITEPEEK_COMPLETE" in committed


def complete(words: str, cword: int) -> list[str]:
    env = {
        **os.environ,
        "_SITEPEEK_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
    }
    done = subprocess.run(
        [sys.executable, "-m", "sitepeek"], env=env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_completion_knows_the_worker_models_and_completes_directories() -> None:
    assert complete("sitepeek --workers ", 2) == [
        "plain\tgreenlets\t",
        "plain\tthreads\t",
        "plain\tprocesses\t",
    ]
    assert complete("sitepeek serve ", 2) == ["dir\t\t"]


def test_completion_in_process() -> None:
    from click.shell_completion import ShellComplete

    def names(args: list[str], incomplete: str) -> list[str]:
        completer = ShellComplete(cli.cli, {}, "sitepeek", "_SITEPEEK_COMPLETE")
        return [item.value for item in completer.get_completions(args, incomplete)]

    assert names(["serve"], "--wo") == ["--workers"]
    assert names(["--log-format"], "") == ["text", "json"]
    assert names([], "c") == ["completion", "config"]
    assert names(["completion"], "") == ["bash", "zsh", "fish"]
    completer = ShellComplete(cli.cli, {}, "sitepeek", "_SITEPEEK_COMPLETE")
    (watch,) = completer.get_completions(["serve", "--watch"], "sr")
    assert (watch.type, watch.value) == ("file", "sr")


# -- banner, colors, QR, summary ------------------------------------------------------------
class Tty(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def banner(config: Config, out: io.StringIO | None = None) -> str:
    stream = out or io.StringIO()
    banners.print_banner(config, 8000, stream)
    return stream.getvalue()


def test_banner_on_loopback(site: Path) -> None:
    text = banner(Config(root=site, workers="processes", processes=3, reload=False))
    assert text.splitlines()[0] == f"sitepeek {__version__} serving {site}"
    assert "  Local:    http://127.0.0.1:8000/" in text
    assert "Network" not in text and "Warning" not in text
    assert "  Workers:  processes (3)" in text
    assert "  Reload:   off" in text
    assert "\x1b" not in text


def test_banner_shows_the_thread_pool(site: Path) -> None:
    text = banner(Config(root=site, workers="threads", threads=3, reload=False))
    assert "  Workers:  threads (3 threads)" in text
    default = Config(root=site, workers="threads", reload=False).thread_count
    assert default == 8 * (os.cpu_count() or 1)
    assert f"  Workers:  threads ({default} threads)" in banner(
        Config(root=site, workers="threads", reload=False)
    )


def test_banner_on_every_interface_lists_network_urls_and_warns(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "network_addresses", lambda host: ["192.0.2.7", "fd00::7"])
    text = banner(Config(root=site, host="0.0.0.0"))
    assert "  Local:    http://127.0.0.1:8000/" in text
    assert "  Network:  http://192.0.2.7:8000/" in text
    assert "  Network:  http://[fd00::7]:8000/" in text
    assert "  Warning:  this directory is now reachable from your network." in text


def test_banner_on_one_network_address(site: Path) -> None:
    text = banner(Config(root=site, host="192.0.2.99"))
    assert "Local" not in text
    assert "  Network:  http://192.0.2.99:8000/" in text
    assert "Warning:" in text


def test_network_addresses_are_real_and_never_loopback() -> None:
    import ipaddress

    for host in ("0.0.0.0", "::"):
        for address in console.network_addresses(host):
            assert not ipaddress.ip_address(address).is_loopback
    assert console.network_addresses("127.0.0.1") == []


def test_network_addresses_fall_back_to_the_routed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "_interface_ipv4", list)
    assert console.network_addresses("0.0.0.0") == console._routed_ipv4()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.1", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert console.is_loopback(host) is loopback


def test_banner_colors_only_on_a_terminal_without_no_color(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert "\x1b[36mhttp://127.0.0.1:8000/\x1b[0m" in banner(Config(root=site), Tty())
    assert "\x1b" not in banner(Config(root=site), io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b" not in banner(Config(root=site), Tty())
    monkeypatch.setenv("NO_COLOR", "")  # empty: as if unset (no-color.org)
    assert "\x1b" in banner(Config(root=site), Tty())
    monkeypatch.setenv("TERM", "dumb")
    assert "\x1b" not in banner(Config(root=site), Tty())


def test_qr_code_of_the_network_url(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("segno")
    monkeypatch.setattr(console, "network_addresses", lambda host: ["192.0.2.7"])
    text = banner(Config(root=site, host="0.0.0.0", qr=True), Tty())
    assert "  Scan to open http://192.0.2.7:8000/" in text
    assert "\u2584" in text and "\u2588" in text


def test_qr_without_segno_is_a_hint(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "segno", None)
    monkeypatch.setattr(console, "network_addresses", lambda host: ["192.0.2.7"])
    text = banner(Config(root=site, host="0.0.0.0", qr=True), Tty())
    assert text.rstrip().endswith("--qr needs the qr extra: pip install 'sitepeek[qr]'")


def test_qr_on_loopback_explains(site: Path) -> None:
    text = banner(Config(root=site, qr=True), Tty())
    assert "only reachable from this machine; add --host 0.0.0.0" in text


@pytest.mark.parametrize(
    ("uptime", "requests", "reloads", "line"),
    [
        (3.21, 1, 0, "Stopped after 3.2 s: 1 request served, 0 reloads."),
        (65, 1234, 1, "Stopped after 1m 05s: 1,234 requests served, 1 reload."),
        (7322, None, 2, "Stopped after 2h 02m: 2 reloads."),
        (0.5, 3, None, "Stopped after 0.5 s: 3 requests served."),
    ],
)
def test_summary_line(uptime: float, requests: int | None, reloads: int | None, line: str) -> None:
    out = io.StringIO()
    banners.print_summary(out, uptime, requests, reloads)
    assert out.getvalue() == line + "\n"


def test_summary_on_a_terminal_writes_over_the_echoed_ctrl_c() -> None:
    out = Tty()
    banners.print_summary(out, 1.0, 0, 0)
    assert out.getvalue() == "\rStopped after 1.0 s: 0 requests served, 0 reloads.\n"


# -- the real process ---------------------------------------------------------------------
def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sitepeek", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **(env or {})},
    )


def test_real_process_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = run("serve", str(tmp_path / "missing"))
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[-1] == (
        "Error: Invalid value for '[DIRECTORY]': "
        f"Directory '{tmp_path / 'missing'}' does not exist."
    )
    (tmp_path / "sitepeek.toml").write_text("workers = 'fibers'\n")
    bad_file = subprocess.run(
        [sys.executable, "-m", "sitepeek", "config"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=tmp_path,
    )
    assert bad_file.returncode == 2
    assert bad_file.stderr == (
        "Error: sitepeek.toml: key 'workers': 'fibers' is not one of greenlets, threads, "
        "processes\n"
    )
    assert "Traceback" not in missing.stderr + bad_file.stderr


def test_summary_when_stopped(site: Path, worker_model: str) -> None:
    """The request count is summed over every worker process, on separate connections
    (which the kernel spreads over the workers) and one keep-alive connection."""
    srv = start_server(site, worker_model, "--processes", "3")
    for _ in range(7):
        with urllib.request.urlopen(srv.url + "/") as response:
            assert response.status == 200
    with srv.connect() as sock:
        client = H11Client(sock)
        for _ in range(5):
            assert client.request("GET", "/app.html").status == 200
    assert srv.stop(signal.SIGINT) == 0
    out = "".join(srv.stdout_lines)
    (line,) = [x for x in out.splitlines() if x.startswith("Stopped after")]
    assert re.fullmatch(r"Stopped after \d+\.\d s: 12 requests served, 0 reloads\.", line)
    assert out.index("Press Ctrl-C to stop.") < out.index("Stopped after")


def test_open_starts_the_browser_once_serving(site: Path, tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {"BROWSER": str(browser), "DISPLAY": ""}
    srv = start_server(site, "greenlets", "--open", "/about/", env=env)
    try:
        deadline = time.monotonic() + 10
        while not (opened.exists() and opened.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert opened.read_text() == f"{srv.url}/about/\n"
    finally:
        assert srv.stop() == 0


def test_bare_open_with_a_base_opens_the_site(site: Path, tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {"BROWSER": str(browser), "DISPLAY": ""}
    srv = start_server(site, "greenlets", "--base", "/docs/", "--open", env=env)
    try:
        deadline = time.monotonic() + 10
        while not (opened.exists() and opened.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert opened.read_text() == f"{srv.url}/docs/\n"
    finally:
        assert srv.stop() == 0


def test_open_without_a_graphical_session_says_so(site: Path) -> None:
    env = {"BROWSER": "", "DISPLAY": "", "WAYLAND_DISPLAY": ""}
    srv = start_server(site, "threads", "--open", env=env)
    try:
        deadline = time.monotonic() + 5
        while "no graphical browser" not in srv.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        expected = f"sitepeek: no graphical browser here; open {srv.url}/ yourself\n"
        assert srv.stderr_text() == expected
    finally:
        assert srv.stop() == 0


def test_click_is_imported_only_by_the_cli() -> None:
    import ast

    for path in (REPO / "src" / "sitepeek").rglob("*.py"):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] == "click" for n in names), path


# -- --spa mistakes and what the banner says ------------------------------------------
def test_spa_with_a_directory_is_an_error_with_a_hint(tmp_path: Path) -> None:
    """``sitepeek serve --spa dist`` (the ``serve -s dist`` habit) takes dist for the
    fallback FILE: exit 2 naming it and the command meant, never serving the wrong
    directory."""
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "index.html").write_text("<p>app</p>\n")
    for argv in (["serve", "--spa", "dist"], ["--spa", "dist"]):
        done = subprocess.run(
            [sys.executable, "-m", "sitepeek", *argv, "--port", "0"],
            capture_output=True, text=True, timeout=20, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout
        assert done.stdout == ""
        assert done.stderr.splitlines()[-1] == (
            f"Error: --spa dist: {tmp_path / 'dist'} is a directory, but --spa takes the "
            "fallback FILE (default index.html); to serve dist as a single-page app, run: "
            "sitepeek serve dist --spa"
        )


@pytest.mark.parametrize(
    "args", [["--spa"], ["--spa", "app.html"], ["--spa=missing/index.html"]], ids=str
)
def test_spa_fallback_that_does_not_exist_is_exit_2_naming_it(
    tmp_path: Path, args: list[str]
) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "about.html").write_text("<p>not a fallback</p>\n")
    done = run("serve", str(root), *args, "--port", "0")
    name = "index.html" if args == ["--spa"] else args[-1].removeprefix("--spa=")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"Error: --spa {name}: the fallback file {root / name} does not exist"
    )
    assert "Traceback" not in done.stderr


def test_banner_says_which_modes_are_on(site: Path, worker_model: str) -> None:
    (site / "_redirects").write_text("/old /new 301\n")
    srv = start_server(
        site, worker_model, "--spa", "app.html", "--base", "/docs/",
        "--proxy", "/api=http://127.0.0.1:3000",
    )  # fmt: skip
    try:
        lines = [line.rstrip("\n") for line in srv.stdout_lines]
        assert f"  Local:    http://127.0.0.1:{srv.port}/docs/" in lines
        assert lines[lines.index("  Reload:   on, watching for changes") + 1 :][:5] == [
            "  SPA:      missing pages get /app.html (status 200), assets 404",
            "  Base:     the site is served under /docs/",
            "  Rules:    _redirects (--no-rules to ignore)",
            "  Proxy:    /api -> http://127.0.0.1:3000",
            "",
        ]
        with urllib.request.urlopen(f"{srv.url}/docs/") as response:  # the URL printed
            assert response.status == 200
    finally:
        assert srv.stop() == 0


def test_banner_without_modes_has_no_mode_lines(site: Path) -> None:
    text = banner(Config(root=site, rules=True))
    assert not re.search(r"^  (SPA|Base|Rules|Proxy):", text, re.M)
    assert "http://127.0.0.1:8000/\n" in text


# -- the directory to serve from a config file ------------------------------------------
@pytest.mark.parametrize("name", ["sitepeek.toml", "pyproject.toml"])
def test_root_in_a_config_file(tmp_path: Path, name: str) -> None:
    build = tmp_path / "docs" / "_build"
    build.mkdir(parents=True)
    (tmp_path / "other").mkdir()
    text = 'root = "docs/_build"\nport = 9100\n'
    (tmp_path / name).write_text(text if name == "sitepeek.toml" else "[tool.sitepeek]\n" + text)
    label = "sitepeek.toml" if name == "sitepeek.toml" else "pyproject.toml [tool.sitepeek]"
    for args in (["config"], ["serve", "--print-config"], ["--print-config"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert f"serving {build.resolve()}\n" in result.output
        assert source_of(result.output, "root") == ('"docs/_build"', label)
    given = invoke("config", "other")  # DIR on the command line wins
    assert f"serving {(tmp_path / 'other').resolve()}\n" in given.output
    assert source_of(given.output, "root") == ('"other"', "command line")
    assert source_of(invoke("config", "--no-reload").output, "port") == ("9100", label)


def test_root_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "build").mkdir()
    (tmp_path / "sitepeek.toml").write_text('root = "build"\n')
    result = invoke("config", env={"SITEPEEK_ROOT": "site"})  # environment > file
    assert source_of(result.output, "root") == ('"site"', "SITEPEEK_ROOT")
    assert f"serving {(tmp_path / 'site').resolve()}\n" in result.output
    given = invoke("config", "build", env={"SITEPEEK_ROOT": "site"})  # command line > env
    assert source_of(given.output, "root") == ('"build"', "command line")
    missing = invoke("config", env={"SITEPEEK_ROOT": "nope"})
    assert missing.exit_code == 2
    assert missing.output == "Error: environment variable SITEPEEK_ROOT: nope is not a directory\n"


def test_root_default_is_the_current_directory(tmp_path: Path) -> None:
    result = invoke("config")
    assert source_of(result.output, "root") == ('"."', "default")
    assert f"serving {tmp_path.resolve()}\n" in result.output


def _serve_in(cwd: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sitepeek", *args, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    while not (match := re.search(r"http://127\.0\.0\.1:(\d+)/", "".join(lines))):
        line = proc.stdout.readline()
        assert line, f"sitepeek exited: {proc.communicate(timeout=5)}"
        lines.append(line)
    assert lines[0].endswith("_build\n") or "other" in lines[0], lines[0]
    return proc, int(match.group(1))


def test_plain_sitepeek_serves_the_root_of_its_config_file(
    tmp_path: Path, worker_model: str
) -> None:
    build = tmp_path / "docs" / "_build"
    build.mkdir(parents=True)
    (build / "index.html").write_text("<p>the built site</p>\n")
    (tmp_path / "index.html").write_text("<p>the sources</p>\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.html").write_text("<p>other</p>\n")
    (tmp_path / "sitepeek.toml").write_text(f'root = "docs/_build"\nworkers = "{worker_model}"\n')
    for args, expected in ((["serve"], b"the built site"), ([], b"the built site"),
                           (["serve", "other"], b"other")):  # fmt: skip
        proc, port = _serve_in(tmp_path, *args)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
                assert expected in response.read()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
        assert proc.returncode == 0


# -- HTTPS: --https, --cert/--key ------------------------------------------------------
def test_https_from_the_environment_and_the_config_file(
    captured: Captured, tmp_path: Path, site: Path
) -> None:
    write_pair(tmp_path)
    assert invoke("serve", str(site), env={"SITEPEEK_HTTPS": "yes"}).exit_code == 0
    assert captured.configs[-1].https is True
    (tmp_path / "sitepeek.toml").write_text('cert = "cert.pem"\nkey = "key.pem"\n')
    result = invoke("serve", str(site))
    assert result.exit_code == 0, result.output
    assert captured.configs[-1].cert == tmp_path / "cert.pem"
    assert captured.configs[-1].tls


def _other_key(directory: Path) -> Path:
    from cryptography.hazmat.primitives.asymmetric import ec

    from pki import key_pem

    path = directory / "other-key.pem"
    path.write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    return path


CERT_ERRORS = [
    (["--cert", "cert.pem", "--key", "missing.pem"], "missing.pem: no such file"),
    (["--cert", "missing.pem", "--key", "key.pem"], "missing.pem: no such file"),
    (["--cert", "cert.pem", "--key", "other-key.pem"], "the key does not belong to the cert"),
    (["--cert", "site/index.html", "--key", "key.pem"], "not a PEM certificate chain"),
    (["--cert", "site", "--key", "key.pem"], "site: not a file"),
]


@pytest.mark.parametrize(("args", "message"), CERT_ERRORS, ids=str)
def test_a_bad_certificate_pair_is_one_line_and_status_2(
    captured: Captured, tmp_path: Path, site: Path, args: list[str], message: str
) -> None:
    write_pair(tmp_path)
    _other_key(tmp_path)
    for env in ({}, {"SITEPEEK_CERT": args[1], "SITEPEEK_KEY": args[3]}):
        result = invoke("serve", str(site), *(args if not env else []), env=env)
        assert result.exit_code == 2, result.output
        (line,) = result.output.splitlines()
        assert line.startswith("Error: ") and message in line, line
    assert captured.configs == []


def test_cert_without_key_is_refused(captured: Captured, tmp_path: Path, site: Path) -> None:
    write_pair(tmp_path)
    result = invoke("serve", str(site), "--cert", "cert.pem")
    assert result.exit_code == 2
    assert "--cert and --key go together" in result.output
    assert captured.configs == []


SITEPEEK_ARGV = (sys.executable, "-m", "sitepeek")


def test_a_bad_pair_exits_2_from_a_real_process(tmp_path: Path, site: Path) -> None:
    write_pair(tmp_path)
    _other_key(tmp_path)
    done = subprocess.run(
        [*SITEPEEK_ARGV, "serve", str(site), "--cert", "cert.pem", "--key", "other-key.pem"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("Error: --cert ")


def test_https_command_prints_the_ca_and_trusts_it_in_nss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sitepeek https` makes and shows the CA; trust/untrust change the NSS db."""
    if shutil.which("certutil") is None:
        pytest.fail("certutil is missing: install libnss3-tools")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": ""}
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "sitepeek", "https", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    shown = run()
    assert shown.returncode == 0, shown.stderr
    ca_path = home / ".local" / "share" / "sitepeek" / "ca.crt"
    assert f"Certificate: {ca_path}" in shown.stdout
    assert stat.S_IMODE((ca_path.parent / "ca-key.pem").stat().st_mode) == 0o600
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert f"SHA-256:     {fingerprint}" in shown.stdout
    assert "sitepeek local CA (" in shown.stdout and "@" in shown.stdout
    again = run()
    assert again.stdout == shown.stdout.replace(shown.stdout.splitlines()[0] + "\n", "")

    db = home / ".pki" / "nssdb"
    trusted = run("trust", "--no-system")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "adding 'sitepeek local CA" in trusted.stdout and str(db) in trusted.stdout
    listed = subprocess.run(["certutil", "-d", f"sql:{db}", "-L"], capture_output=True, text=True)
    assert "sitepeek local CA" in listed.stdout
    untrusted = run("untrust", "--no-system")
    assert untrusted.returncode == 0, untrusted.stdout + untrusted.stderr
    assert "removing 'sitepeek local CA" in untrusted.stdout
    listed = subprocess.run(["certutil", "-d", f"sql:{db}", "-L"], capture_output=True, text=True)
    assert "sitepeek local CA" not in listed.stdout
    nothing = run("untrust", "--no-system")
    assert "nothing to remove" in nothing.stdout


def test_https_trust_says_which_tool_is_missing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": "", "PATH": str(empty_path)}
    done = subprocess.run(
        [sys.executable, "-m", "sitepeek", "https", "trust"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert "update-ca-certificates not found" in done.stdout
    assert "certutil not found: install libnss3-tools" in done.stdout
    assert "Traceback" not in done.stderr
