"""Console entry points: ``produce`` and ``icedamage <command>``.

Each package keeps its own commands in a ``commands`` module exposing ``register(app)``; this
module only assembles them, so a command's code lives next to the package it belongs to.
"""

from __future__ import annotations

import importlib

import typer

#: Modules whose ``register(app)`` adds commands to ``icedamage``.
COMMAND_MODULES: tuple[str, ...] = (
    "producer.commands",
    "validation.commands",
    "producer.restoration.commands",
    "producer.training.commands",
    "catalog.commands",
    "publish.commands",
)


def build_app() -> typer.Typer:
    """The ``icedamage`` application with every package's commands."""
    app = typer.Typer(
        name="icedamage",
        help="Produce, catalog, validate and publish the Antarctic ice-shelf damage dataset.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
    )

    @app.callback()
    def _group() -> None:
        """Keep ``icedamage`` a command group even while only one command is registered."""

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
    return app


def icedamage_main() -> None:
    """Entry point of the ``icedamage`` console script."""
    build_app()()


def produce_main() -> None:
    """Entry point of the ``produce`` console script (same as ``icedamage produce``)."""
    from producer.commands import produce_app

    produce_app()()
