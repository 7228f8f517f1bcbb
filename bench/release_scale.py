"""Benchmark: ``icedamage catalog``, ``validate``, ``stats`` at dataset scale, as users run them.

Builds (once, cached in ``$TMPDIR/icedamage-bench-release-scale-v1``) two synthetic releases
with the real writer and fixture provenance records:

* ``amery1``: one Amery shelf-year on the grid covering Amery's ROI (20,676 x 15,153 px, the
  largest grid of the dataset; ~30 s to write), the case for memory and per-pixel work;
* ``rN``: every registered shelf over ``--years`` summers (default 26: 1999-2024, 260
  shelf-years) at 256 x 256 px, the case for per-item work (metadata.ods rows, STAC items).

Then each command runs in a fresh process (imports, GDAL's block cache and the heap as a user
gets them): ``catalog --force`` (a full build), ``catalog`` again (up to date: nothing to do),
``catalog`` after one shelf-year's files were re-written (touched: the files kept from the last
run are not read again) and, on Amery, after its provenance record was edited (the maps are
not read again), ``validate --workers 1`` and ``stats``. Two function-level measures
complete them, each in its own process as well: ``count_pixels`` of the Amery type-1 map (one
call), and the footprint check's ``geometry_distance_m`` between the Amery item's geometry and
the footprint rebuilt from its file (best of 3). Rounds run every measure in turn, so a change
in the machine's load affects all alike; the table gives medians of wall time, CPU time (user +
system) and peak resident memory.

``--tree PATH`` (repeatable) measures other checkouts of this repository too, interleaved with
this one (e.g. a ``git worktree`` of an earlier commit: before/after tables), each on its own
copy of the releases. Default run: 3
rounds, about 2 minutes on a 2-core machine once the releases exist.

Run: ``PYTHONPATH=. python bench/release_scale.py [--repeat N] [--years N] [--tree PATH]...
[--rebuild]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from producer.grid import Grid  # noqa: E402
from producer.provenance import provenance_path  # noqa: E402
from producer.shelves import SHELVES, roi_polygon  # noqa: E402
from producer.writer import write_products, write_products_rows  # noqa: E402
from tests.release_factory import ShelfYear, fixture_grid, fixture_provenance  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "icedamage-bench-release-scale-v1"
SMALL = (256, 256)
BIG_YEAR = 2020
STAC_SCHEMAS = ROOT.parent / "shared" / "stac-schemas"

#: Counts one map in a fresh process (one call, as ``stats`` and ``catalog`` make it).
COUNT = """
import sys, time
from pathlib import Path
from catalog.stats import count_pixels
start = time.process_time()
print(count_pixels(Path(sys.argv[1])), file=sys.stderr)
print(time.process_time() - start)
"""
#: The footprint check's distance for an item whose geometry is the one the builder makes.
FOOTPRINT = """
import sys, time
from pathlib import Path
import pystac
from shapely.geometry import shape
from catalog.geometry import geojson_and_bbox, grid_footprint
from catalog.release import raster_facts
from catalog.rules.consistency import geometry_distance_m
item, damage = pystac.Item.from_file(sys.argv[1]), Path(sys.argv[2])
want = shape(geojson_and_bbox(grid_footprint(raster_facts(damage, False).grid.bounds))[0])
found, best = shape(item.geometry), None
for _ in range(3):
    start = time.process_time()
    distance = geometry_distance_m(found, want)
    best = min(best or 1e9, time.process_time() - start)
assert distance == 0.0, distance
print(best)
"""


def sensors_for(year: int) -> tuple[tuple[str, ...], str | None]:
    """Plausible sensors and restoration of a summer (SLC-off LE07 years restored)."""
    if year <= 2002:
        return ("LE07",), None
    if year <= 2011:
        return ("LE07",), "DiffGF"
    if year == 2012:
        return ("LE07", "LC08"), "DiffGF"
    if year <= 2020:
        return ("LC08",), None
    return ("LC08", "LC09"), None


def _arrays(rows: np.ndarray, cols: np.ndarray, height: int, width: int, seed: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Crevasse-like lines and speckle (damage), an elliptical extent, as the test fixtures."""
    rng = np.random.default_rng(seed)
    damage = (np.sin(cols / 7.0 + rows / 19.0 + seed) > 0.95) | \
        (rng.random((rows.shape[0], cols.shape[1]), dtype=np.float32) < 0.03)
    damage &= rows > height // 5
    extent = ((rows - height / 2) / (0.42 * height)) ** 2 + \
        ((cols - width / 2) / (0.45 * width)) ** 2 < 1
    return damage, extent


def build_big(root: Path) -> None:
    """Amery ``BIG_YEAR`` on the grid covering Amery's ROI, written strip by strip."""
    grid = Grid.covering(roi_polygon("Amery"))
    height, width = grid.height, grid.width
    sensors, restoration = sensors_for(BIG_YEAR)

    def rows(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        return _arrays(np.arange(r0, r1)[:, None], np.arange(width)[None, :], height, width,
                       BIG_YEAR * 100_000 + r0)

    written = write_products_rows(root, "Amery", BIG_YEAR, sensors, restoration, rows, grid)
    record = fixture_provenance(ShelfYear("Amery", BIG_YEAR, sensors, restoration))
    provenance_path(root, written.name).write_text(record.to_json())


def build_small(root: Path, years: int) -> None:
    """Every registered shelf over ``years`` summers from 1999, ``SMALL`` px each."""
    height, width = SMALL
    rows, cols = np.ogrid[0:height, 0:width]
    for seed, (shelf, year) in enumerate((s, y) for s in SHELVES
                                         for y in range(1999, 1999 + years)):
        sensors, restoration = sensors_for(year)
        damage, extent = _arrays(rows, cols, height, width, seed)
        written = write_products(root, shelf, year, sensors, restoration, damage, extent,
                                 fixture_grid(shelf, SMALL))
        record = fixture_provenance(ShelfYear(shelf, year, sensors, restoration, size=SMALL))
        provenance_path(root, written.name).write_text(record.to_json())


def release(name: str, build: Callable[[Path], None], rebuild: bool) -> Path:
    """A cached pristine release (built once)."""
    pristine, done = CACHE / name / "release", CACHE / name / "complete"
    if rebuild or not done.exists():
        shutil.rmtree(CACHE / name, ignore_errors=True)
        start = time.perf_counter()
        build(pristine)
        done.write_text("ok\n")
        print(f"built {name} in {time.perf_counter() - start:.0f} s")
    return pristine


def working_copy(pristine: Path, name: str, tree: int) -> Path:
    """A fresh copy of a pristine release for one tree's runs: each tree catalogs its own copy,
    as what one catalog run keeps for the next (``stac/.file-facts.json``) is its code's."""
    work = CACHE / "work" / f"tree{tree}" / name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    return work


@dataclass(frozen=True)
class Measure:
    """One command line, run in a fresh process; ``reported`` when it prints the CPU s of what
    it measures (its last line), rather than the whole process's being taken."""

    label: str
    args: tuple[str, ...]
    reported: bool = False
    before: Callable[[], None] | None = None
    """Run before each run (e.g. touching the files of a shelf-year, as a re-run of produce)."""


def run(measure: Measure, tree: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one run of a measure with ``tree`` on the path."""
    env = os.environ | {"PYTHONPATH": str(tree), "ICEDAMAGE_OFFLINE": "1",
                        "ICEDAMAGE_CACHE": str(CACHE / "user-cache")}
    env.setdefault("ICEDAMAGE_STAC_SCHEMAS", str(STAC_SCHEMAS))
    if measure.before is not None:
        measure.before()
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *measure.args], cwd=tree, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    with process.stdout:
        out = process.stdout.read()
    # reaped here, not by Popen: wait4 gives this child's own CPU time and peak memory
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{measure.label} failed in {tree} (exit {process.returncode})")
    cpu = float(out.strip().splitlines()[-1]) if measure.reported \
        else usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024


def touching(*paths: Path) -> Callable[[], None]:
    """Make the files look re-written (a newer mtime, same bytes), as ``produce --force`` of
    their shelf-year leaves them: the catalog must read them again, and only them."""
    def touch() -> None:
        for path in paths:
            stat = path.stat()
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    return touch


def cli(*args: str) -> tuple[str, ...]:
    """Python arguments that run ``icedamage args...`` from the tree on the path."""
    return ("-c", "from producer.cli import icedamage_main; icedamage_main()", *args)


def one_shelf_year(root: Path) -> list[Path]:
    """The type-1, type-2 and provenance files of the release's last shelf-year."""
    folder = sorted(p.parent for p in root.glob("*/*/*_damage_map.tif"))[-1]
    return sorted(p for p in folder.iterdir() if p.suffix in (".tif", ".json"))


def main() -> None:
    """Build (or reuse) the releases, run every measure in interleaved rounds, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--years", type=int, default=26, help="summers of the small release")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="another checkout to measure as well (repeatable)")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    pristine_big = release("amery1", build_big, args.rebuild)
    small_name = f"r{len(SHELVES) * args.years}"
    pristine_small = release(f"{small_name}-y{args.years}",
                             lambda root: build_small(root, args.years), args.rebuild)
    trees = [ROOT, *(t.resolve() for t in args.tree)]
    measures: dict[Path, list[Measure]] = {}
    for number, tree in enumerate(trees):
        big = working_copy(pristine_big, "amery1", number)
        small = working_copy(pristine_small, small_name, number)
        for name, root in (("amery1", big), (small_name, small)):
            measures.setdefault(tree, []).extend([
                Measure(f"catalog --force {name}", cli("catalog", "--force", str(root))),
                Measure(f"catalog (up to date) {name}", cli("catalog", str(root))),
                Measure(f"catalog, one shelf-year re-produced {name}", cli("catalog", str(root)),
                        before=touching(*one_shelf_year(root))),
                Measure(f"validate --workers 1 {name}",
                        cli("validate", str(root), "--workers", "1")),
                Measure(f"stats {name}", cli("stats", str(root))),
            ])
        measures[tree].append(Measure(  # the rasters unchanged: only the record is read again
            "catalog, provenance record edited amery1", cli("catalog", str(big)),
            before=touching(*big.rglob("*_provenance.json"))))
        for measure in measures[tree][:2] + measures[tree][5:7]:  # warm-up: catalogs, page cache
            run(measure, tree)
        item = next(big.glob("stac/*/*/*.json"))  # written by the warm-up
        measures[tree] += [
            Measure("count_pixels, Amery type 1 (one call)",
                    ("-c", COUNT, str(next(big.rglob("*_damage_map.tif")))), True),
            Measure("footprint distance, Amery item (best of 3)",
                    ("-c", FOOTPRINT, str(item), str(next(big.rglob("*_damage.tif")))), True),
        ]
    results: dict[tuple[str, Path], list[tuple[float, float, float]]] = {}
    load = os.getloadavg()[0]
    for _ in range(args.repeat):
        for index in range(len(measures[ROOT])):
            for tree in trees:
                measure = measures[tree][index]
                results.setdefault((measure.label, tree), []).append(run(measure, tree))
    print(f"medians of {args.repeat} interleaved rounds; load average {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| measure | tree | wall s | CPU s | peak RSS MB |\n|---|---|---:|---:|---:|")
    for (label, tree), runs in results.items():
        wall, cpu, rss = (statistics.median(r[k] for r in runs) for k in range(3))
        print(f"| {label} | {tree.name} | {wall:.2f} | {cpu:.3f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
