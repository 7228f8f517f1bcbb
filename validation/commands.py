"""``icedamage validate``: check a release folder against the spec, as a table and JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from catalog.schema_fetch import OFFLINE_ENV
from producer.writer import atomic_path, unwritable
from validation.engine import ValidationReport, validate_release
from validation.report import printable

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def problem_table(report: ValidationReport) -> Table:
    """The problems as a rich table, one row each, errors in red and warnings in yellow.

    Cells are plain ``Text`` so that brackets in file names or messages are not read as markup.
    """
    title = Text(f"Problems in {printable(str(report.release_dir))}")
    table = Table(title=title, show_lines=False, expand=True)
    for column, style in (("File", "cyan"), ("Rule", "bold"), ("Found", ""), ("Expected", ""),
                          ("Severity", "")):
        table.add_column(column, style=style or None, overflow="fold")
    for problem in report.problems:
        colour = "yellow" if problem.severity == "warning" else "red"
        table.add_row(Text(problem.file), Text(problem.rule), Text(problem.found),
                      Text(problem.expected), Text(problem.severity, style=colour))
    return table


def write_json_report(report: ValidationReport, path: Path) -> None:
    """Write the JSON report atomically (a reader never sees half a report)."""
    with atomic_path(path) as tmp:
        tmp.write_text(report.to_json(), encoding="utf-8")


def _usage_error(errors: Console, message: str) -> typer.Exit:
    """Print ``message`` (user text: escaped, never markup or emoji codes) as one error line;
    the bad-usage Exit to raise."""
    errors.print(f"[red]error:[/red] {escape(printable(message))}", soft_wrap=True,
                 highlight=False)
    return typer.Exit(EXIT_USAGE)


def check_schemas_folder(folder: Path) -> None:
    """ValueError unless ``--schemas`` is a folder whose schema-map.json and the schemas it
    lists read. Why: checked before the release is, a wrong folder is bad usage (exit 2), not
    a ``validator-rule-set-failed`` problem of the release found after the whole run."""
    from catalog.rules.common import SCHEMA_MAP
    from catalog.rules.stac_schema import load_schema_map

    if not folder.is_dir():
        raise ValueError(f"--schemas {folder}: "
                         + ("is a file, not a folder" if os.path.lexists(folder)
                            else "no such folder"))
    if not (folder / SCHEMA_MAP).is_file():
        raise ValueError(f"--schemas {folder}: no {SCHEMA_MAP} in it (the map of schema URLs "
                         "to files that makes it a schema folder)")
    try:
        load_schema_map(folder)
    except (OSError, ValueError, AttributeError, TypeError) as error:
        # OSError: a listed file is missing; ValueError: not JSON/UTF-8; the others: a map
        # that is no {url: file} object
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        where = f" ({error.filename})" if isinstance(error, OSError) and error.filename else ""
        raise ValueError(f"--schemas {folder}: {SCHEMA_MAP} or a schema it lists does not "
                         f"read: {reason}{where}") from None


def summary(report: ValidationReport, strict: bool) -> str:
    """One line: valid or not, with counts."""
    counts = (f"{len(report.errors)} error(s), {len(report.warnings)} warning(s) in "
              f"{report.product_files} product file(s), {report.seconds:.1f} s "
              f"(rule sets: {', '.join(report.rule_sets)})")
    if report.ok(strict):
        return f"[green]valid[/green]: {counts}"
    return f"[red]not valid{' (strict)' if strict else ''}[/red]: {counts}"


def validate(
    release_dir: Annotated[Path, typer.Argument(help="Release folder to check.")],
    json_report: Annotated[Path | None, typer.Option(
        "--json", metavar="REPORT", help="Also write the report as JSON to this file.")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Fail on warnings too, not only on errors.")] = False,
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", metavar="GLOB",
        help="Leave files/folders matching this glob (relative to the release root) alone; "
             "repeat for several.")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Threads for the pixel checks (default: available CPUs, at most 4).")] = None,
    schemas: Annotated[Path | None, typer.Option(
        "--schemas", metavar="DIR", envvar="ICEDAMAGE_STAC_SCHEMAS",
        help="Folder of STAC extension schemas with schema-map.json, for validating the "
             "catalog offline. Schemas it lacks are fetched once and cached.")] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Never fetch a STAC extension schema over the network (those not at "
                          "hand are reported unvalidated).")] = False,
) -> None:
    """Check RELEASE_DIR against the product spec and report every problem.

    Exit status: 0 valid, 1 problems found, 2 bad usage (e.g. no such folder, a --schemas
    folder without schema-map.json, a --json target that cannot be written); options are
    checked before the release is.
    """
    console = Console(stderr=False, emoji=False)
    errors = Console(stderr=True, emoji=False)
    if not release_dir.is_dir():
        raise _usage_error(errors, f"release folder {release_dir} does not exist or is not a "
                                   "folder")
    try:
        if json_report is not None and (reason := unwritable(json_report)) is not None:
            raise ValueError(f"--json {json_report}: {reason}")
        if schemas is not None:
            check_schemas_folder(schemas)
    except ValueError as error:
        raise _usage_error(errors, str(error)) from None
    if schemas is not None:
        os.environ["ICEDAMAGE_STAC_SCHEMAS"] = str(schemas)  # read by the catalog rule sets
    if offline:
        os.environ[OFFLINE_ENV] = "1"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=errors,
                  transient=True) as bars:
        task = bars.add_task("checking the pixels of each shelf-year", total=None)

        def show(done: int, total: int) -> None:
            bars.update(task, completed=done, total=total, description=(
                "checking the pixels of each shelf-year" if done < total else
                "checking layout, plausibility, catalog and metadata"))

        report = validate_release(release_dir, allow=tuple(allow or ()), workers=workers,
                                  progress=show)
    if report.problems:
        console.print(problem_table(report))
    if json_report is not None:
        try:
            write_json_report(report, json_report)
        except OSError as error:  # the folder changed since the check above
            raise _usage_error(errors, f"--json: {error}") from None
        console.print(f"JSON report written to {printable(str(json_report))}", markup=False)
    console.print(summary(report, strict))
    raise typer.Exit(EXIT_OK if report.ok(strict) else EXIT_PROBLEMS)


def register(app: typer.Typer) -> None:
    """Add ``validate`` to the ``icedamage`` application."""
    app.command("validate")(validate)
