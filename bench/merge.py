"""Benchmark: memory and time of the post-segmentation stages on the largest ROI (Amery).

Builds (once, cached in the temp folder) an Amery-size shelf-year on disk: the real ROI grid of
the registry (``Grid.covering(roi_polygon("Amery"))``, 30 m EPSG:3031) and, per scene, a 0/1
prediction GeoTIFF as the segmentation writes it (tiled, LZW) and a mask GeoTIFF of its
usable / present pixels (``producer.pipeline.MASK_PRESENT`` / ``MASK_USABLE`` bits). Contents are
synthetic, written strip by strip: the scenes are overlapping column bands (the main scene is
the widest), each with clouds along the ROI's top margin (outside the shelf region, so the
cloudy fill of rule 4 runs) and no scene reaches the right edge (uncovered pixels).

Then, in a child process (so ``ru_maxrss`` is that of the stages alone), it runs the code that
``produce_year`` runs after segmentation: the ROI and extent masks (``ShelfArea``), the merge
plan on the scenes' mask files, composing the predictions, clipping to the effective extent and
writing the two products and the source-scene COG with the provenance record
(``producer.pipeline._write_year``). It reports wall time and peak RSS (``resource.getrusage``).
The version of this script before the bounded-memory merge (git history) measured the same
stages with whole-grid arrays.

With ``--velocity`` the plan also weighs the scenes by a synthetic 450 m ice-speed GeoTIFF
(cached beside the case; speed rising along the columns, as towards a calving front) read onto
the grid strip by strip (``producer.velocity``), as ``produce --velocity`` does.

Run: ``PYTHONPATH=. python bench/merge.py [--scenes 6] [--shelf Amery] [--rebuild] [--keep DIR]
[--velocity]`` (``--scale 0.25`` shrinks the grid for a quick try; the numbers in
docs/benchmarks.md are at 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.transform
from rasterio.windows import Window

from producer.grid import Grid
from producer.pipeline import MASK_PRESENT, MASK_USABLE
from producer.shelves import roi_polygon
from producer.spec import ENCODING

CACHE = Path(tempfile.gettempdir()) / "icedamage-bench-merge-v1"
#: Rows written or read at once when building the case (one tile row).
STRIP = ENCODING.blocksize


def bench_grid(shelf: str, scale: float) -> Grid:
    """The shelf's real ROI grid (30 m), or a coarser one covering the same ROI (``scale`` < 1)."""
    return Grid.covering(roi_polygon(shelf), resolution=ENCODING.resolution / scale)


def scene_bands(width: int, scenes: int) -> list[tuple[int, int]]:
    """Column ranges of the scenes: overlapping bands, the first (best-ranked) twice as wide.

    The union stops 1 % short of the right edge, so some ROI pixels have no scene at all.
    """
    stop = int(width * 0.99)
    shares = np.array([2.0] + [1.0] * (scenes - 1))
    edges = np.concatenate([[0], np.cumsum(shares / shares.sum() * stop)]).astype(int)
    overlap = max(1, width // 50)
    return [(max(0, int(edges[k]) - overlap), min(stop, int(edges[k + 1]) + overlap))
            for k in range(scenes)]


def profile(grid: Grid) -> dict:
    """The tiled LZW UInt8 profile of the segmentation's outputs."""
    return {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1,
            "dtype": "uint8", "crs": grid.crs, "transform": grid.transform, "tiled": True,
            "blockxsize": ENCODING.blocksize, "blockysize": ENCODING.blocksize,
            "compress": ENCODING.compression}


def build_case(folder: Path, grid: Grid, scenes: int) -> list[dict]:
    """Write every scene's prediction and mask file strip by strip; returns their descriptions."""
    folder.mkdir(parents=True, exist_ok=True)
    cloud_rows = max(1, grid.height // 50)
    first = dt.date(2021, 12, 1)
    items = []
    for k, (lo, hi) in enumerate(scene_bands(grid.width, scenes)):
        cloudy = 0
        pred_path, mask_path = folder / f"s{k}_prediction.tif", folder / f"s{k}_mask.tif"
        with rasterio.open(pred_path, "w", **profile(grid)) as pred, \
                rasterio.open(mask_path, "w", **profile(grid)) as mask:
            cols = np.arange(grid.width)[None, :]
            for r0 in range(0, grid.height, STRIP):
                rows = np.arange(r0, min(r0 + STRIP, grid.height))[:, None]
                window = Window(0, r0, grid.width, rows.shape[0])
                present = (cols >= lo) & (cols < hi) & (rows >= 0)
                usable = present & (rows >= cloud_rows)
                code = present * np.uint8(MASK_PRESENT) | usable * np.uint8(MASK_USABLE)
                cloudy += int((present & ~usable).sum())
                mask.write(code.astype(np.uint8), 1, window=window)
                damage = ((rows * 3 + cols * (k + 1)) % 37 < 2) & present
                pred.write(damage.astype(np.uint8), 1, window=window)
        items.append({"scene_id": f"LC08_bench_s{k}", "acquired": (
            first + dt.timedelta(days=7 * k)).isoformat(), "prediction": str(pred_path),
            "mask": str(mask_path), "band": [lo, hi],
            "cloud_fraction": cloudy / (grid.width * grid.height)})
    (folder / "case.json").write_text(json.dumps(items, indent=1))
    return items


def ensure_velocity(folder: Path, grid: Grid) -> Path:
    """A 450 m speed GeoTIFF over the grid's bounds (MEaSUREs' resolution), built once."""
    path = folder / "speed_450m.tif"
    if path.exists():
        return path
    left, bottom, right, top = grid.bounds
    width, height = int((right - left) // 450) + 2, int((top - bottom) // 450) + 2
    speed = np.tile(np.linspace(5.0, 2500.0, width, dtype="float32"), (height, 1))
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="float32", crs=grid.crs, tiled=True, compress="deflate",
                       transform=rasterio.transform.from_origin(left - 450, top + 450, 450,
                                                                450)) as ds:
        ds.write(speed, 1)
    return path


def ensure_case(shelf: str, scale: float, scenes: int, rebuild: bool) -> Path:
    """The cached case folder of these parameters, built if missing (or ``rebuild``)."""
    folder = CACHE / f"{shelf}-x{scale:g}-{scenes}scenes"
    if rebuild and folder.exists():
        shutil.rmtree(folder)
    if not (folder / "case.json").exists():
        started = time.perf_counter()
        build_case(folder, bench_grid(shelf, scale), scenes)
        print(f"built {folder} in {time.perf_counter() - started:.1f} s")
    return folder


# ---------------------------------------------------------------------------------------------
# The measured child: the stages after segmentation
# ---------------------------------------------------------------------------------------------


class _BenchSource:
    """The one attribute of a scene source that the write stage reads."""

    name = "local"


class _BenchModel:
    """The segmentation model as the write stage sees it: only its provenance record."""

    sha256 = "0" * 64

    @property
    def record(self):  # noqa: ANN201 - ModelRecord, imported lazily
        from producer.provenance import ModelRecord

        return ModelRecord("bench-none", self.sha256, "none")


def run_stages(folder: Path, shelf: str, scale: float, out: Path,
               velocity: Path | None = None) -> dict:
    """Run the post-segmentation stages of ``produce_year`` on the case; timings per stage."""
    from producer import pipeline
    from producer.extent import ShelfArea, default_extent
    from producer.merge import plan_merge_rows
    from producer.sources.base import Scene

    items = json.loads((folder / "case.json").read_text())
    roi = roi_polygon(shelf)
    grid = bench_grid(shelf, scale)
    times: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[name] = round(now - clock, 2)
        clock = now

    extent_geom = default_extent(roi, grid)
    area = ShelfArea(roi, extent_geom, grid)
    masks = [pipeline._SceneMasks(
        Scene(item["scene_id"], "LC08", dt.date.fromisoformat(item["acquired"]),
              Path(item["prediction"]), 0.0), Path(item["mask"]), False, item["cloud_fraction"])
        for item in items]
    lap("masks")
    if velocity is None:
        plan = plan_merge_rows([m.candidate() for m in masks], area.rows, grid.shape)
    else:
        from producer.velocity import speed_on_grid, velocity_layout

        with speed_on_grid(velocity_layout(velocity), grid) as speed:
            plan = plan_merge_rows([m.candidate() for m in masks], area.rows, grid.shape,
                                   speed=speed)
    lap("plan")
    predictions = {item["scene_id"]: (Path(item["prediction"]), None) for item in items}
    options = pipeline.ProduceOptions(out=out)
    parameters = pipeline.run_parameters(options, grid, extent_geom, "default:roi-shrunk")
    result = pipeline._write_year(shelf, 2021, _BenchSource(), _BenchModel(), options, grid,
                                  plan, masks, predictions, area, pipeline._Restored({}),
                                  parameters, "bench",
                                  pipeline._no_progress)
    lap("compose+write")
    return {"times": times, "used": len(plan.used), "status": result.status,
            "fractions": [round(f, 4) for f in plan.fractions],
            "cloudy": round(plan.cloudy_fill_fraction, 4),
            "uncovered": round(plan.uncovered_fraction, 4),
            "flow_fractions": [round(f, 4) for f in plan.flow_fractions]}


def child(folder: Path, shelf: str, scale: float, keep: Path | None,
          velocity: Path | None = None) -> None:
    """Run the stages, print timings and ``ru_maxrss`` as one JSON line."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        started = time.perf_counter()
        report = run_stages(folder, shelf, scale, Path(tmp) / "release", velocity)
        report["wall_s"] = round(time.perf_counter() - started, 2)
        report["outputs_mb"] = round(sum(p.stat().st_size for p in Path(tmp).rglob("*")
                                         if p.is_file()) / 1e6, 1)
        if keep is not None:
            shutil.copytree(Path(tmp) / "release", keep, dirs_exist_ok=True)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shelf", default="Amery")
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--keep", type=Path, help="copy the written release here")
    parser.add_argument("--velocity", action="store_true",
                        help="weigh the main scene by a synthetic 450 m speed file")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--speed-file", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child is not None:
        child(opts.child, opts.shelf, opts.scale, opts.keep, opts.speed_file)
        return
    folder = ensure_case(opts.shelf, opts.scale, opts.scenes, opts.rebuild)
    grid = bench_grid(opts.shelf, opts.scale)
    speed = ensure_velocity(folder, grid) if opts.velocity else None
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), "--shelf", opts.shelf,
         "--scale", str(opts.scale), *(["--keep", str(opts.keep.resolve())] if opts.keep else []),
         *(["--speed-file", str(speed)] if speed else [])],
        capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the stages failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{opts.shelf} grid {grid.height} x {grid.width} px ({grid.height * grid.width / 1e6:.0f}"
          f" Mpx), {opts.scenes} scenes, {report['used']} used")
    print(f"peak RSS {report['peak_rss_mb']} MB, wall {report['wall_s']} s, stages "
          f"{report['times']}, outputs {report['outputs_mb']} MB")
    print(f"plan: fractions {report['fractions']}, cloudy fill {report['cloudy']}, uncovered "
          f"{report['uncovered']}")
    if speed:
        print(f"velocity {speed.name}: flow fractions {report['flow_fractions']}")


if __name__ == "__main__":
    main()
