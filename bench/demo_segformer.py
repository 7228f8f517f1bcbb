"""Train the demo SegFormer (MiT-b0) on demo tiles and evaluate it on held-out demo tiles.

Re-trains a model comparable to ``producer/weights/demo-segformer-b0.safetensors`` and
measures it as the held-out metrics in docs/benchmarks.md (## Demo model) were measured, with
the ``icedamage`` commands themselves (not bit for bit: the stages stop on a wall-clock budget,
so a faster machine trains more epochs; see the model card):

    PYTHONPATH=. python bench/demo_segformer.py [WORKDIR] [--minutes 27] [--install]

1. ``icedamage train --demo`` in four stages (settings below; each stops at the time budget,
   keeps its best-by-validation checkpoint and initialises the next),
2. ``icedamage export-demo-tiles`` renders held-out tiles from a seed range disjoint from
   training and validation, 3. ``icedamage evaluate --model best.safetensors --split all``
   (the authors' sliding-window + TTA inference), 4. with ``--install`` copies the best weights
   and sidecar to producer/weights/.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from producer.cli import build_app
from producer.segmentation.checkpoints import load_checkpoint, save_checkpoint

#: The committed demo model: four stages, each initialised from the previous stage's best
#: checkpoint (random initialisation first: no pretrained weights are available offline).
COMMON_ARGS = ["--demo", "--variant", "b0", "--batch-size", "8", "--demo-val-tiles", "16",
               "--demo-size", "256", "--threads", "2", "--warmup-epochs", "1"]
STAGES: list[list[str]] = [
    ["--epochs", "14", "--start-lr", "1e-4", "--peak-lr", "1e-3", "--final-lr", "1e-4",
     "--cosine-epochs", "11", "--seed", "0", "--demo-tiles", "160", "--crop", "128"],
    ["--epochs", "16", "--start-lr", "2e-4", "--peak-lr", "5e-4", "--final-lr", "5e-5",
     "--cosine-epochs", "14", "--seed", "1", "--demo-tiles", "320", "--crop", "128"],
    ["--epochs", "24", "--start-lr", "1e-4", "--peak-lr", "3e-4", "--final-lr", "3e-5",
     "--cosine-epochs", "22", "--seed", "2", "--demo-tiles", "480", "--crop", "192"],
    ["--epochs", "10", "--start-lr", "5e-5", "--peak-lr", "1e-4", "--final-lr", "2e-5",
     "--cosine-epochs", "9", "--seed", "3", "--demo-tiles", "640", "--crop", "192"],
]
HELDOUT_FIRST_SEED = 2_000_000
HELDOUT_COUNT = 12
HELDOUT_SIZE = 512
WEIGHTS = Path(__file__).resolve().parents[1] / "producer" / "weights"


def run(args: list[str]) -> None:
    """Run one ``icedamage`` command in-process; a failure stops the benchmark."""
    try:
        build_app()(args, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise


def main() -> None:
    """Train, evaluate, print the held-out metrics, optionally install the weights."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", type=Path, default=Path("/tmp/demo_seg"))
    parser.add_argument("--minutes", type=float, default=27.0)
    parser.add_argument("--install", action="store_true")
    opts = parser.parse_args()
    torch.set_num_threads(2)
    heldout, evaluation = opts.workdir / "heldout", opts.workdir / "eval"
    started = time.monotonic()
    init: list[str] = []
    for number, stage in enumerate(STAGES, 1):
        stage_dir = opts.workdir / f"stage{number}"
        if not (stage_dir / "best.safetensors").exists():
            run(["train", *COMMON_ARGS, *stage, *init, "--out", str(stage_dir),
                 "--max-minutes", str(opts.minutes)])
        init = ["--init", str(stage_dir / "best.safetensors")]
    run_dir = opts.workdir / f"stage{len(STAGES)}"
    trained = time.monotonic()
    run(["export-demo-tiles", str(heldout), "--count", str(HELDOUT_COUNT), "--size",
         str(HELDOUT_SIZE), "--first-seed", str(HELDOUT_FIRST_SEED)])
    run(["evaluate", str(heldout), "--model", str(run_dir / "best.safetensors"), "--split",
         "all", "--out", str(evaluation), "--name", "demo held-out", "--threads", "2"])
    pooled = json.loads((evaluation / "evaluation.json").read_text())["pooled"]
    print(json.dumps({"train_minutes": round((trained - started) / 60, 1),
                      "evaluate_minutes": round((time.monotonic() - trained) / 60, 1),
                      **{k: pooled[k] for k in ("miou", "oa", "precision", "recall", "f1")}}))
    if opts.install:
        install(run_dir / "best.safetensors", evaluation / "evaluation.json")


def install(best: Path, evaluation: Path) -> None:
    """Re-save the best weights as producer/weights/demo-segformer-b0 with held-out metrics."""
    model, info = load_checkpoint(best)
    held_out = json.loads(evaluation.read_text())["pooled"]
    training = {**info.training, "stages": [" ".join(COMMON_ARGS + stage) for stage in STAGES]}
    info = replace(info, name="demo-segformer-b0", training=training,
                   metrics={"validation": info.metrics, "held_out": held_out})
    save_checkpoint(model, WEIGHTS / "demo-segformer-b0.safetensors", info)


if __name__ == "__main__":
    main()
