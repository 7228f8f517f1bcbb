"""``icedamage catalog``, ``search``, ``stats`` and ``temporal-consistency`` (thin CLI layer)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    import pystac

    from catalog.stats import DamageStats
    from catalog.temporal import PairConsistency, ShelfSummary

from catalog.uncertainty import (
    PAPER_FACTORS,
    UncertaintyFactors,
    factor_differences,
    factor_warnings,
    load_factors,
)
from producer.spec import SENSOR_ORDER
from producer.writer import unwritable

#: Exit status of a failure during the work (a release file that does not read, no maps).
EXIT_FAILED = 1
#: Exit status of bad usage: options or arguments refused before any work starts.
EXIT_USAGE = 2

# emoji off: user text such as "zenodo:abc: ..." must not turn into an emoji
err = Console(stderr=True, emoji=False)
#: Piped or redirected, tables are not cut to rich's default 80 columns (COLUMNS still rules).
out = Console(emoji=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ
              else 160)
#: ``search --sensor`` help: the spec's sensor tokens ("LE07, LC08 or LC09").
_SENSOR_HELP = (f"{', '.join(SENSOR_ORDER[:-1])} or " if len(SENSOR_ORDER) > 1 else "") \
    + f"{SENSOR_ORDER[-1]} (any of them; any case)."


def _table(*headers: str, title: str | None = None) -> Table:
    """A table whose cells wrap rather than being cut with "…": on a narrow terminal a number
    or an item id is folded onto two lines, never shortened to a wrong-looking value."""
    table = Table(title=title)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


class OutputFormat(StrEnum):
    """How ``icedamage search`` prints its results."""

    table = "table"
    json = "json"
    geojson = "geojson"
    hrefs = "hrefs"


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``message`` as one error line on stderr; the Exit (``code``) to raise.

    The message holds user text (paths, shelf names, record references), so it is escaped:
    brackets are never read as rich markup (a "[/]" would raise MarkupError), nor "[bold]" in a
    path swallowed.
    """
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _usage(message: str) -> typer.Exit:
    """``_fail`` with the bad-usage status: an option or argument refused before any work."""
    return _fail(message, EXIT_USAGE)


def check_output_file(path: Path, option: str) -> None:
    """ValueError unless ``path`` can take a file written through ``atomic_path``
    (``producer.writer.unwritable``), checked before any work."""
    reason = unwritable(Path(path))
    if reason is not None:
        raise ValueError(f"{option} {path}: {reason}")


def _check_plot(path: Path | None) -> None:
    """A ``--plot`` target: a writable .png file (the figure is written as PNG, so another
    suffix would name PNG bytes as, say, JPEG)."""
    if path is None:
        return
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"--plot {path}: the figure is written as PNG; give a .png file name")
    check_output_file(path, "--plot")


def _check_release_dir(release_dir: Path) -> None:
    """A local release argument: an existing folder (a file is said to be one)."""
    if Path(release_dir).is_dir():
        return
    if os.path.lexists(release_dir):
        raise _usage(f"{release_dir}: is a file, not a release folder (give the folder that "
                     "holds <Shelf>/<YYYY>/)")
    raise _usage(f"{release_dir}: release folder not found")


def _factors_option(path: Path | None) -> UncertaintyFactors:
    """The ``--factors`` file's factors (the paper's when None); a file that cannot be read or
    breaks a rule is bad usage naming the option and the file."""
    try:
        return load_factors(path)
    except ValueError as error:
        raise _usage(f"--factors {error}") from None


def _kept_factors(release_dir: Path) -> UncertaintyFactors:
    """Without ``--factors``: the factors the catalog was last built with (a re-run after
    producing another year used to put the paper's back silently over a user's own), as its
    build state records them whole, else as its items record them (a downloaded record has no
    build state), else the paper's. Kept factors other than the paper's are said on stderr."""
    from catalog.build import built_factors

    kept = built_factors(release_dir)
    if kept is None:
        kept = _factors_from_items(release_dir)
    if kept.to_json() != PAPER_FACTORS.to_json():
        paper = PAPER_FACTORS.known_restorations()
        differences = factor_differences(kept, PAPER_FACTORS) + [
            f"λ_{method} {factor:.4g} (the paper gives none)"
            for method, factor in kept.known_restorations().items() if method not in paper]
        if differences:
            err.print("[yellow]note:[/yellow] " + escape(
                f"keeping the uncertainty factors the catalog was built with "
                f"({'; '.join(differences)}); give --factors to change them"), soft_wrap=True)
    return kept


def _factors_from_items(release_dir: Path) -> UncertaintyFactors:
    """The factors the catalog's items record (λ_min, λ_max, the restoration factor of each
    method some item was restored with), a method no item records taking the paper's factor;
    the paper's when they say nothing else, or disagree (said on stderr)."""
    from catalog.stats import catalog_factors

    try:
        recorded = catalog_factors(_catalog_items(release_dir))
    except ValueError as error:
        err.print(f"[yellow]warning:[/yellow] {escape(str(error))}; the paper's factors are "
                  "used", soft_wrap=True)
        return PAPER_FACTORS
    if recorded is None:
        return PAPER_FACTORS
    known = recorded.known_restorations()
    for method, factor in PAPER_FACTORS.known_restorations().items():
        if method not in known:
            recorded = recorded.with_restoration(method, factor)
    return PAPER_FACTORS if not factor_differences(recorded, PAPER_FACTORS) and \
        recorded.known_restorations() == PAPER_FACTORS.known_restorations() else recorded


def catalog_command(
    release_dir: Annotated[Path, typer.Argument(help="Release folder (<Shelf>/<YYYY>/...).")],
    factors: Annotated[Path | None, typer.Option(
        help="Uncertainty factors JSON (icedamage uncertainty); default: those the catalog "
             "was built with, else the paper's.")] = None,
    license: Annotated[str | None, typer.Option(
        help="SPDX license of the data (default: release.yaml's, else CC-BY-4.0).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when nothing changed.")] = False,
) -> None:
    """Write the STAC catalog, metadata.ods, ROI GeoPackages, thumbnails and the item index.

    Exit status: 0 done, 1 failed during the work, 2 bad usage (an option or argument refused
    before any work)."""
    from catalog.build import catalog_release

    _check_release_dir(release_dir)
    chosen = _factors_option(factors) if factors is not None else _kept_factors(release_dir)
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                      transient=True) as progress:
            task = progress.add_task("scanning the release", total=None)

            def show(text: str, done: int, total: int) -> None:
                progress.update(task, description=text, completed=done, total=total)

            result = catalog_release(release_dir, chosen, license=license, force=force,
                                     progress=show)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise _fail(str(error)) from error
    if result.skipped:
        out.print(f"catalog up to date ({result.items} items): {escape(str(result.catalog))} "
                  "(use --force to rebuild)", soft_wrap=True)
    else:
        out.print(f"cataloged {result.items} shelf-years: {escape(str(result.catalog))}",
                  soft_wrap=True)
    for item, fields in sorted(result.unknown_items.items()):
        unknown = ", ".join(f.removeprefix("icedamage:") for f in fields)
        out.print(f"  {escape(item)}: unknown {escape(unknown)}", soft_wrap=True)
    for path in result.left_out:
        err.print(f"warning: {escape(str(path))}: not cataloged, {escape(_name_problem(path))}",
                  soft_wrap=True)
    for path in result.unpaired:
        err.print(f"warning: {escape(str(path))}: cataloged without its type 2 partner "
                  "(layout-partner-missing)", soft_wrap=True)


def _name_problem(path: Path) -> str:
    """What the product spec finds wrong with a file name."""
    from producer.spec import SpecError, parse_name

    try:
        parse_name(path.name)
    except SpecError as error:
        return str(error)
    return "not a product name"


@contextmanager
def _record_download() -> Iterator[Callable[[str, int, int], None]]:
    """A transient bar on stderr while a published record's index arrives (first search only)."""
    with Progress(TextColumn("fetching {task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=err, transient=True) as progress:
        tasks: dict[str, TaskID] = {}

        def show(key: str, done: int, total: int) -> None:
            if key not in tasks:
                tasks[key] = progress.add_task(key, total=total or None)
            progress.update(tasks[key], completed=done)

        yield show


def _parse_bbox(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise _usage(f"--bbox {text!r}: expected minx,miny,maxx,maxy (4 numbers)")
    return values


def _parse_intersects(text: str | None) -> Any:
    """The JSON of ``--intersects``: inline GeoJSON (text starting with ``{`` or ``[``), else a
    file. Inline JSON is tried first, so a long GeoJSON string is never taken for a file name
    (which fails with "File name too long"); what the JSON holds is checked by the search."""
    if text is None:
        return None
    inline = text.lstrip().startswith(("{", "["))
    try:
        return json.loads(text if inline else Path(text).read_text())
    except json.JSONDecodeError as error:
        what = "inline GeoJSON" if inline else f"file {text}"
        raise _usage(f"--intersects: {what} is not valid JSON ({error})") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise _usage(f"--intersects {text!r}: not a GeoJSON string (it does not start with "
                    f"'{{') nor a readable file ({reason})") from None


def search_command(
    source: Annotated[str, typer.Argument(
        help="Release folder, stac/catalog.json or items.parquet; or a published record: "
             "https://zenodo.org/records/ID, zenodo:ID or its DOI 10.5281/zenodo.ID (its index "
             "is fetched once and cached; hrefs then read the maps in place over HTTP).")],
    shelf: Annotated[list[str] | None, typer.Option(
        "--shelf", help="Shelf name, repeatable (case, spaces, '_' and '-' do not matter)."
    )] = None,
    year: Annotated[int | None, typer.Option(help="Exactly this summer.")] = None,
    year_from: Annotated[int | None, typer.Option("--from", help="First summer.")] = None,
    year_to: Annotated[int | None, typer.Option("--to", help="Last summer.")] = None,
    sensor: Annotated[list[str] | None, typer.Option(
        "--sensor", help=_SENSOR_HELP)] = None,
    restored: Annotated[bool | None, typer.Option(
        "--restored/--not-restored", help="Only maps from restored (SLC-off) imagery, or none."
    )] = None,
    bbox: Annotated[str | None, typer.Option(help="minx,miny,maxx,maxy")] = None,
    bbox_crs: Annotated[str, typer.Option(help="EPSG:4326 or EPSG:3031.")] = "EPSG:4326",
    intersects: Annotated[str | None, typer.Option(
        help="GeoJSON geometry, Feature or FeatureCollection (file or inline string, "
             "EPSG:4326).")] = None,
    min_fraction: Annotated[float | None, typer.Option(
        help="Damage fraction ≥ this (a fraction 0–1, not a percentage).")] = None,
    format: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.table,
) -> None:
    """Find shelf-year maps in a cataloged release.

    Every filter is checked before the index is read (or a record's fetched). Exit status: 0
    done (no match included), 1 failed (e.g. the release is not cataloged), 2 bad usage (an
    option or argument refused before any work)."""
    from catalog.search import SearchError, search

    _check_source(source)
    _check_summers(year, year_from, year_to)
    boxes, geometry = _parse_bbox(bbox), _parse_intersects(intersects)
    _check_filters(shelf, sensor, boxes, bbox_crs, geometry, min_fraction)
    try:
        with _record_download() as progress:
            items = search(source, shelves=shelf, year=year, year_from=year_from,
                           year_to=year_to, sensors=sensor, restored=restored,
                           bbox=boxes, bbox_crs=bbox_crs, intersects=geometry,
                           min_fraction=min_fraction, progress=progress)
    except (SearchError, FileNotFoundError) as error:
        raise _fail(str(error)) from error
    if format is OutputFormat.json:
        typer.echo(json.dumps([i.to_dict(transform_hrefs=False) for i in items], indent=2))
    elif format is OutputFormat.geojson:
        typer.echo(json.dumps({"type": "FeatureCollection",
                               "features": [i.to_dict(transform_hrefs=False) for i in items]},
                              indent=2))
    elif format is OutputFormat.hrefs:
        for item in items:
            typer.echo(item.assets["damage_map"].href)
    else:
        table = _table("id", "shelf", "year", "sensors", "restoration", "damage km²", "fraction")
        for item in items:
            table.add_row(*map(Text, search_row(item)))  # cells are data, never markup
        out.print(table)
        out.print(f"{len(items)} item(s)")


def _check_source(source: str, what: str = "release folder or index file") -> None:
    """A ``search``/``stats`` source: a published record, or a local path that exists (a URL
    that names no record, or a missing path, is bad usage, its text kept as typed; ``what``
    says what a local source should be)."""
    from catalog.search import RECORD_FORMS, not_a_record
    from publish.remote import parse_record_ref

    if parse_record_ref(source) is not None:
        return
    if (error := not_a_record(source)) is not None:
        raise _usage(str(error))
    if not os.path.lexists(source):
        looks_remote = source.lower().startswith(("zenodo", "10."))
        raise _usage(f"{source}: {what} not found"
                     + (f" (a published record is {RECORD_FORMS})" if looks_remote else ""))


def _check_summers(year: int | None, year_from: int | None, year_to: int | None) -> None:
    """``--year``, ``--from`` and ``--to`` by the rules ``produce --year`` applies
    (``producer.pipeline.parse_years``: YYYY, a summer some sensor covered that has begun),
    and together: ``--year`` or a range, not both, and a range that runs forwards. Why: an
    impossible filter matches nothing, which would read as "no such map" with exit 0."""
    from producer.pipeline import parse_years

    for option, value in (("--year", year), ("--from", year_from), ("--to", year_to)):
        if value is None:
            continue
        try:
            parse_years(str(value))
        except ValueError as error:  # "--year '21': <rule>": keep the rule, name the option
            raise _usage(f"{option} {value}: {str(error).split(': ', 1)[-1]}") from None
    if year is not None and (year_from is not None or year_to is not None):
        raise _usage(f"--year {year} with --from/--to: give one summer (--year) or a range "
                     "(--from/--to), not both")
    if year_from is not None and year_to is not None and year_from > year_to:
        raise _usage(f"--from {year_from} is after --to {year_to}: no summer lies in that "
                     "range")


def _check_filters(shelves: list[str] | None, sensors: list[str] | None,
                   bbox: tuple[float, ...] | None, bbox_crs: str, intersects: Any,
                   min_fraction: float | None) -> None:
    """The other ``search`` filters, by the rules the search applies (``catalog.search``),
    before any index is read or fetched: their errors are bad usage, not a failed search."""
    from catalog.search import (
        Query,
        SearchError,
        checked_fraction,
        query_geometry,
        released_names,
        sensor_tokens,
    )

    try:
        if shelves:
            released_names(shelves)
        if sensors:
            sensor_tokens(sensors)
        if min_fraction is not None:
            checked_fraction(min_fraction)
        query_geometry(Query(bbox=bbox, bbox_crs=bbox_crs,  # type: ignore[arg-type]
                             intersects=intersects))
    except SearchError as error:
        raise _usage(str(error)) from None


def search_row(item: pystac.Item) -> tuple[str, ...]:
    """The cells of one item in the search table. A map without a valid pixel reads "not
    observed", as in ``icedamage stats``, never 0 km² of damage."""
    from catalog.stats import NOT_OBSERVED

    p = item.properties
    fraction = p.get("icedamage:damage_fraction")
    observed = bool(p.get("icedamage:valid_area_km2"))
    return (item.id, p["icedamage:shelf"], str(p["icedamage:year"]),
            " ".join(p["icedamage:sensors"]), p.get("icedamage:restoration") or "",
            f"{p['icedamage:damage_area_km2']:.2f}" if observed else NOT_OBSERVED,
            f"{fraction:.4f}" if fraction is not None else "")


def stats_command(
    release_dir: Annotated[str, typer.Argument(
        help="Release folder, or a published record (https://zenodo.org/records/ID, zenodo:ID, "
             "10.5281/zenodo.ID): then the numbers its catalog recorded.")],
    factors: Annotated[Path | None, typer.Option(
        help="Uncertainty factors JSON (default: those the release was cataloged with, else "
             "the paper's; for a record, its own).")] = None,
    out_table: Annotated[Path | None, typer.Option("--out", help="Table file (.csv or .ods).")
                         ] = None,
    plot: Annotated[Path | None, typer.Option(help="Fig. 11 style PNG (a .png file).")
                    ] = None,
) -> None:
    """Damage area, shelf area and fraction with uncertainty bounds per shelf-year.

    Options and output files are checked before any map is read. Exit status: 0 done, 1
    failed during the work, 2 bad usage (an option or argument refused before any work)."""
    from catalog.search import SearchError
    from catalog.stats import console_cells, plot_stats, unknown_bound_note, write_stats_table
    from publish.remote import parse_record_ref

    _check_source(release_dir, "release folder")
    if parse_record_ref(release_dir) is None:
        _check_release_dir(Path(release_dir))
    given = _factors_option(factors) if factors is not None else None
    _check_outputs(out_table, plot)
    try:
        if parse_record_ref(release_dir) is not None:
            rows = _record_stats(release_dir, given, factors)
        else:
            rows = _local_stats(Path(release_dir), given, factors)
        if not rows:
            raise ValueError(f"{release_dir}: no type 1 products found")
        if out_table is not None:
            write_stats_table(rows, out_table)
        if plot is not None:
            plot_stats(rows, plot)
    except (FileNotFoundError, ValueError, OSError, SearchError) as error:
        raise _fail(str(error)) from error
    table = _table("shelf", "year", "restoration", "damage km² (low-high)", "shelf km²",
                   "fraction % (low-high)")
    for r in rows:
        table.add_row(*map(Text, (r.shelf, str(r.year), r.restoration or "",
                                  *console_cells(r))))
    out.print(table)
    for note in (*_range_notes(rows), unknown_bound_note(rows)):
        if note:
            err.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)


def _check_outputs(out_table: Path | None, plot: Path | None, medians: bool = False) -> None:
    """``--out`` (a .csv or .ods table; with ``medians``, the ``<stem>_medians.csv`` a CSV
    table brings beside it too) and ``--plot`` (a .png), checked before any work: suffix,
    not a folder, a folder that can take them. Their errors are bad usage."""
    from catalog.temporal import check_table_path, medians_csv_path

    try:
        if out_table is not None:
            check_table_path(out_table)
            check_output_file(out_table, "--out")
            if medians and Path(out_table).suffix.lower() == ".csv":
                check_output_file(medians_csv_path(out_table), "--out (its medians table)")
        _check_plot(plot)
    except ValueError as error:
        raise _usage(str(error)) from None


def _record_stats(ref: str, given: UncertaintyFactors | None, path: Path | None
                  ) -> list[DamageStats]:
    """Stats of a published record from its items (their own factors unless ``given``)."""
    from catalog.search import search
    from catalog.stats import catalogued_stats

    with _record_download() as progress:
        items = search(ref, progress=progress)
    if given is not None:
        _warn_other_factors(given, path, items, "the record's")
    return catalogued_stats(items, given)


def _local_stats(release_dir: Path, given: UncertaintyFactors | None, path: Path | None
                 ) -> list[DamageStats]:
    """Stats counted from a local release's pixels, with ``given`` factors, else those its
    catalog was built with (so the table equals its items), else the paper's."""
    from catalog.stats import catalog_factors, item_main_dates, release_stats

    items = _catalog_items(release_dir)
    if given is not None:
        _warn_other_factors(given, path, items, f"{release_dir}'s catalog")
        recorded = None
    else:
        recorded = catalog_factors(items)  # items that disagree: an error, give --factors
    with Progress(TextColumn("counting damage pixels"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bars:
        task = bars.add_task("maps", total=None)
        return release_stats(release_dir, given or recorded or PAPER_FACTORS,
                             lambda done, total: bars.update(task, completed=done, total=total),
                             item_main_dates(items))


def _catalog_items(release_dir: Path) -> list[pystac.Item]:
    """The cataloged items of a local release ([] when it is not cataloged). An index that
    cannot be read is a warning: the paper's factors are used then, and said to be."""
    from catalog.search import SearchError, locate_index, search

    try:
        locate_index(release_dir)
    except SearchError:
        return []  # not cataloged
    try:
        return search(release_dir)
    except SearchError as error:
        err.print(f"[yellow]warning:[/yellow] the catalog's factors cannot be read "
                  f"({escape(str(error))}); using --factors or the paper's", soft_wrap=True)
        return []


def _warn_other_factors(given: UncertaintyFactors, path: Path | None,
                        items: list[pystac.Item], whose: str) -> None:
    """A warning on stderr when ``--factors`` differs from the factors the items record."""
    from catalog.stats import catalog_factors

    try:
        recorded = catalog_factors(items)
    except ValueError as error:
        err.print(f"[yellow]warning:[/yellow] {escape(str(error))}", soft_wrap=True)
        return
    differences = factor_differences(given, recorded) if recorded is not None else []
    if differences:
        err.print("[yellow]warning:[/yellow] " + escape(
            f"--factors {path} differs from the factors {whose} items were cataloged with "
            f"({'; '.join(differences)}): this table uses --factors, the items keep theirs "
            f"(rebuild a local catalog with `icedamage catalog --factors {path} --force`)"),
            soft_wrap=True)


def _range_notes(rows: list[DamageStats]) -> list[str]:
    """``factor_warnings`` of the factors the rows took (a range that misses the mapped value
    or has zero width)."""
    return factor_warnings(UncertaintyFactors(min(r.lambda_lower for r in rows),
                                              max(r.lambda_upper for r in rows), None))


def temporal_consistency_command(
    release_dir: Annotated[Path, typer.Argument(help="Release folder (<Shelf>/<YYYY>/...).")],
    velocity: Annotated[Path | None, typer.Option(
        help="Ice-velocity components (MEaSUREs NetCDF with VX, VY, or a vx/vy raster in "
             "EPSG:3031): also the metrics with the earlier map advected (Lagrangian "
             "correction, paper Eq. 13). It must cover the shelves: none of a shelf is an "
             "error, under 95 % of its cells a warning.")] = None,
    shelf: Annotated[str | None, typer.Option(
        help="Only these shelves (a name or a comma list, typed loosely).")] = None,
    out_table: Annotated[Path | None, typer.Option(
        "--out", help="Table of the pairs: .csv (the medians go to <stem>_medians.csv beside "
                      "it) or .ods (with a sheet of the medians).")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of the metrics per pair (a .png "
                                                   "file).")] = None,
) -> None:
    """Multi-temporal consistency of damage density (paper 2.5.2): Spearman r_s, Lin's CCC
    and RMSE of each shelf's temporally adjacent maps on 900 m cells, and their medians.

    Options and output files are checked before any map is read; maps whose Δt takes a
    stand-in date, and shelves the velocity covers only partly, are warned about on stderr.
    Exit status: 0 done, 1 failed during the work, 2 bad usage (an option or argument refused
    before any work)."""
    from catalog.stats import item_main_dates
    from catalog.temporal import (
        check_velocity,
        plot_consistency,
        release_consistency,
        shelf_summaries,
        write_consistency_table,
    )
    from producer.shelves import parse_shelves
    from producer.velocity import VelocityError, components_on_grid, velocity_layout

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)

    _check_release_dir(release_dir)
    _check_outputs(out_table, plot, medians=True)
    try:
        shelves = parse_shelves(shelf) if shelf else []
        layout = velocity_layout(velocity) if velocity is not None else None
        if layout is not None:
            check_velocity(layout)
    except (ValueError, OSError, VelocityError) as error:
        raise _usage(str(error)) from error
    try:
        dates = item_main_dates(_catalog_items(release_dir))
        with Progress(TextColumn("density maps"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err, transient=True) as bars:
            task = bars.add_task("maps", total=None)
            pairs = release_consistency(
                release_dir, dates,
                (lambda grid: components_on_grid(layout, grid)) if layout else None,
                shelves, lambda done, total: bars.update(task, completed=done, total=total),
                warn=warn, velocity_name=f"--velocity {velocity}")
        if not pairs:
            raise ValueError(f"{release_dir}: no shelf with two type 1 maps or more"
                             + (f" among {', '.join(shelves)}" if shelves else ""))
        written = write_consistency_table(pairs, out_table) if out_table is not None else []
        if plot is not None:
            written.append(plot_consistency(pairs, plot))
    except (FileNotFoundError, ValueError, OSError, VelocityError) as error:
        raise _fail(str(error)) from error
    summaries = shelf_summaries(pairs)
    _print_consistency(pairs, summaries)
    for lone, count in _shelves_without_pairs(release_dir, {p.shelf for p in pairs}, shelves):
        err.print(f"[yellow]note:[/yellow] {escape(lone)}: {count} type 1 map, no pair to "
                  "compare", soft_wrap=True)
    for s in summaries:
        for what, counts in (("", s.plain_counts), ("Lagrangian ", s.corrected_counts)):
            fewer = [f"{name} over {n}" for name, n in zip(("r_s", "ρ_c", "RMSE"),
                                                         counts or (), strict=False)
                     if n < s.pairs]
            if fewer:
                err.print(f"[yellow]note:[/yellow] {escape(s.shelf)}: {what}medians of "
                          f"{', '.join(fewer)} of {s.pairs} pairs (the others have no value: "
                          "too few common cells, or a constant map)", soft_wrap=True)
    for path in written:
        err.print(f"wrote {escape(str(path))}", soft_wrap=True)


def _shelves_without_pairs(release_dir: Path, paired: set[str], chosen: list[str]
                           ) -> list[tuple[str, int]]:
    """Shelves (of ``chosen``, or all) with a type 1 map but none to pair it with, so a user
    does not take a shelf missing from the tables for one that was checked."""
    from catalog.release import scan_release

    counts: dict[str, int] = {}
    for files in scan_release(release_dir):
        if files.damage_map is not None:
            counts[files.name.shelf] = counts.get(files.name.shelf, 0) + 1
    return [(shelf, n) for shelf, n in sorted(counts.items())
            if shelf not in paired and (not chosen or shelf in chosen)]


def _print_consistency(pairs: list[PairConsistency], summaries: list[ShelfSummary]) -> None:
    """The pairs, then the medians per shelf (the paper's Tables 6 and 7)."""
    def cell(value: float) -> str:
        return "n/a" if value != value else f"{value:.3f}"  # NaN: too few common cells

    lagrangian = any(p.corrected is not None for p in pairs)
    table = _table("shelf", "pair", "Δt yr", "cells", "r_s", "ρ_c", "RMSE",
                   *(("cells (L)", "r_s (L)", "ρ_c (L)", "RMSE (L)") if lagrangian else ()),
                   title="temporally adjacent pairs" + (" (L: Lagrangian)" if lagrangian else ""))
    for p in pairs:
        extra = () if p.corrected is None else (
            str(p.corrected.cells), *(cell(v) for v in (p.corrected.spearman, p.corrected.ccc,
                                                         p.corrected.rmse)))
        table.add_row(p.shelf, f"{p.earlier}→{p.later}", f"{p.dt_years:.2f}",
                      str(p.plain.cells), cell(p.plain.spearman), cell(p.plain.ccc),
                      cell(p.plain.rmse), *extra)
    out.print(table)
    medians = _table("shelf", "pairs", "median r_s", "median ρ_c", "median RMSE",
                     *(("Lagrangian r_s", "Lagrangian ρ_c", "Lagrangian RMSE")
                       if lagrangian else ()), title="medians per shelf (paper Tables 6-7)")
    for s in summaries:
        medians.add_row(s.shelf, str(s.pairs), *(cell(v) for v in s.plain),
                        *((cell(v) for v in s.corrected) if s.corrected else ()))
    out.print(medians)


def register(app: typer.Typer) -> None:
    """Add the catalog's commands to the ``icedamage`` app (and its rules to ``validate``)."""
    from catalog.rules import register_catalog_rule_sets

    register_catalog_rule_sets()
    app.command("catalog")(catalog_command)
    app.command("search")(search_command)
    app.command("stats")(stats_command)
    app.command("temporal-consistency")(temporal_consistency_command)
