"""Pixel-level rule set: per-file raster rules and pair rules in one read of each file.

For each shelf-year the two product files are opened once, their headers and COG layout
checked, and then read side by side one window (a row of tiles) at a time: every window feeds
the value tally of each file and the damage-consistency tally of the pair. Shelf-years are
checked in a thread pool when CPUs are free (GDAL and numpy release the GIL while they decode
and compare).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

from validation.inventory import Pair, ProductFile, pairs_of, scan_release
from validation.pair_rules import PairTally, grid_problems
from validation.raster_rules import (
    UNREADABLE,
    Buffers,
    ValueTally,
    cog_problems,
    header_problems,
    overview_problems,
    value_problem,
    windows,
)
from validation.report import Problem


@dataclass
class _OpenFile:
    """A product file being read, with its value tally and whether it still reads."""

    product: ProductFile
    src: rasterio.io.DatasetReader
    tally: ValueTally = field(init=False)
    buffers: Buffers = field(init=False)
    readable: bool = True

    def __post_init__(self) -> None:
        self.tally = ValueTally(self.product.name.product_type.values)
        self.buffers = Buffers()


def _open(product: ProductFile, stack: ExitStack, problems: list[Problem]) -> _OpenFile | None:
    """Open a product and check its header and COG layout; None if it does not open."""
    try:
        src = stack.enter_context(rasterio.open(product.path))
    except RasterioError as exc:
        problems.append(Problem(product.rel, UNREADABLE, f"does not open: {_reason(exc)}",
                                "a readable GeoTIFF"))
        return None
    problems.extend(header_problems(product.rel, src, product.name.product_type))
    problems.extend(cog_problems(product.rel, product.path))
    return _OpenFile(product, src)


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
            classes_only &= item.tally.update(block)
            blocks.append(block)
        if pair is not None and len(blocks) == 2:
            pair.update(blocks[0], blocks[1], classes_only)
        if not any(item.readable for item in group):
            break
    if pair is not None:
        problems.extend(pair.problems(group[0].product.rel, group[1].product.rel))


def check_pair(pair: Pair) -> list[Problem]:
    """Every raster and pair problem of one shelf-year's files."""
    problems: list[Problem] = []
    with rasterio.Env(), ExitStack() as stack:
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
            product_type = item.product.name.product_type
            problems.extend(value_problem(item.product.rel, item.tally, product_type))
            if item.readable:
                problems.extend(overview_problems(item.product.rel, item.src, item.product.path,
                                                  product_type))
    return problems


#: Rule id of a shelf-year whose checks raised an unexpected error (reported, run goes on).
CHECK_FAILED = "raster-check-failed"


def checked_pair(pair: Pair) -> list[Problem]:
    """``check_pair``, with an unexpected error reported against the pair's first file.

    One GDAL environment serves all the pair's opens (about eight with rio-cogeo's): without
    it, rasterio sets one up and tears it down per open (3–9 % of a validation's CPU here).
    """
    try:
        with rasterio.Env():
            return check_pair(pair)
    except Exception as exc:  # noqa: BLE001 - one odd file must not hide the other problems
        return [Problem(pair.files()[0].rel, CHECK_FAILED, f"{type(exc).__name__}: {exc}",
                        "the raster and pair checks complete")]


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
        """Every raster and pair problem, shelf-years checked in parallel."""
        inventory = scan_release(Path(release_dir), self.allow)
        pairs = [pair for folder in inventory.years for pair in pairs_of(folder)]
        workers = self.workers or default_workers()
        if workers == 1 or len(pairs) < 2:
            results: Iterator[list[Problem]] = map(checked_pair, pairs)
            yield from self._counted(results, len(pairs))
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="validate") as pool:
            yield from self._counted(pool.map(checked_pair, pairs), len(pairs))

    def _counted(self, results: Iterator[list[Problem]], total: int) -> Iterator[Problem]:
        """The problems of each pair in turn, reporting progress as pairs complete."""
        if self.progress is not None:
            self.progress(0, total)
        for done, problems in enumerate(results, start=1):
            yield from problems
            if self.progress is not None:
                self.progress(done, total)


def product_rules(allow: Sequence[str] = (), workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ProductRules:
    """The pixel-level rule set."""
    return ProductRules(tuple(allow), workers, progress=progress)
