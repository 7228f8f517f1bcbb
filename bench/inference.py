"""Benchmark whole-scene segmentation: production (streaming, batched) vs the authors' way.

    PYTHONPATH=. python bench/inference.py                 # throughput b0/b2 ± TTA, 10k² peak RSS
    PYTHONPATH=. python bench/inference.py --size 1024 --variants b0 --no-rss
    PYTHONPATH=. python bench/inference.py --device cuda --amp both --size 2048 --batch-size 32
    PYTHONPATH=. python bench/inference.py --no-throughput --rss-dense --tta off   # dense 10k²

Throughput is scene megapixels per second of random-init MiT models (the same weights for both
implementations) on a synthetic Landsat-like scene; agreement is reported as the largest
probability difference and the number of pixels whose class differs. Peak RSS is measured in a
child process running ``predict_scene`` on a 10,000 × 10,000 GeoTIFF written here: by default
one with data in a single patch (fast), with ``--rss-dense`` one with data everywhere (every
window runs). ``--device cuda`` runs both implementations on the GPU (the reference in float32,
as the authors do; production with ``--amp off|on|both``: float32 or float16 autocast;
``--split-tf32`` adds float32 rows whose products run as three TF32 tensor-core products).
``--compile MODE`` adds rows for the production path compiled by TorchInductor (``auto``: CUDA
graphs on CUDA) and compiles the RSS run too; compile time is reported apart (``compile_s``).
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
from producer.segmentation.inference import COMPILE_MODES, exact_float32

#: A production precision: ``predict_array`` / ``predict_scene`` keyword arguments.
Precision = dict[str, bool]
FLOAT32: Precision = {"amp": False}
FLOAT16: Precision = {"amp": True}
SPLIT_TF32: Precision = {"amp": False, "split_tf32": True}

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


def warm_up(model: DamageSegmenter, device: str, pixels: np.ndarray, tta: bool,
            batch_size: int, precisions: tuple[Precision, ...]) -> None:
    """Run each implementation once on the timed shapes, so CUDA context creation, kernel
    loading and selection, and the caching allocator's growth stay out of the timings."""
    model.to(device)
    with exact_float32(torch.device(device)):
        predict_array_reference(model, pixels[:, :512, :512], tta=tta)
    predict_array_reference(model, pixels[:, :512, :512], tta=tta)
    for precision in precisions:
        predict_array(model, pixels, tta=tta, batch_size=batch_size, device=device, **precision)


def throughput(variant: str, size: int, tta: bool, batch_size: int, device: str = "cpu",
               precisions: tuple[Precision, ...] = (FLOAT32,),
               compile_mode: str | None = None) -> list[dict[str, object]]:
    """Time reference and production on one size × size scene; compare their outputs.

    One row per production precision in ``precisions`` (``FLOAT32``, ``FLOAT16`` autocast,
    ``SPLIT_TF32``), all against the same float32 reference run on ``device``. With
    ``compile_mode`` each precision also gets a compiled row; compiling (the first call, on one
    window) is timed apart.
    """
    model = model_of(variant).to(device)
    pixels = synthetic_scene(size, size)
    if device != "cpu":
        warm_up(model, device, pixels, tta, batch_size, precisions)
    megapixels = size * size / 1e6
    default_s = None
    if device != "cpu":  # the authors' code as PyTorch runs it by default (TF32 convolutions)
        started = time.perf_counter()
        predict_array_reference(model, pixels, tta=tta)
        default_s = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    with exact_float32(torch.device(device)):
        ref = predict_array_reference(model, pixels, tta=tta)
    ref_s, ref_cpu = time.perf_counter() - started, time.process_time() - cpu
    margin = np.abs(ref.probabilities[1] - ref.probabilities[0])
    rows = []
    for precision in precisions:
        if device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        started, cpu = time.perf_counter(), time.process_time()
        fast = predict_array(model, pixels, tta=tta, batch_size=batch_size, device=device,
                             **precision)
        fast_s, fast_cpu = time.perf_counter() - started, time.process_time() - cpu
        row = _compare(variant, tta, size, device, precision, megapixels, ref, fast, margin,
                       (ref_s, ref_cpu, fast_s, fast_cpu))
        if default_s is not None:
            row["reference_tf32_s"] = round(default_s, 2)
            row["speedup_vs_tf32_reference"] = round(default_s / fast_s, 2)
        rows.append(row)
        if compile_mode is not None:
            rows.append(_compiled_row(model, pixels, variant, tta, batch_size, device, precision,
                                      compile_mode, ref, margin, (ref_s, ref_cpu), default_s))
    return rows


def _compiled_row(model: DamageSegmenter, pixels: np.ndarray, variant: str, tta: bool,
                  batch_size: int, device: str, precision: Precision, compile_mode: str,
                  ref: object,
                  margin: np.ndarray, ref_times: tuple[float, float],
                  default_s: float | None) -> dict[str, object]:
    """The production path compiled: compile (timed apart), then time the scene.

    On the CPU the compile runs on one window; on CUDA on the whole scene, which also records
    a CUDA graph for each batch shape the timed run meets (windows per row differ from the
    compile window's), so the timed run is the steady state, as the reference's is."""
    options = {"tta": tta, "batch_size": batch_size, "device": device, **precision,
               "compile_mode": compile_mode}
    started = time.perf_counter()
    predict_array(model, pixels if device != "cpu" else pixels[:, :512, :512], **options)
    compile_s = time.perf_counter() - started
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    started, cpu = time.perf_counter(), time.process_time()
    fast = predict_array(model, pixels, **options)
    fast_s, fast_cpu = time.perf_counter() - started, time.process_time() - cpu
    row = _compare(variant, tta, pixels.shape[1], device, precision, pixels[0].size / 1e6, ref,
                   fast,
                   margin, (*ref_times, fast_s, fast_cpu))
    row.update(compile=compile_mode, compile_s=round(compile_s, 1))
    if default_s is not None:
        row["reference_tf32_s"] = round(default_s, 2)
        row["speedup_vs_tf32_reference"] = round(default_s / fast_s, 2)
    return row


def _compare(variant: str, tta: bool, size: int, device: str, precision: Precision,
             megapixels: float,
             ref: object, fast: object, margin: np.ndarray,
             times: tuple[float, float, float, float]) -> dict[str, object]:
    """One result row: speeds of both implementations and how far their outputs differ."""
    ref_s, ref_cpu, fast_s, fast_cpu = times
    differ = fast.labels != ref.labels
    extra = ({"gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
             if device != "cpu" else {})
    return {
        "variant": variant, "tta": tta, "size": size, "device": device,
        "amp": precision["amp"], "split_tf32": precision.get("split_tf32", False),
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
        **extra,
    }


def disk_throughput(variant: str, size: int, tta: bool, batch_size: int,
                    device: str = "cpu") -> dict[str, object]:
    """``predict_scene`` from a GeoTIFF to a GeoTIFF (plus probability raster)."""
    model = model_of(variant)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "scene.tif"
        with rasterio.open(src, "w", driver="GTiff", width=size, height=size, count=3,
                           dtype="uint8", crs="EPSG:3031", transform=TRANSFORM) as dst:
            dst.write(synthetic_scene(size, size))
        stats = predict_scene(model, src, Path(tmp) / "out.tif",
                              probability_path=Path(tmp) / "p.tif", tta=tta,
                              batch_size=batch_size, device=device)
    return {"variant": variant, "tta": tta, "size": size, "device": device,
            "seconds": round(stats.seconds, 2), "mps": round(stats.megapixels_per_second, 4)}


#: The data patch of the sparse scene: rows 0–200, columns 300–500 (two windows of row one).
SPARSE_PATCH = (0, 300, 200)


def write_scene(path: Path, size: int, dense: bool) -> None:
    """A size² RGB GeoTIFF (tiled LZW), written strip by strip so the writer stays small.

    Dense: synthetic ice everywhere, so every window runs. Sparse: zero (no data) except the
    ``SPARSE_PATCH``, which lies in exactly two windows of the first window row.
    """
    row0, col0, side = SPARSE_PATCH
    patch = synthetic_scene(side, side, seed=1)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3,
                       dtype="uint8", crs="EPSG:3031", transform=TRANSFORM, tiled=True,
                       blockxsize=512, blockysize=512, compress="lzw") as dst:
        for top in range(0, size, 512):
            rows = min(512, size - top)
            if dense:
                strip = synthetic_scene(rows, size, seed=top)
            else:
                strip = np.zeros((3, rows, size), np.uint8)
                lo, hi = max(top, row0), min(top + rows, row0 + side)
                if lo < hi:
                    strip[:, lo - top:hi - top, col0:col0 + side] = patch[:, lo - row0:hi - row0]
            dst.write(strip, window=Window(0, top, size, rows))


def rss_child(src: str, variant: str, batch_size: int, tta: bool, device: str,
              compile_mode: str | None = None, amp: bool | None = None,
              split_tf32: bool = False) -> None:
    """(Child process) run predict_scene and print stats and peak RSS as JSON.

    With ``compile_mode``, compiling (on one window) is timed apart from the scene. ``amp``:
    float16 autocast (True), exact float32 (False) or the device's default (None);
    ``split_tf32``: float32 products as three TF32 products."""
    model = model_of(variant)
    compile_s = None
    if compile_mode is not None:
        started = time.perf_counter()
        predict_array(model, synthetic_scene(512, 512), tta=tta, batch_size=batch_size,
                      device=device, amp=amp, compile_mode=compile_mode, split_tf32=split_tf32)
        compile_s = round(time.perf_counter() - started, 1)
    with tempfile.TemporaryDirectory() as tmp:
        stats = predict_scene(model, src, Path(tmp) / "out.tif",
                              probability_path=Path(tmp) / "p.tif", batch_size=batch_size,
                              tta=tta, device=device, amp=amp, compile_mode=compile_mode,
                              split_tf32=split_tf32)
    if compile_s is not None:
        print(json.dumps({"compile": compile_mode, "compile_s": compile_s}))
    extra = ({"gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
             if device != "cpu" else {})
    print(json.dumps({
        "amp": amp, "split_tf32": split_tf32,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "windows_total": stats.windows_total, "windows_run": stats.windows_run,
        "images_forwarded": stats.images_forwarded, "seconds": round(stats.seconds, 1),
        "mps": round(stats.megapixels_per_second, 3), **extra,
    }))


def peak_rss(variant: str, size: int, batch_size: int, *, dense: bool = False, tta: bool = True,
             device: str = "cpu", threads: int = 2, compile_mode: str | None = None,
             amp: bool | None = None, scene: Path | None = None,
             split_tf32: bool = False) -> dict[str, object]:
    """Peak RSS of ``predict_scene`` on a size² scene, in a fresh child process.

    The sparse scene still streams every row through the strip, reader and writers but runs one
    forward batch; the dense one runs every window. Every batch reuses buffers of the same
    sizes, so the two peaks differ only by allocator fragmentation. ``scene``: a folder that
    keeps the written scene for later runs (default: written afresh in a temporary folder).
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "big.tif"
        if scene is not None:  # kept between runs: writing a dense 10,000² scene takes a while
            src = scene / f"scene_{size}_{'dense' if dense else 'sparse'}.tif"
            scene.mkdir(parents=True, exist_ok=True)
        if not src.exists():
            partial = src.with_suffix(".partial.tif")
            write_scene(partial, size, dense)
            partial.replace(src)
        out = subprocess.run(
            [sys.executable, __file__, "--threads", str(threads), "--rss-child", str(src),
             variant, str(batch_size), "on" if tta else "off", device, compile_mode or "none",
             {None: "default", True: "on", False: "off"}[amp] + ("+split" if split_tf32 else "")],
            check=True, capture_output=True, text=True,
        )
    lines = [json.loads(line) for line in out.stdout.strip().splitlines() if line.startswith("{")]
    return {"variant": variant, "size": size, "batch_size": batch_size, "dense": dense,
            "tta": tta, "device": device, **{k: v for line in lines for k, v in line.items()}}


def main() -> None:
    """Run the benchmarks chosen on the command line and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="b0,b2")
    parser.add_argument("--size", type=int, default=768, help="throughput scene side (px)")
    parser.add_argument("--disk", action="store_true", help="also time predict_scene (b0)")
    parser.add_argument("--tta", choices=("both", "on", "off"), default="both")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", choices=("off", "on", "both"), default="off",
                        help="production precision: float32, float16 autocast, or both")
    parser.add_argument("--split-tf32", action="store_true",
                        help="add float32 production rows whose products run as three TF32 "
                             "tensor-core products (split TF32); an exact RSS run uses them")
    parser.add_argument("--compile", choices=COMPILE_MODES, default=None,
                        help="also time the production path compiled in this torch.compile mode")
    parser.add_argument("--rss-size", type=int, default=10_000)
    parser.add_argument("--rss-variant", default="b2")
    parser.add_argument("--rss-dense", action="store_true", help="data in every window")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--rss-scene", type=Path, default=None,
                        help="folder keeping the RSS scene between runs (written if missing)")
    parser.add_argument("--rss-exact", action="store_true",
                        help="run the RSS scene in exact float32 (with --amp off; default: the "
                             "device's default precision)")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--rss-child", nargs=7,
                        metavar=("SRC", "VARIANT", "BATCH", "TTA", "DEVICE", "COMPILE", "AMP"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        src, variant, batch, tta, device, compile_mode, amp = args.rss_child
        precision, _, split = amp.partition("+")
        rss_child(src, variant, int(batch), tta == "on", device,
                  None if compile_mode == "none" else compile_mode,
                  {"default": None, "on": True, "off": False}[precision], split == "split")
        return
    header = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "device": args.device}
    if args.device != "cpu":
        header["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(header), flush=True)
    ttas = {"both": (True, False), "on": (True,), "off": (False,)}[args.tta]
    amps = {"off": (False,), "on": (True,), "both": (False, True)}[args.amp]
    precisions = (*(FLOAT16 if amp else FLOAT32 for amp in amps),
                  *((SPLIT_TF32,) if args.split_tf32 else ()))
    if not args.no_throughput:
        for variant in args.variants.split(","):
            for tta in ttas:
                for row in throughput(variant, args.size, tta, args.batch_size, args.device,
                                      precisions, args.compile):
                    print(json.dumps(row), flush=True)
        if args.disk:
            print(json.dumps({"disk": disk_throughput("b0", args.size, True, args.batch_size,
                                                      args.device)}), flush=True)
    if not args.no_rss:
        # --amp off|on|both picks the precision on CUDA too; left at its default ("off") the
        # scene runs in the device's default (float16 autocast on CUDA, float32 on the CPU)
        rss_amps: tuple[bool | None, ...] = amps if args.amp != "off" or args.rss_exact else (None,)
        for tta in ttas:
            for amp in rss_amps:
                print(json.dumps({"rss": peak_rss(args.rss_variant, args.rss_size,
                                                  args.batch_size, dense=args.rss_dense, tta=tta,
                                                  device=args.device, threads=args.threads,
                                                  compile_mode=args.compile, amp=amp,
                                                  scene=args.rss_scene,
                                                  split_tf32=args.split_tf32 and amp is False)}),
                      flush=True)


if __name__ == "__main__":
    main()
