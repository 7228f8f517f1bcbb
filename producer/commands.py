"""The ``produce`` command (also ``icedamage produce``): scenes -> products of shelf-years."""

from __future__ import annotations

import importlib
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from producer.cli import VersionOption
from producer.compare import DEFAULT_COMPARE_SCENES
from producer.pipeline import (
    DEFAULT_OUT,
    STAGES,
    ProduceError,
    ProduceOptions,
    YearResult,
    check_request,
    parse_years,
    produce,
    resolve_source,
)
from producer.shelves import UnknownShelfError, parse_shelves
from producer.spec import RELEASED_RESTORATION, RESTORATION_METHODS, SpecError

_STYLE = {"produced": "green", "skipped": "cyan", "not-mapped": "yellow", "failed": "red"}
#: What the write stage imports lazily (``producer.writer``): rio_cogeo, and under it pydantic,
#: which turns a Ctrl-C landing in its validator building into a SchemaError traceback.
WRITER_MODULES: tuple[str, ...] = ("rio_cogeo.cogeo", "rio_cogeo.profiles")


class _StageBars:
    """One rich progress bar per stage, updated by the pipeline's progress callback."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {
            stage: progress.add_task(stage, total=None, what="") for stage in STAGES
        }
        self.writer_ready = False

    def __call__(self, stage: str, done: int, total: int, what: str) -> None:
        if stage == "merge" and not self.writer_ready:
            # a shelf-year is being produced (a skipped one never reaches the merge): import
            # what its write stage needs now, uninterrupted, not after minutes of segmentation
            import_uninterrupted(WRITER_MODULES)
            self.writer_ready = True
        if total == 0:  # nothing to do in this stage for this year (e.g. no SLC-off scene)
            done, total, what = 1, 1, what or "not needed"
        self.progress.update(self.tasks[stage], completed=done, total=total, what=what)


def import_uninterrupted(modules: Sequence[str]) -> None:
    """Import ``modules`` with Ctrl-C held back until they are imported, then delivered.

    An interrupt inside an import can leave a library half-built, and pydantic (under
    rio_cogeo) reports one as a SchemaError traceback instead of the clean exit 130. Outside
    the main thread, or with SIGINT not handled by Python, the modules are imported as is.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        for name in modules:
            importlib.import_module(name)
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        signal.raise_signal(signal.SIGINT)  # the handler now in place acts on it


def check_local_source(spec: str) -> None:
    """``--source local:DIR`` names a folder: say so when DIR is a file or missing, before the
    source reports only that its folder "does not exist"."""
    from producer.sources.registry import parse_source_spec

    kind, folder = parse_source_spec(spec)
    if kind != "local" or folder is None or folder.is_dir():
        return
    if folder.exists():
        raise ProduceError(f"--source {spec}: {folder} is a file, not a folder (local:DIR "
                           "takes a folder of GeoTIFF scenes)")
    raise ProduceError(f"--source {spec}: no such folder {folder} (local:DIR takes a folder of "
                       "GeoTIFF scenes)")


def run_produce(
    shelf: Annotated[str, typer.Option(
        "--shelf", help="Released shelf name (e.g. Totten; case, spaces, '_' and '-' do not "
                        "matter), a comma list, or all.")],
    year: Annotated[str, typer.Option("--year", help="YYYY, YYYY-YYYY or a comma list.")],
    source: Annotated[str, typer.Option(help="Scene source: gee, local:DIR or demo.")] = "demo",
    weights: Annotated[Path | None, typer.Option(
        help="Segmentation checkpoint (.pth or .safetensors); demo weights for --source demo."
    )] = None,
    diffgf: Annotated[Path | None, typer.Option(
        help="DiffGF weights (file or folder) for Landsat 7 SLC-off years.")] = None,
    restoration: Annotated[str, typer.Option(
        help=f"SLC-off restoration: {RELEASED_RESTORATION} (released) or "
             f"{', '.join(m for m in RESTORATION_METHODS if m != RELEASED_RESTORATION)} "
             "(explicit classical fill, named in the file name).")] = RELEASED_RESTORATION,
    extent: Annotated[Path | None, typer.Option(
        "--extent", help="GeoPackage of effective extents (columns shelf, year); default: "
                         "the ROI shrunk inwards by 5 % of its smaller side (Thwaites, whose "
                         "ROI holds its neighbours: a box around the Thwaites shelf).")] = None,
    roi: Annotated[Path | None, typer.Option(
        "--roi", help="GeoPackage with the shelf's ROI outline (a 'shelf' column picks it), "
                      "e.g. the official one; written into the release. Default: the "
                      "release's <Shelf>_ROI.gpkg, else the registry's ROI.")] = None,
    velocity: Annotated[Path | None, typer.Option(
        "--velocity", help="Ice-velocity product: a speed raster, a vx/vy raster, a NetCDF "
                           "with VX and VY (MEaSUREs) or a speed variable V (ITS_LIVE), or one "
                           "NetCDF variable as NETCDF:\"file.nc\":var. When no scene covers "
                           "the ROI, the main scene is chosen for its coverage of the shelf "
                           "and of its fast-flowing ice (paper 2.4.1).")] = None,
    out: Annotated[Path, typer.Option(help="Release folder to write into.")] = DEFAULT_OUT,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    force: Annotated[bool, typer.Option(
        help="Redo shelf-years that are up to date (with --source gee, search and download "
             "again rather than use the cache).")] = False,
    keep_probability: Annotated[bool, typer.Option(
        help="Also write the damage probability (0-100) as an auxiliary COG.")] = False,
    source_index: Annotated[bool, typer.Option(
        help="Write the per-pixel source-scene index as an auxiliary COG.")] = True,
    tta: Annotated[bool, typer.Option(help="Mirror test-time augmentation (paper).")] = True,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Images (windows × TTA views) per forward pass (default 8 on the CPU, 32 on "
             "CUDA).")] = None,
    exact: Annotated[bool, typer.Option(
        help="On CUDA, compute in float32 as the CPU does (no float16 autocast, no TF32): "
             "slower, same classes as the CPU.")] = False,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="Compile the segmentation forward with TorchInductor (CUDA graphs on "
                          "CUDA; needs a C++ compiler on the CPU): about a minute once per "
                          "process, then faster windows; pays off on full-size scenes.")] = False,
    compare_scenes: Annotated[int, typer.Option(
        min=1, help="When several scenes cover the whole ROI cloud-free, segment up to this many "
                    "(best-ranked first) and keep the prediction that agrees best with the "
                    "others (paper 2.4.1's comparative evaluation); 1: the source's ranking "
                    "decides, one segmentation.")] = DEFAULT_COMPARE_SCENES,
    demo_size: Annotated[int | None, typer.Option(
        help="Demo window size in px (default 1024, or $ICEDAMAGE_DEMO_SIZE).")] = None,
    version: VersionOption = False,
) -> None:
    """Produce the type 1 and type 2 damage maps of a shelf for one or more years."""
    console = Console(stderr=True, emoji=False)  # ":name:" in a file name stays as typed
    options = ProduceOptions(
        out=out, weights=weights, diffgf=diffgf, restoration=restoration, extent_file=extent,
        device=device, force=force, keep_probability=keep_probability, source_index=source_index,
        tta=tta, batch_size=batch_size, exact=exact, compare_scenes=compare_scenes,
        compile=compile_model, velocity=velocity, roi_file=roi,
    )
    try:
        years = parse_years(year)
        check_local_source(source)
        scene_source = resolve_source(source, demo_size, force)
        shelves = parse_shelves(shelf)
        for name in shelves:
            check_request(name, scene_source, options, years, shelves)
        if compile_model:  # torch is imported only when asked: a skipping re-run needs none
            from producer.segmentation.inference import check_compile_ready, resolve_device

            check_compile_ready(resolve_device(device))
    except (ValueError, ProduceError, SpecError) as err:  # UnknownShelfError is a SpecError
        console.print(f"[red]error:[/red] {escape(str(err))}")  # user text is not markup
        raise typer.Exit(2) from None

    def report(result: YearResult) -> None:
        style = _STYLE.get(result.status, "white")
        console.print(f"[{style}]{escape(result.shelf)} {result.year}: {result.status}[/{style}] "
                      f"{escape(result.message)}")

    columns = (TextColumn("{task.description:<13}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[what]}", markup=False))  # file names
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            summary = produce(shelves, years, scene_source, options, _StageBars(progress),
                              report)
    except (ProduceError, UnknownShelfError, SpecError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    if len(summary.results) > 1:
        console.print(f"{len(summary.results)} shelf-years: {summary.tally()}")
    if not summary.produced_any:
        console.print("[red]nothing was produced[/red]")
    raise typer.Exit(summary.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``produce`` to the ``icedamage`` application."""
    app.command("produce")(run_produce)


def produce_app() -> typer.Typer:
    """The stand-alone ``produce`` console script."""
    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command()(run_produce)
    return app
