"""Benchmark: ``validate_release`` against one plain rasterio read of the same files.

Writes (once, cached in the temp folder) a release of 20 shelf-years of 2,000 x 2,000 px with
the real writer, then times, warm (files in the OS page cache, each measured after a warm-up
run):

* plain read: open every product GeoTIFF with rasterio and ``read()`` it whole, one after the
  other (no overviews, no checks) - the floor of any validator that looks at every pixel;
* the same plain read spread over threads, as a gauge of the cores free during the run;
* the validator with one thread and with a pool of one thread per CPU (the default picks
  the number of CPUs free at the start of the run).

Wall time is what a user waits; CPU time (all threads) is the work done, which a busy machine
distorts less.

Run: ``PYTHONPATH=. python bench/validate.py [--repeat N] [--rebuild]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import rasterio
from rich.console import Console
from rich.table import Table

from producer.shelves import SHELVES
from producer.writer import write_products
from tests.release_factory import ShelfYear, fixture_arrays, fixture_grid
from validation.engine import validate_release
from validation.product_rules import default_workers

SIZE = (2000, 2000)
CACHE = Path(tempfile.gettempdir()) / "icedamage-bench-validate-v1"
#: (year, sensors, restoration) cycled over the shelves: 20 plausible shelf-years.
YEARS: tuple[tuple[int, tuple[str, ...], str | None], ...] = (
    (2001, ("LE07",), None),
    (2008, ("LE07",), "DiffGF"),
    (2016, ("LC08",), None),
    (2022, ("LC08", "LC09"), None),
)


def shelf_years() -> list[ShelfYear]:
    """20 shelf-years: every registered shelf, two years each."""
    items = []
    for i, shelf in enumerate(SHELVES):
        for j in range(2):
            year, sensors, restoration = YEARS[(2 * i + j) % len(YEARS)]
            items.append(ShelfYear(shelf, year, sensors, restoration, size=SIZE))
    return items


def build(root: Path, rebuild: bool = False) -> list[Path]:
    """The benchmark release (written once with the writer); its product files."""
    done = root.parent / "complete"
    if rebuild or not done.exists():
        done.unlink(missing_ok=True)
        for seed, item in enumerate(shelf_years()):
            damage, extent = fixture_arrays(item, seed)
            write_products(root, item.shelf, item.year, item.sensors, item.restoration,
                           damage, extent, fixture_grid(item.shelf, item.size))
        done.write_text("ok\n")
    return sorted(root.rglob("*.tif"))


def plain_read(files: list[Path]) -> None:
    """Open and read every file whole, one after the other."""
    for path in files:
        with rasterio.open(path) as src:
            src.read()


def plain_read_threads(files: list[Path], workers: int) -> None:
    """The plain read spread over a thread pool: how much parallelism the machine offers now."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(plain_read, [[path] for path in files]))


def timed(actions: dict[str, Callable[[], object]],
          repeat: int) -> dict[str, tuple[float, float]]:
    """(median wall s, median CPU s of all threads) per action.

    One warm-up run each, then ``repeat`` rounds that run every action in turn, so that a
    change in the machine's load affects all of them alike.
    """
    for action in actions.values():
        action()
    walls: dict[str, list[float]] = {name: [] for name in actions}
    cpus: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeat):
        for name, action in actions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            action()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name]))
            for name in actions}


def main() -> None:
    """Build (or reuse) the release, time each way of reading it, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    root = CACHE / "release"
    files = build(root, args.rebuild)
    report = validate_release(root)
    # the bench release is not cataloged (the products are what is timed): that one warning
    unexpected = [p for p in report.problems if p.rule != "catalog-missing"]
    assert report.ok() and not unexpected, report.to_json()
    megapixels = len(files) * SIZE[0] * SIZE[1] / 1e6
    threads = max(2, min(4, os.cpu_count() or 1))
    results = timed({
        "plain rasterio read (whole files)": lambda: plain_read(files),
        f"plain read, {threads} threads (gauge of free cores)":
            lambda: plain_read_threads(files, threads),
        "validate_release, 1 thread": lambda: validate_release(root, workers=1),
        f"validate_release, {threads} threads": lambda: validate_release(root, workers=threads),
    }, args.repeat)
    rows = list(results.items())
    base_wall, base_cpu = rows[0][1]
    table = Table(title=f"{len(files)} files, {megapixels:.0f} Mpx, {root}")
    for column in ("what", "wall s", "x plain (wall)", "CPU s", "x plain (CPU)"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for what, (wall, cpu) in rows:
        table.add_row(what, f"{wall:.3f}", f"{wall / base_wall:.2f}", f"{cpu:.3f}",
                      f"{cpu / base_cpu:.2f}")
    load = os.getloadavg()[0]
    Console().print(f"medians of {args.repeat} interleaved warm runs; load average {load:.1f} on "
                    f"{os.cpu_count()} CPUs; validate_release would now pick "
                    f"{default_workers()} thread(s)")
    Console().print(table)


if __name__ == "__main__":
    main()
