"""Command line: ``sitepeek [OPTIONS]`` serves the current directory,
``sitepeek serve [DIR] [OPTIONS]`` serves DIR, ``sitepeek config [DIR] [OPTIONS]``
prints the effective settings, ``sitepeek completion SHELL`` prints a completion script,
``sitepeek https [trust|untrust]`` shows the local CA (``--https``) and installs or removes it.

Every option comes from one table, :data:`sitepeek.config.OPTIONS`; this module turns
each entry into a click option on the group, ``serve`` and ``config`` (so options may
come before or after the subcommand). Validation lives in a click parameter type that
calls the table's parser, so a bad flag is a ``Usage:`` line and exit status 2. A bad
config file or ``SITEPEEK_*`` variable is one ``Error:`` line naming it, also exit
status 2; a server that cannot start is one ``Error:`` line and exit status 1.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource
from click.shell_completion import CompletionItem, ShellComplete, add_completion_class

from sitepeek.config import (
    OPTIONS,
    Choice,
    ConfigError,
    ExistingPath,
    Kind,
    Option,
    Settings,
    resolve,
)
from sitepeek.version import __version__

if TYPE_CHECKING:
    from sitepeek.certs import Authority

F = TypeVar("F", bound=Callable[..., Any])

PROG_NAME = "sitepeek"
COMPLETE_VAR = "_SITEPEEK_COMPLETE"  # assets/completion.* call sitepeek with it
SHELLS = ("bash", "zsh", "fish")
LINE_BREAKS = re.compile(r"[\t\r\n]")  # would split a completion's answer line
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class KindType(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.3 on
    """A click type that parses with an option's :class:`~sitepeek.config.Kind`: the
    command line, the environment and config files accept exactly the same values."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.name = kind.metavar.strip("[]").lower()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default, already parsed
        try:
            return self.kind.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        if isinstance(self.kind, Choice):
            return [CompletionItem(c) for c in self.kind.choices if c.startswith(incomplete)]
        if isinstance(self.kind, ExistingPath):
            return [CompletionItem(incomplete, type="file")]  # the shell completes paths
        return []


class ConfigFileError(click.ClickException):
    """A config file or environment variable is invalid: ``Error: ...``, exit status 2."""

    exit_code = 2


class CertificateError(ConfigFileError):
    """--cert/--key cannot be served with: ``Error: ...``, exit status 2."""


def click_option(option: Option) -> Callable[[F], F]:
    """The click option for one entry of the table."""
    names = [option.flag] + ([option.short] if option.short else [])
    if option.is_switch:
        if option.negatable:
            names[0] += f"/--no-{option.key}"
            return click.option(
                *names, option.name, default=option.default, show_default=True, help=option.help
            )
        return click.option(*names, option.name, is_flag=True, default=False, help=option.help)
    show_default: bool | str = option.default not in (None, ())
    extra: dict[str, Any] = {}
    if option.bare_value is not None:  # --open or --open /docs/
        extra = {"is_flag": False, "flag_value": option.bare_value}
    elif option.default is None and option.default_text:
        show_default = option.default_text
    return click.option(
        *names,
        option.name,
        type=KindType(option.kind),
        default=option.default,
        multiple=option.multiple,
        metavar=option.kind.metavar,
        show_default=show_default,
        help=option.help,
        **extra,
    )


def serving_options(func: F) -> F:
    """Every option of the table, in table order in --help."""
    for option in reversed(OPTIONS):
        func = click_option(option)(func)
    return func


version_option = click.version_option(__version__, "--version", "-V", prog_name=PROG_NAME)
print_config_option = click.option(
    "--print-config",
    is_flag=True,
    help="Print the effective settings and where each came from, then exit.",
)
# Whether the directory must exist is decided in _run: with --build it may not yet.
directory_argument = click.argument(
    "directory",
    type=click.Path(file_okay=False, dir_okay=True, path_type=Path),
    default=".",
)


@click.group(invoke_without_command=True, context_settings=CONTEXT_SETTINGS)
@serving_options
@print_config_option
@version_option
@click.pass_context
def cli(ctx: click.Context, /, **_: Any) -> None:
    """Preview a static site: a fast, correct HTTP/1.1 server with live reload.

    Plain `sitepeek` serves the current directory (or the config file's `root`);
    `sitepeek serve DIR` serves DIR. Options may come before or after the command. Each
    option can also be set in sitepeek.toml or [tool.sitepeek] in pyproject.toml (in the
    current directory), or as SITEPEEK_<OPTION> in the environment (a repeatable
    option's values one per line, or comma-separated but for --run and --header);
    `sitepeek config` shows what is in effect.
    """
    if ctx.invoked_subcommand is None:
        _run(ctx, Path("."))


@cli.command(context_settings=CONTEXT_SETTINGS)
@directory_argument
@serving_options
@print_config_option
@version_option
@click.pass_context
def serve(ctx: click.Context, /, directory: Path, **_: Any) -> None:
    """Serve DIRECTORY (default: the config file's root, else the current directory)."""
    _run(ctx, directory)


@cli.command("config", context_settings=CONTEXT_SETTINGS)
@directory_argument
@serving_options
@version_option
@click.pass_context
def show_config(ctx: click.Context, /, directory: Path, **_: Any) -> None:
    """Print the settings `sitepeek serve DIRECTORY` would use, and where each came from.

    The output is TOML: it can be pasted into sitepeek.toml.
    """
    _run(ctx, directory, print_only=True)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash: eval "$(sitepeek completion bash)"   (in ~/.bashrc)
    zsh:  eval "$(sitepeek completion zsh)"    (in ~/.zshrc, after compinit)
    fish: sitepeek completion fish > ~/.config/fish/completions/sitepeek.fish
    """
    click.echo(completion_script(shell), nl=False)


@cli.group("https", invoke_without_command=True, context_settings=CONTEXT_SETTINGS)
@click.pass_context
def https_command(ctx: click.Context) -> None:
    """Show sitepeek's local CA (used by --https): its path and SHA-256 fingerprint.

    The CA is created on first use. `sitepeek https trust` makes this machine's
    browsers trust it; `sitepeek https untrust` undoes that.
    """
    if ctx.invoked_subcommand is None:
        ca = _authority()
        if ca.created:
            click.echo(f"Created sitepeek's local CA in {ca.directory}")
        click.echo(f"CA:          {ca.name}")
        click.echo(f"Certificate: {ca.cert_path}")
        click.echo(f"Key:         {ca.key_path} (never leaves this directory)")
        click.echo(f"SHA-256:     {ca.fingerprint}")


def _authority() -> Authority:
    from sitepeek import certs

    try:
        return certs.authority()
    except certs.CertError as exc:
        raise click.ClickException(str(exc)) from None


_store_options = (
    click.option(
        "--system/--no-system",
        default=True,
        show_default=True,
        help="The system store (update-ca-certificates; needs root, asks sudo).",
    ),
    click.option(
        "--browsers/--no-browsers",
        default=True,
        show_default=True,
        help="The NSS databases of Chromium (~/.pki/nssdb) and Firefox profiles.",
    ),
)


def _with_store_options(func: F) -> F:
    for option in reversed(_store_options):
        func = option(func)
    return func


@https_command.command("trust", context_settings=CONTEXT_SETTINGS)
@_with_store_options
def https_trust(system: bool, browsers: bool) -> None:
    """Install the local CA in the system store and the browsers' NSS databases."""
    from sitepeek.trust import trust

    ca = _authority()
    click.echo(f"Trusting {ca.name} ({ca.cert_path}, SHA-256 {ca.fingerprint})")
    if not trust(ca, click.echo, system=system, browsers=browsers):
        sys.exit(1)


@https_command.command("untrust", context_settings=CONTEXT_SETTINGS)
@_with_store_options
def https_untrust(system: bool, browsers: bool) -> None:
    """Remove the local CA from where `sitepeek https trust` installed it."""
    from sitepeek.trust import untrust

    ca = _authority()
    click.echo(f"Untrusting {ca.name} ({ca.cert_path})")
    if not untrust(ca, click.echo, system=system, browsers=browsers):
        sys.exit(1)


def completion_script(shell: str) -> str:
    """The completion script for ``shell``: sitepeek's own (``assets/completion.*``),
    so it is the same whichever click release is installed."""
    return resources.files("sitepeek").joinpath(f"assets/completion.{shell}").read_text()


def split_words(text: str) -> list[str]:
    """Split a command line as the shell would; an unclosed quote keeps what follows it."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    try:
        words.extend(lexer)
    except ValueError:  # an unclosed quote: the word being typed
        words.append(lexer.token)
    return words


class SitepeekComplete(ShellComplete):
    """Shell completion with sitepeek's own scripts and answer format, replacing click's
    for bash, zsh and fish: click's scripts and formats changed between releases (the
    fish script of click 8.4.0 runs each completion as a command). The answer is one
    completion a line, ``TYPE<tab>VALUE<tab>HELP``, which the scripts never evaluate."""

    def source(self) -> str:
        return completion_script(self.name)

    def get_completion_args(self) -> tuple[list[str], str]:
        """bash and zsh give the words and the index of the one being completed."""
        words = split_words(os.environ["COMP_WORDS"])
        index = int(os.environ["COMP_CWORD"])
        incomplete = words[index] if index < len(words) else ""
        return words[1:index], incomplete

    def format_completion(self, item: CompletionItem) -> str:
        fields = (item.type, str(item.value), item.help or "")
        return "\t".join(LINE_BREAKS.sub(" ", field) for field in fields)


class BashComplete(SitepeekComplete):
    name = "bash"


class ZshComplete(SitepeekComplete):
    name = "zsh"


class FishComplete(SitepeekComplete):
    name = "fish"

    def get_completion_args(self) -> tuple[list[str], str]:
        """fish gives the line up to the cursor and the word being completed, which
        that line also ends with."""
        words = split_words(os.environ["COMP_WORDS"])[1:]
        typed = split_words(os.environ["COMP_CWORD"])
        incomplete = typed[0] if typed else ""
        if incomplete and words and words[-1] == incomplete:
            words.pop()
        return words, incomplete


for _shell_class in (BashComplete, ZshComplete, FishComplete):
    add_completion_class(_shell_class)


def _lineage(ctx: click.Context) -> Iterator[click.Context]:
    """The group's context first, then the subcommand's."""
    chain = []
    current: click.Context | None = ctx
    while current is not None:
        chain.append(current)
        current = current.parent
    return reversed(chain)


def command_line_values(ctx: click.Context) -> dict[str, Any]:
    """The options given on the command line; after the subcommand wins over before."""
    given: dict[str, Any] = {}
    for context in _lineage(ctx):
        for option in OPTIONS:
            if (
                option.name in context.params
                and context.get_parameter_source(option.name) is ParameterSource.COMMANDLINE
            ):
                given[option.name] = context.params[option.name]
    return given


def settings_for(ctx: click.Context) -> Settings:
    """Command line > environment > config file > defaults."""
    try:
        return resolve(command_line_values(ctx))
    except ConfigError as exc:
        raise ConfigFileError(str(exc)) from None


def _given_directory(ctx: click.Context, directory: Path) -> Path | None:
    """DIR when the command line gave it; None lets a config file's ``root`` decide."""
    if "directory" not in ctx.params:
        return None  # plain `sitepeek`
    given = ctx.get_parameter_source("directory") is ParameterSource.COMMANDLINE
    return directory if given else None


def _run(ctx: click.Context, directory: Path, print_only: bool = False) -> None:
    settings = settings_for(ctx)
    _check_directory(ctx, directory, settings, create=not print_only)
    try:
        root = settings.root_for(_given_directory(ctx, directory))
    except ConfigError as exc:
        raise ConfigFileError(str(exc)) from None
    try:
        config = settings.config(Path(root.value).resolve())
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if print_only or any(context.params.get("print_config") for context in _lineage(ctx)):
        click.echo(settings.describe(config.root, root))
        return

    if config.cert is not None and config.key is not None:
        from sitepeek.tls import TlsError, server_context

        try:
            server_context(config.cert, config.key)
        except TlsError as exc:
            raise CertificateError(str(exc)) from None

    from sitepeek.server import StartupError, serve

    try:
        serve(config)
    except StartupError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass  # Ctrl-C before the signal handlers were installed: still a clean stop


def _check_directory(ctx: click.Context, directory: Path, settings: Settings, create: bool) -> None:
    """The served directory must exist, unless a --build command is to fill it: then it
    is created (as the generator would)."""
    if directory.exists():
        return
    building = any(s.option.name == "build" and s.value is not None for s in settings.values)
    if not building:
        param = next((p for p in ctx.command.params if p.name == "directory"), None)
        raise click.BadParameter(f"Directory '{directory}' does not exist.", ctx, param)
    if create:
        try:
            directory.mkdir(parents=True)
        except OSError as exc:
            raise click.UsageError(f"cannot create {directory}: {exc.strerror}") from None


def main() -> None:
    """Console-script entry point."""
    cli(prog_name=PROG_NAME, complete_var=COMPLETE_VAR)  # the name the scripts use
