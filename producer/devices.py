"""The ``--device`` rule every command shares (``produce``, training, evaluation, DiffGF).

A device is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and a CUDA one must be a device torch can
see here. Asked before any work, so a typo or a CPU-only build is one line rather than torch's
traceback listing every backend after the scenes were fetched. torch is imported only for a
CUDA device: a CPU run (and a skipping re-run) does not wait for it.
"""

from __future__ import annotations

import re

#: What ``--device`` takes.
DEVICE_VALUES = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def device_problem(device: str) -> str | None:
    """Why torch cannot use ``device`` here, or None."""
    if not DEVICE_VALUES.fullmatch(device):
        return f"not a device (rule: {DEVICE_HELP})"
    if not device.startswith("cuda"):
        return None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        return (f"torch {torch.__version__} sees no CUDA device (a CPU build, or no GPU); use "
                "--device cpu or auto")
    if index >= count:
        return f"torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    return None
