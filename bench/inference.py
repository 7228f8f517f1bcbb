"""Benchmark whole-scene segmentation: production (streaming, batched) vs the authors' way.

    PYTHONPATH=. python bench/inference.py                 # throughput b0/b2 ± TTA, 10k² peak RSS
    PYTHONPATH=. python bench/inference.py --size 1024 --variants b0 --no-rss

Throughput is scene megapixels per second of random-init MiT models (the same weights for both
implementations) on a synthetic Landsat-like scene; agreement is reported as the largest
probability difference and the number of pixels whose class differs. Peak RSS is measured in a
child process running ``predict_scene`` on a 10,000 × 10,000 GeoTIFF written here.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from producer.segmentation import (
    DamageSegmenter,
    predict_array,
    predict_array_reference,
    predict_scene,
)

TRANSFORM = from_origin(2_200_000.0, -1_000_000.0, 30.0, 30.0)


def synthetic_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A (3, H, W) uint8 ice-like scene: smooth bright surface, thin dark lines, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 170 + 40 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    lines = (np.sin((xx + 0.6 * yy) / 4.0) > 0.93) * -120
    return np.clip(base + lines + rng.normal(0, 12, (3, height, width)), 1, 255).astype(np.uint8)


def model_of(variant: str) -> DamageSegmenter:
    """A random-init segmenter with a decisive classifier (seeded: same weights every run)."""
    torch.manual_seed(0)
    model = DamageSegmenter.build(variant)
    with torch.no_grad():
        model.model.decode_head.classifier.weight.mul_(50.0)
    return model.eval()


def throughput(variant: str, size: int, tta: bool, batch_size: int) -> dict[str, object]:
    """Time reference and production on one size × size scene; compare their outputs."""
    model = model_of(variant)
    pixels = synthetic_scene(size, size)
    megapixels = size * size / 1e6
    started, cpu = time.perf_counter(), time.process_time()
    ref = predict_array_reference(model, pixels, tta=tta)
    ref_s, ref_cpu = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    fast = predict_array(model, pixels, tta=tta, batch_size=batch_size, device="cpu")
    fast_s, fast_cpu = time.perf_counter() - started, time.process_time() - cpu
    margin = np.abs(ref.probabilities[1] - ref.probabilities[0])
    differ = fast.labels != ref.labels
    return {
        "variant": variant, "tta": tta, "size": size,
        "reference_s": round(ref_s, 2), "production_s": round(fast_s, 2),
        "reference_mps": round(megapixels / ref_s, 4),
        "production_mps": round(megapixels / fast_s, 4),
        "speedup": round(ref_s / fast_s, 2),
        "reference_cpu_s": round(ref_cpu, 2), "production_cpu_s": round(fast_cpu, 2),
        "cpu_speedup": round(ref_cpu / fast_cpu, 2),
        "max_prob_diff": float(np.abs(fast.probabilities - ref.probabilities).max()),
        "pixels_differing": int(differ.sum()),
        "pixels_differing_not_tie": int((differ & (margin > 1e-4)).sum()),
        "damage_fraction": round(float(ref.labels.mean()), 3),
    }


def disk_throughput(variant: str, size: int, tta: bool, batch_size: int) -> dict[str, object]:
    """``predict_scene`` from a GeoTIFF to a GeoTIFF (plus probability raster)."""
    model = model_of(variant)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "scene.tif"
        with rasterio.open(src, "w", driver="GTiff", width=size, height=size, count=3,
                           dtype="uint8", crs="EPSG:3031", transform=TRANSFORM) as dst:
            dst.write(synthetic_scene(size, size))
        stats = predict_scene(model, src, Path(tmp) / "out.tif",
                              probability_path=Path(tmp) / "p.tif", tta=tta,
                              batch_size=batch_size, device="cpu")
    return {"variant": variant, "tta": tta, "size": size, "seconds": round(stats.seconds, 2),
            "mps": round(stats.megapixels_per_second, 4)}


def write_sparse_scene(path: Path, size: int, block: tuple[int, int, int]) -> None:
    """A size² RGB GeoTIFF, zero (no data) except a synthetic patch; written strip by strip."""
    row0, col0, side = block
    patch = synthetic_scene(side, side, seed=1)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3,
                       dtype="uint8", crs="EPSG:3031", transform=TRANSFORM, tiled=True,
                       blockxsize=512, blockysize=512, compress="lzw") as dst:
        for top in range(0, size, 512):
            rows = min(512, size - top)
            strip = np.zeros((3, rows, size), np.uint8)
            lo, hi = max(top, row0), min(top + rows, row0 + side)
            if lo < hi:
                strip[:, lo - top:hi - top, col0:col0 + side] = patch[:, lo - row0:hi - row0]
            dst.write(strip, window=Window(0, top, size, rows))


def rss_child(src: str, variant: str, batch_size: int) -> None:
    """(Child process) run predict_scene and print stats and peak RSS as JSON."""
    model = model_of(variant)
    with tempfile.TemporaryDirectory() as tmp:
        stats = predict_scene(model, src, Path(tmp) / "out.tif",
                              probability_path=Path(tmp) / "p.tif", batch_size=batch_size,
                              device="cpu")
    print(json.dumps({
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "windows_total": stats.windows_total, "windows_run": stats.windows_run,
        "seconds": round(stats.seconds, 1),
    }))


def peak_rss(variant: str, size: int, batch_size: int) -> dict[str, object]:
    """Peak RSS of ``predict_scene`` on a size² scene, data only in a 200² patch (child process).

    The patch (rows 0–200, columns 300–500) lies in exactly two windows of the first window row,
    so one full forward batch (2 windows × 4 views) runs, and every row of the scene still
    streams through the strip, reader and writers. Memory does not grow with the number of
    windows run (the same buffers are reused), so this is the peak of a dense scene too.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "big.tif"
        write_sparse_scene(src, size, (0, 300, 200))
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(src), variant, str(batch_size)],
            check=True, capture_output=True, text=True,
        )
    return {"variant": variant, "size": size, "batch_size": batch_size,
            **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    """Run the benchmarks chosen on the command line and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="b0,b2")
    parser.add_argument("--size", type=int, default=768, help="throughput scene side (px)")
    parser.add_argument("--disk", action="store_true", help="also time predict_scene (b0)")
    parser.add_argument("--tta", choices=("both", "on", "off"), default="both")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rss-size", type=int, default=10_000)
    parser.add_argument("--rss-variant", default="b2")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--rss-child", nargs=3, metavar=("SRC", "VARIANT", "BATCH"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], int(args.rss_child[2]))
        return
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}))
    if not args.no_throughput:
        for variant in args.variants.split(","):
            for tta in {"both": (True, False), "on": (True,), "off": (False,)}[args.tta]:
                print(json.dumps(throughput(variant, args.size, tta, args.batch_size)), flush=True)
        if args.disk:
            print(json.dumps({"disk": disk_throughput("b0", args.size, True, args.batch_size)}),
                  flush=True)
    if not args.no_rss:
        print(json.dumps({"rss": peak_rss(args.rss_variant, args.rss_size, args.batch_size)}),
              flush=True)


if __name__ == "__main__":
    main()
