"""The paper's learning-rate schedule (section 2.3.3), per epoch.

Linear warm-up from ``start_lr`` to ``peak_lr`` over ``warmup_epochs``, cosine annealing to
``final_lr`` over ``cosine_epochs``, then ``final_lr`` for the rest (the paper: 1e-5 → 1e-4 over
20 epochs, cosine to 5e-5 over 80, constant for the final 100 of 200).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a function of the (0-based) epoch."""

    start_lr: float = 1e-5
    peak_lr: float = 1e-4
    final_lr: float = 5e-5
    warmup_epochs: int = 20
    cosine_epochs: int = 80

    def __post_init__(self) -> None:
        if min(self.start_lr, self.peak_lr, self.final_lr) <= 0:
            raise ValueError("learning rates must be > 0")
        if self.warmup_epochs < 0 or self.cosine_epochs < 0:
            raise ValueError("warmup_epochs and cosine_epochs must be >= 0")

    def lr(self, epoch: int) -> float:
        """The learning rate used during ``epoch`` (0-based)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch < self.warmup_epochs:
            return self.start_lr + (self.peak_lr - self.start_lr) * epoch / self.warmup_epochs
        t = epoch - self.warmup_epochs
        if t < self.cosine_epochs:
            cos = 0.5 * (1.0 + math.cos(math.pi * t / self.cosine_epochs))
            return self.final_lr + (self.peak_lr - self.final_lr) * cos
        return self.final_lr

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """A per-epoch ``LambdaLR`` for an optimizer built with ``lr=peak_lr``.

        Its state (the epoch counter) goes into checkpoints, so a resumed run continues with
        exactly the learning rates of an uninterrupted one.
        """
        for group in optimizer.param_groups:
            group["lr"] = self.peak_lr
            group["initial_lr"] = self.peak_lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: self.lr(e) / self.peak_lr)
