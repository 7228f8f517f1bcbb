"""Where a batched production forward spends its GPU time, by operator (torch.profiler).

    PYTHONPATH=. python bench/profile_forward.py --variant b2 --tta on --batch-size 32

Eager (not compiled) forwards of random-init weights on a synthetic scene, exact float32 unless
``--amp``; prints the operators with the most device time (self time, so nested calls are not
counted twice) as a table, and the share of the main groups (matrix products, convolutions,
attention, the rest) as one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from bench.inference import model_of, synthetic_scene
from producer.segmentation import predict_array

#: Operator groups by name fragment, first match wins ("addmm" is a matrix product,
#: "upsample_bilinear2d" is not).
GROUPS = {"attention": ("attention",), "convolution": ("conv",),
          "upsampling": ("upsample", "interpolate"),
          "matmul": ("mm", "matmul", "linear", "einsum")}


def main() -> None:
    """Profile a few production forwards and print the device-time breakdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="b2")
    parser.add_argument("--tta", choices=("on", "off"), default="on")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024, help="scene side (px)")
    parser.add_argument("--amp", action="store_true", help="float16 autocast")
    parser.add_argument("--split-tf32", action="store_true",
                        help="float32 products as three TF32 tensor-core products")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    model, pixels = model_of(args.variant), synthetic_scene(args.size, args.size)
    options = {"tta": args.tta == "on", "batch_size": args.batch_size, "device": device,
               "amp": args.amp, "split_tf32": args.split_tf32}
    predict_array(model, pixels, **options)  # warm-up: kernels chosen, allocator grown
    with profile(activities=activities) as prof:
        predict_array(model, pixels, **options)
    averages = prof.key_averages()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    print(averages.table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    shares: dict[str, float] = dict.fromkeys((*GROUPS, "other"), 0.0)
    for event in averages:
        name = event.key.removeprefix("aten::")
        if "::" in event.key and not event.key.startswith("aten::"):
            continue
        group = next((g for g, parts in GROUPS.items() if any(p in name for p in parts)),
                     "other")
        shares[group] += getattr(event, key) / 1e3
    total = sum(shares.values()) or 1.0
    print(json.dumps({"variant": args.variant, "tta": args.tta, "batch_size": args.batch_size,
                      "amp": args.amp, "split_tf32": args.split_tf32, "device": device,
                      "device_ms_by_group": {g: round(ms, 1) for g, ms in shares.items()},
                      "share": {g: round(ms / total, 3) for g, ms in shares.items()}}))


if __name__ == "__main__":
    main()
