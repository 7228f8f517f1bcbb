"""Float32 matrix products on TF32 tensor cores, accurate to float32 ("split TF32", 3×TF32).

A GPU's TF32 tensor cores multiply numbers with 10 mantissa bits (float32 has 23) and add in
float32: several times the float32 rate, but a relative error of ~1e-3 per product, which would
move the reference's probabilities far beyond the 1e-4 the production path must keep. Splitting
each float32 operand into a TF32-exact high part and a low remainder, ``a = a_hi + a_lo``, and
summing three TF32 products ``a_hi·b_hi + a_hi·b_lo + a_lo·b_hi`` restores float32 accuracy (the
dropped ``a_lo·b_lo`` and the rounding of the low parts are ~2^-21 relative) at three products'
cost, still on the tensor cores. It is what CUTLASS calls ``OpMultiplyAddFastF32`` and what
PyTorch's float32 memory-efficient attention already does on Ampere and later.

Here it replaces the SegFormer encoder's ``nn.Linear`` layers and the fused decode head's
per-stage projections, which hold most of the production forward's float32 work; convolutions
stay exact float32 (cuDNN TF32 off), attention is PyTorch's. On the CPU nothing changes but the
cost (the products are exact float32 there); tests emulate TF32 rounding to check the accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: Bits of a float32 that TF32 keeps: sign, exponent and the 10 leading mantissa bits.
TF32_MASK = -(1 << 13)


def split_tf32(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(high, low)`` with ``high + low == tensor`` exactly and ``high`` representable in TF32
    (its 13 low mantissa bits cleared), so the tensor cores multiply ``high`` without rounding."""
    high = (tensor.view(torch.int32) & TF32_MASK).view(torch.float32)
    return high, tensor - high


class SplitTF32Linear(nn.Module):
    """``nn.Linear`` in float32 accuracy from three TF32 products (weights split once)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight_high, weight_low = split_tf32(linear.weight.detach().float())
        self.register_buffer("weight_high", weight_high)
        self.register_buffer("weight_low", weight_low)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ weight.T + bias``, the small cross terms summed before the main one."""
        high, low = split_tf32(hidden)
        cross = (nn.functional.linear(low, self.weight_high)
                 + nn.functional.linear(high, self.weight_low))
        return nn.functional.linear(high, self.weight_high, self.bias) + cross


def split_tf32_linears(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.Linear`` inside it replaced by a ``SplitTF32Linear``, in place
    (callers pass a copy: the replacements hold no gradients and serve inference only)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, SplitTF32Linear(child))
        else:
            split_tf32_linears(child)
    return module


def split_tf32_channel_map(weight_high: torch.Tensor, weight_low: torch.Tensor,
                           feature: torch.Tensor) -> torch.Tensor:
    """``einsum("dc,nchw->ndhw", weight, feature)`` (a 1×1 projection of a feature map) from three
    TF32 products, the weight given split."""
    high, low = split_tf32(feature)
    cross = (torch.einsum("dc,nchw->ndhw", weight_high, low)
             + torch.einsum("dc,nchw->ndhw", weight_low, high))
    return torch.einsum("dc,nchw->ndhw", weight_high, high) + cross


@contextmanager
def split_tf32_products(device: torch.device) -> Iterator[None]:
    """On CUDA, let matrix products run on TF32 tensor cores (the split layers keep them float32
    accurate) while convolutions stay exact float32. Restores the settings after."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
