"""Pixel-level rule set: per-file raster rules and pair rules in one read of each file.

For each shelf-year the two product files are opened once, their headers and COG layout
checked, and then read side by side one window (a row of tiles) at a time: every window feeds
the value and content tallies of each file, the comparison of each file's overviews with it,
and the damage-consistency tally of the pair. Shelf-years are checked in a thread pool when
CPUs are free (GDAL and numpy release the GIL while they decode and compare). Once all are
done, the grid origins of each shelf's years are compared (they must stack).

Every open goes through GDAL with PAM disabled (``FILE_ONLY_CONFIG``): a ``.aux.xml`` sidecar
cannot supply a nodata value or scale that the file itself lacks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.windows
from rasterio.errors import RasterioError

from producer.provenance import provenance_path
from producer.spec import SOURCE_TAG, TYPE1
from producer.writer import scan_cache
from validation.inventory import Pair, ProductFile, pairs_of, scan_release
from validation.pair_rules import PairTally, grid_problems
from validation.plausibility_rules import ContentTally, content_problems
from validation.raster_rules import (
    FILE_ONLY_CONFIG,
    UNREADABLE,
    Buffers,
    OverviewCheck,
    ValueTally,
    cog_problems,
    header_problems,
    lattice_of,
    stack_problems,
    value_problem,
    windows,
)
from validation.report import Problem


@dataclass
class _OpenFile:
    """A product file being read: its tallies, its overviews' check, whether it still reads."""

    product: ProductFile
    src: rasterio.io.DatasetReader
    overviews: OverviewCheck
    tally: ValueTally = field(init=False)
    content: ContentTally = field(init=False)
    buffers: Buffers = field(init=False)
    readable: bool = True

    def __post_init__(self) -> None:
        product_type = self.product.name.product_type
        self.tally = ValueTally(product_type.values)
        self.content = ContentTally(product_type)
        self.buffers = Buffers()

    def feed(self, window: rasterio.windows.Window, block: np.ndarray) -> bool:
        """Give one window to every per-file check; True if it held only class values."""
        clean = self.tally.update(block)
        self.content.update(block)
        self.overviews.update(window, block)
        return clean

    def results(self) -> list[Problem]:
        """The per-file findings of the pixel pass (values, overviews, content)."""
        product_type = self.product.name.product_type
        rel = self.product.rel
        found = value_problem(rel, self.tally, product_type)
        if not self.readable:  # a partial read: only what is certain
            return found + self.overviews.problems
        found += self.overviews.results()
        if not self.tally.bad:
            found += content_problems(rel, self.content)
        return found


@dataclass
class PairOutcome:
    """What the checks of one shelf-year found, and the grid lattice of each product read."""

    problems: list[Problem]
    lattices: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Release-relative path -> ``lattice_offset`` (30 m north-up files only)."""


def _open(product: ProductFile, stack: ExitStack, problems: list[Problem]) -> _OpenFile | None:
    """Open a product and check its header and COG layout; None if it does not open."""
    try:
        src = stack.enter_context(rasterio.open(product.path))
    except RasterioError as exc:
        problems.append(Problem(product.rel, UNREADABLE, f"does not open: {_reason(exc)}",
                                "a readable GeoTIFF"))
        return None
    product_type = product.name.product_type
    problems.extend(header_problems(product.rel, src, product_type))
    problems.extend(cog_problems(product.rel, product.path))
    overviews = OverviewCheck(product.rel, src, product.path, product_type, stack)
    return _OpenFile(product, src, overviews)


def _reason(exc: BaseException) -> str:
    """An exception's message, with GDAL's underlying error when rasterio chained one."""
    cause = exc.__cause__ or exc.__context__
    return f"{exc} ({cause})" if cause is not None and str(cause) not in str(exc) else str(exc)


def _scan(group: list[_OpenFile], problems: list[Problem]) -> None:
    """Read a group (one file, or a pair on the same grid) window by window, feeding tallies."""
    pair = PairTally() if len(group) == 2 else None
    height, width = group[0].src.shape
    for window in windows(height, width):
        blocks = []
        classes_only = True
        for item in group:
            if not item.readable:
                continue
            try:
                out = item.buffers.get("block", (int(window.height), int(window.width)),
                                       item.src.dtypes[0])
                block = item.src.read(1, window=window, out=out)
            except RasterioError as exc:
                item.readable = False
                problems.append(Problem(item.product.rel, UNREADABLE,
                                        f"window {window.flatten()}: {_reason(exc)}",
                                        "every block readable (complete file)"))
                continue
            classes_only &= item.feed(window, block)
            blocks.append(block)
        if pair is not None and len(blocks) == 2:
            pair.update(blocks[0], blocks[1], classes_only)
        if not any(item.readable for item in group):
            break
    if pair is not None:
        problems.extend(pair.problems(group[0].product.rel, group[1].product.rel))


def check_pair(pair: Pair) -> PairOutcome:
    """Every raster and pair problem of one shelf-year's files, and their grid lattices."""
    outcome = PairOutcome([])
    problems = outcome.problems
    with rasterio.Env(**FILE_ONLY_CONFIG), ExitStack() as stack:
        opened = [o for o in (_open(p, stack, problems) for p in pair.files()) if o is not None]
        together = len(opened) == 2
        if together:
            grid = grid_problems(opened[0].product.rel, opened[0].src,
                                 opened[1].product.rel, opened[1].src)
            problems.extend(grid)
            together = not grid
        for group in ([opened] if together else [[o] for o in opened]):
            _scan(group, problems)
        for item in opened:
            problems.extend(item.results())
            lattice = lattice_of(item.src)
            if lattice is not None:
                outcome.lattices[item.product.rel] = lattice
    return outcome


#: Rule id of a shelf-year whose checks raised an unexpected error (reported, run goes on).
CHECK_FAILED = "raster-check-failed"


def checked_pair(pair: Pair) -> PairOutcome:
    """``check_pair``, with an unexpected error reported against the pair's first file.

    One GDAL environment serves all the pair's opens (about eight with rio-cogeo's): without
    it, rasterio sets one up and tears it down per open (3–9 % of a validation's CPU here).
    It disables PAM (``FILE_ONLY_CONFIG``) for every one of them.
    """
    try:
        with rasterio.Env(**FILE_ONLY_CONFIG):
            return check_pair(pair)
    except Exception as exc:  # noqa: BLE001 - one odd file must not hide the other problems
        return PairOutcome([Problem(pair.files()[0].rel, CHECK_FAILED,
                                    f"{type(exc).__name__}: {exc}",
                                    "the raster and pair checks complete")])


def default_workers() -> int:
    """Threads for the pixel checks: the CPUs that are free now (1 to 4).

    Threads only help on idle cores; on a saturated machine they add contention and no speed
    (measured: see docs/benchmarks.md), so the one-minute load average, less this process,
    is taken off the CPUs this process may use.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    try:
        busy = max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:  # pragma: no cover - no load average on this platform
        busy = 0.0
    return max(1, min(4, cpus, int(cpus - busy + 0.5)))


@dataclass(frozen=True)
class ProductRules:
    """Header, encoding, COG, value and pair rules of every product file."""

    allow: tuple[str, ...] = ()
    workers: int | None = None
    name: str = "products"
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)
    """Called as ``progress(pairs_checked, pairs_total)`` after each shelf-year's pair."""

    def check(self, release_dir: Path) -> Iterator[Problem]:
        """Every raster and pair problem, shelf-years checked in parallel, then the lattices
        of each shelf's years compared.

        The whole scan runs under GDAL's block cache capped at ``SCAN_CACHE_BYTES``: each tile
        is read once, so GDAL's default cache (5 % of RAM) only held every decoded tile of the
        open files (1,132 MB for one Amery shelf-year, 366 MB capped, less CPU as well). The
        cap is process-wide (``producer.writer.scan_cache`` counts the scans under it, other
        rule sets' included); it is taken once here around all the workers, and the problems
        are handed out after the scan so that it is not held across a ``yield``.
        """
        inventory = scan_release(Path(release_dir), self.allow)
        pairs = [pair for folder in inventory.years for pair in pairs_of(folder)]
        workers = self.workers or default_workers()
        lattices: dict[str, tuple[float, float]] = {}
        with scan_cache():
            if workers == 1 or len(pairs) < 2:
                results: Iterator[PairOutcome] = map(checked_pair, pairs)
                problems = list(self._counted(results, len(pairs), lattices))
            else:
                with ThreadPoolExecutor(max_workers=workers,
                                        thread_name_prefix="validate") as pool:
                    problems = list(self._counted(pool.map(checked_pair, pairs), len(pairs),
                                                  lattices))
        yield from problems
        yield from stack_problems(lattices)
        yield from missing_record_problems(Path(release_dir), pairs)

    def _counted(self, results: Iterator[PairOutcome], total: int,
                 lattices: dict[str, tuple[float, float]]) -> Iterator[Problem]:
        """The problems of each pair in turn, reporting progress as pairs complete and
        collecting their lattices."""
        if self.progress is not None:
            self.progress(0, total)
        for done, outcome in enumerate(results, start=1):
            yield from outcome.problems
            lattices.update(outcome.lattices)
            if self.progress is not None:
                self.progress(done, total)


#: Rule id of products made by ``produce`` whose provenance record is missing.
RECORD_MISSING = "provenance-missing"


def _record_of(release_dir: Path, pair: Pair) -> Path:
    """Where the provenance record of a pair's shelf-year lies."""
    name = pair.files()[0].name
    return provenance_path(release_dir, name if name.product_type is TYPE1 else name.partner())


def missing_record_problems(release_dir: Path, pairs: Sequence[Pair]) -> Iterator[Problem]:
    """Products ``produce`` made (their ``SOURCE_TAG``) without the provenance record that
    ``produce`` writes last, in a release holding records of other shelf-years.

    ``produce`` withdraws a shelf-year's old record, renames its new files (written apart
    first) into place, then writes the new record: a run killed in between leaves maps whose
    scenes and model nobody records, which the catalog and publish would take as a release
    without records; so does a deleted record. A release with no record at all (the
    published v1, or one trimmed of its records on purpose) and untagged products (the
    authors' maps carried into a newer version) are not reported.
    """
    missing = [pair for pair in pairs if pair.files()
               and not _record_of(release_dir, pair).exists()]
    if not missing or len(missing) == len(pairs):
        return
    for pair in missing:
        product = pair.files()[0]
        try:
            with rasterio.Env(**FILE_ONLY_CONFIG), rasterio.open(product.path) as src:
                source = src.tags().get(SOURCE_TAG)
        except RasterioError:
            continue  # reported by the raster rules
        if source is not None:
            yield Problem(product.rel, RECORD_MISSING,
                          f"made by produce ({SOURCE_TAG}={source}), no "
                          f"{_record_of(release_dir, pair).name}",
                          "the provenance record produce writes with the maps (an interrupted "
                          "run, or a deleted record: run produce again for this shelf-year)")


def product_rules(allow: Sequence[str] = (), workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ProductRules:
    """The pixel-level rule set."""
    return ProductRules(tuple(allow), workers, progress=progress)
