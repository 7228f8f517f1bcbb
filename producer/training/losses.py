"""The BCED loss of the paper (Eq. 1-3): binary cross-entropy plus Dice on the damage class.

As in the authors' code, both terms act on the foreground logit ``logits[:, 1] - logits[:, 0]``
(for two classes, ``sigmoid`` of it is the softmax probability of damage), with 0/255 label masks
scaled to 0/1. Sums run over every pixel of the batch, the N of Eq. 1 and 2, except label
nodata pixels (an ignore mask), which count in neither term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: The smoothing term ε of the Dice loss (Eq. 2).
DICE_EPSILON = 1.0


def labels_to_targets(labels: torch.Tensor) -> torch.Tensor:
    """0/255 label masks (any integer or float dtype) as float 0/1 targets."""
    return labels.float() / 255.0


def foreground_logit(logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``logits[:, 1] - logits[:, 0]`` of (B, 2, h, w) logits, upsampled bilinearly to ``size``.

    SegFormer's logits are at 1/4 of the input resolution; the authors upsample them to the
    input size before the loss and the argmax.
    """
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise ValueError(f"logits must be (B, 2, H, W), got {tuple(logits.shape)}")
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits[:, 1] - logits[:, 0]


def dice_loss(fg_logit: torch.Tensor, targets: torch.Tensor,
              epsilon: float = DICE_EPSILON, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: ``1 - (2 Σ y p + ε) / (Σ y + Σ p + ε)`` with p = sigmoid(fg_logit); sums run over
    the ``valid`` pixels only when given."""
    p = torch.sigmoid(fg_logit.float())
    y = targets.float()
    if valid is not None:
        w = valid.to(p.dtype)
        p, y = p * w, y * w
    return 1.0 - (2.0 * (y * p).sum() + epsilon) / (y.sum() + p.sum() + epsilon)


def bced_loss(logits: torch.Tensor, targets: torch.Tensor,
              epsilon: float = DICE_EPSILON, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3: BCE-with-logits + Dice of (B, 2, h, w) logits against (B, H, W) 0/1 targets.

    ``valid`` (optional boolean (B, H, W)) excludes its False pixels (label nodata) from both
    terms; N of Eq. 1 and 2 is then the number of valid pixels. Without it, targets outside
    [0, 1] (``IGNORE_TARGET``, -1) are excluded.
    """
    fg = foreground_logit(logits, tuple(targets.shape[-2:])).float()
    if valid is None:
        valid = (targets >= 0) & (targets <= 1)
    valid = valid.bool()
    if bool(valid.all()):
        bce = F.binary_cross_entropy_with_logits(fg, targets.float())
        return bce + dice_loss(fg, targets, epsilon)
    y = torch.where(valid, targets.float(), torch.zeros_like(fg))
    per_pixel = F.binary_cross_entropy_with_logits(fg, y, reduction="none")
    bce = (per_pixel * valid).sum() / valid.sum().clamp(min=1)
    return bce + dice_loss(fg, y, epsilon, valid)
