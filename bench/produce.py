"""Time ``produce --shelf Totten --year 2021 --source demo`` end to end (goal: <= 60 s on CPU).

Runs the real console entry point in a fresh interpreter (imports included), on the default
1024 x 1024 demo window with the paper's mirror TTA. Uses the committed demo weights when they
exist, otherwise a randomly initialised MiT-b0 checkpoint (same architecture and cost; the
output says which). Then times the re-run, which must skip the up-to-date shelf-year.

    PYTHONPATH=. python bench/produce.py [--year 2021] [--shelf Totten]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from producer.pipeline import DEMO_WEIGHTS


def random_b0(path: Path) -> Path:
    """A random-init MiT-b0 checkpoint (only for timing: it maps nothing meaningful)."""
    import torch

    from producer.segmentation import DamageSegmenter, ModelInfo, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(DamageSegmenter.build("b0"), path,
                    ModelInfo(name="random-b0-benchmark", variant="b0"))
    return path


def ground_truth_iou(release: Path, shelf: str, year: int) -> float:
    """IoU of the produced full-ROI damage with the demo renderer's ground truth."""
    import rasterio

    from producer.sources.demo import DemoSource
    from producer.spec import TYPE2

    (path,) = (release / shelf / str(year)).glob("*" + TYPE2.suffix)
    with rasterio.open(path) as ds:
        mapped = ds.read(1) == TYPE2.damage
    truth = DemoSource().layout(shelf, year).damage
    return float((mapped & truth).sum() / max((mapped | truth).sum(), 1))


def run(args: list[str]) -> tuple[float, str]:
    """Wall time and output of one ``produce`` run in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "from producer.cli import produce_main; produce_main()", *args],
        capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"produce failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shelf", default="Totten")
    parser.add_argument("--year", default="2021")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if DEMO_WEIGHTS.is_file():
            weights, which = DEMO_WEIGHTS, f"demo weights {DEMO_WEIGHTS.name}"
        else:
            weights, which = random_b0(Path(tmp) / "b0.safetensors"), "random-init MiT-b0"
        args = ["--shelf", opts.shelf, "--year", opts.year, "--source", "demo",
                "--out", str(Path(tmp) / "release"), "--weights", str(weights)]
        first, output = run(args)
        again, rerun = run(args)
        iou = ground_truth_iou(Path(tmp) / "release", opts.shelf, int(opts.year))
    scenes = [line for line in output.splitlines() if "produced" in line]
    print(f"weights: {which}")
    print(f"threads: torch default, CPUs visible: {os.cpu_count()}")
    print(f"first run: {first:.1f} s  ({scenes[-1].strip() if scenes else output[-300:]})")
    print(f"damage IoU of the type 2 map vs the demo ground truth: {iou:.3f}")
    print(f"re-run (skip): {again:.1f} s  ({'skipped' if 'skipped' in rerun else 'NOT skipped'})")


if __name__ == "__main__":
    main()
