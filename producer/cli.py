"""Console entry points: ``produce`` and ``icedamage <command>``.

Each package keeps its own commands in a ``commands`` module exposing ``register(app)``; this
module only assembles them, so a command's code lives next to the package it belongs to.
Importing a package's commands costs up to seconds (pandas, geopandas, torch ...), so
``icedamage <command>`` registers modules only until one provides that command; ``icedamage``
alone, ``--help`` or an unknown command registers them all.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Annotated

import typer
from typer.main import get_command_name

#: Modules whose ``register(app)`` adds commands to ``icedamage``.
COMMAND_MODULES: tuple[str, ...] = (
    "producer.commands",
    "validation.commands",
    "catalog.commands",
    "publish.commands",
    "producer.restoration.commands",
    "producer.training.commands",
)


def print_version(asked: bool) -> None:
    """``--version``: this package's version and those of the libraries that shape the products
    (the ones each provenance record lists), then exit."""
    if not asked:
        return
    from producer.pipeline import software_versions

    versions = software_versions(restoration_used=True)
    typer.echo(f"icedamage {versions.pop('icedamage')}")
    typer.echo(", ".join(f"{name} {version}" for name, version in versions.items()))
    raise typer.Exit()


VersionOption = Annotated[bool, typer.Option(
    "--version", callback=print_version, is_eager=True,
    help="Show the versions of icedamage and the libraries that shape the products, and exit.")]


def build_app(command: str | None = None) -> typer.Typer:
    """The ``icedamage`` application with every package's commands, or, given ``command``, with
    the modules up to the first that registers it."""
    app = typer.Typer(
        name="icedamage",
        help="Produce, catalog, validate and publish the Antarctic ice-shelf damage dataset.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
    )

    @app.callback()
    def _group(version: VersionOption = False) -> None:
        """Keep ``icedamage`` a command group even while only one command is registered."""

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
        if command is not None and command in command_names(app):
            break
    return app


def command_names(app: typer.Typer) -> set[str]:
    """Names of the commands registered on ``app`` (as typer derives them)."""
    return {info.name or get_command_name(info.callback.__name__)
            for info in app.registered_commands if info.callback is not None}


def invoked_command(argv: Sequence[str]) -> str | None:
    """The command of an ``icedamage`` command line, when it comes first (not an option)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def icedamage_main() -> None:
    """Entry point of the ``icedamage`` console script."""
    exit_on_interrupt(lambda: build_app(invoked_command(sys.argv[1:]))())


def produce_main() -> None:
    """Entry point of the ``produce`` console script (same as ``icedamage produce``)."""

    def run() -> None:
        from producer.commands import produce_app

        produce_app()()

    exit_on_interrupt(run)


def exit_on_interrupt(main: Callable[[], object]) -> None:
    """Run an entry point; a Ctrl-C anywhere in it exits 130 with one line, no traceback.

    typer turns an interrupt inside a command into exit 130, but not one that lands while the
    commands' modules are being imported (the first second or two), before typer runs.
    """
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
