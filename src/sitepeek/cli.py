"""Command line: ``sitepeek [OPTIONS]`` serves the current directory,
``sitepeek serve [DIR] [OPTIONS]`` serves DIR.

Validation lives in click parameter types, so a bad flag is a ``Usage:`` line and
exit status 2; a server that cannot start is one ``Error:`` line and exit status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sitepeek import __version__
from sitepeek.config import WORKER_NAMES, Config

F = TypeVar("F", bound=Callable[..., Any])

_WORKERS_HELP = (
    "Concurrency model. greenlets: one process, a greenlet per connection (default; "
    "fastest, lightest). threads: one process, an OS thread per connection (no gevent; "
    "pick it when debugging or profiling). processes: pre-forked greenlet workers "
    "(pick it to use every core)."
)

# Every serving option is declared once and applied to both the group and `serve`.
_SERVE_OPTIONS = (
    click.option(
        "--host",
        default="127.0.0.1",
        show_default=True,
        help="Address to listen on; 0.0.0.0 exposes the site to your network.",
    ),
    click.option(
        "--port",
        "-p",
        type=click.IntRange(0, 65535),
        default=8000,
        show_default=True,
        help="Port to listen on; 0 picks any free port. A busy port moves on to the next.",
    ),
    click.option(
        "--strict-port",
        is_flag=True,
        help="Fail instead of moving on when the port is busy.",
    ),
    click.option(
        "--workers",
        type=click.Choice(WORKER_NAMES),
        default="greenlets",
        show_default=True,
        help=_WORKERS_HELP,
    ),
    click.option(
        "--processes",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="Worker processes with --workers processes  [default: one per CPU]",
    ),
    click.option(
        "--keepalive-timeout",
        type=click.FloatRange(min=0.1),
        default=5.0,
        show_default=True,
        metavar="SECONDS",
        help="Close a keep-alive connection idle this long.",
    ),
    click.option(
        "--header-timeout",
        type=click.FloatRange(min=0.1),
        default=10.0,
        show_default=True,
        metavar="SECONDS",
        help="Answer 408 when a started request head takes longer.",
    ),
    click.option(
        "--compress/--no-compress",
        default=True,
        show_default=True,
        help="Compress text responses (gzip; brotli and zstd with their extras).",
    ),
    click.option(
        "--reload/--no-reload",
        default=True,
        show_default=True,
        help="Reload open browser tabs when a file changes (CSS is swapped in place).",
    ),
    click.option(
        "--reload-delay",
        type=click.IntRange(min=0),
        default=30,
        show_default=True,
        metavar="MS",
        help="Quiet period that ends a burst of changes before a reload.",
    ),
    click.option(
        "--watch",
        type=click.Path(exists=True, path_type=Path),
        multiple=True,
        metavar="PATH",
        help="Also watch PATH for changes (repeatable).",
    ),
    click.option(
        "--ignore",
        multiple=True,
        metavar="GLOB",
        help="Ignore changes to files matching GLOB (repeatable), besides .git/, "
        "node_modules/ and editor swap files.",
    ),
    click.option(
        "--poll",
        is_flag=True,
        help="Poll for changes instead of OS events (Docker, WSL, network drives).",
    ),
    click.option(
        "--max-connections",
        type=click.IntRange(min=1),
        default=1000,
        show_default=True,
        help="Connections served at once per process; more wait in the listen queue.",
    ),
)
_OPTION_NAMES = (
    "host",
    "port",
    "strict_port",
    "workers",
    "processes",
    "max_connections",
    "keepalive_timeout",
    "header_timeout",
    "compress",
    "reload",
    "reload_delay",
    "watch",
    "ignore",
    "poll",
)


def _serve_options(func: F) -> F:
    for option in reversed(_SERVE_OPTIONS):
        func = option(func)
    return func


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@_serve_options
@click.version_option(__version__, "--version", "-V", prog_name="sitepeek")
@click.pass_context
def cli(ctx: click.Context, /, **options: Any) -> None:
    """Preview a static site: a fast, correct HTTP/1.1 server.

    Plain `sitepeek` serves the current directory; `sitepeek serve DIR` serves DIR.
    """
    ctx.obj = options
    if ctx.invoked_subcommand is None:
        _run(Path("."), options)


@cli.command()
@click.argument(
    "directory",
    type=click.Path(exists=True, file_okay=False, dir_okay=True, path_type=Path),
    default=".",
)
@_serve_options
@click.pass_context
def serve(ctx: click.Context, /, directory: Path, **options: Any) -> None:
    """Serve DIRECTORY (default: the current directory)."""
    parent = ctx.parent
    group_options: dict[str, Any] = (ctx.obj or {}) if parent else {}
    for name in _OPTION_NAMES:
        # An option given before `serve` applies unless repeated after it.
        source = ctx.get_parameter_source(name)
        if (
            source is click.core.ParameterSource.DEFAULT
            and parent is not None
            and parent.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ):
            options[name] = group_options[name]
    _run(directory, options)


def _run(directory: Path, options: dict[str, Any]) -> None:
    from sitepeek.server import StartupError, serve

    try:
        config = Config(
            root=directory.resolve(),
            host=options["host"],
            port=options["port"],
            strict_port=options["strict_port"],
            workers=options["workers"],
            processes=options["processes"] or 0,
            max_connections=options["max_connections"],
            keepalive_timeout=options["keepalive_timeout"],
            header_timeout=options["header_timeout"],
            compress=options["compress"],
            reload=options["reload"],
            reload_delay=options["reload_delay"] / 1000,
            watch=tuple(path.resolve() for path in options["watch"]),
            ignore=tuple(options["ignore"]),
            poll=options["poll"],
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        serve(config)
    except StartupError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass  # Ctrl-C before the signal handlers were installed: still a clean stop


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="sitepeek")
