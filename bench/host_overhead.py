"""Host work of streaming inference per window, without a GPU (and without a network).

A fast GPU finishes MiT-b2's four TTA views of a 512² window in about a millisecond, so the
host's own work per window decides whether the GPU waits for it. This runs the production
streaming core (``_stream``) over a dense scene held in memory with a forward that costs
nothing: on PyTorch's ``meta`` device every tensor op is dispatched (shapes, strides) but no
kernel runs. What remains is the host's share: strip shifts, the empty-window scan, window
slicing, accumulation dispatch and the Python around them. ``meta`` dispatch is slower than
CUDA's, so the dispatch part is an upper bound.

    PYTHONPATH=. python bench/host_overhead.py [--size 10000] [--batch-windows 8]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np
import torch

from producer.segmentation.inference import STRIDE, WINDOW, _stream, window_starts


class NullForward:
    """Stands in for ``BatchedForward``: mean probabilities of the right shape, no compute."""

    def __init__(self, windows_per_call: int) -> None:
        self.device = torch.device("meta")
        self.num_labels = 2
        self.windows_per_call = windows_per_call
        self.images_forwarded = 0
        self.forward_calls = 0

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        return torch.empty((tiles.shape[0], self.num_labels, *tiles.shape[-2:]),
                           device=self.device)


def main() -> None:
    """Time ``_stream`` on a dense scene and print per-window and per-row host costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="scene side in px")
    parser.add_argument("--batch-windows", type=int, default=8,
                        help="windows per forward call (batch 32 images with TTA = 8)")
    args = parser.parse_args()
    scene = np.random.default_rng(0).integers(1, 255, (3, args.size, args.size), np.uint8)
    rows = len(window_starts(args.size, WINDOW, STRIDE))

    def run() -> tuple[float, int]:
        started = time.perf_counter()
        stats = _stream(NullForward(args.batch_windows), args.size, args.size,
                        lambda r0, r1: scene[:, r0:r1], lambda *_: None, skip_empty=True,
                        window=WINDOW, stride=STRIDE, progress=None)
        return time.perf_counter() - started, stats.windows_run

    run()  # warm-up: meta kernels' Python paths, allocator
    seconds, windows = run()
    profile = cProfile.Profile()
    profile.enable()
    run()
    profile.disable()
    own = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    stream_own = sum(v[2] for k, v in own.items() if k[2] == "_stream")
    scan = sum(v[3] for k, v in own.items() if k[2] == "_filled_windows")  # with numpy
    print(f"scene {args.size}² dense, {windows} windows in {rows} window rows, "
          f"{args.batch_windows} windows per call, torch {torch.__version__}")
    print(f"| what | ms per window | ms per window row |\n|---|---:|---:|\n"
          f"| everything on the host (meta dispatch included) | {1000 * seconds / windows:.2f} "
          f"| {1000 * seconds / rows:.1f} |\n"
          f"| `_stream`'s own work (shifts, slicing, loop) | {1000 * stream_own / windows:.2f} "
          f"| {1000 * stream_own / rows:.1f} |\n"
          f"| empty-window scan | {1000 * scan / windows:.3f} | {1000 * scan / rows:.1f} |")


if __name__ == "__main__":
    main()
