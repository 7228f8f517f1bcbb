"""Split-TF32 products: float32 accuracy from TF32 tensor-core products (checked on the CPU).

The CPU has no tensor cores, so ``EmulatedTF32`` rounds the operands of every matrix product
to TF32 (10 mantissa bits, round to nearest even) as a GPU does with TF32 allowed, keeping the
float32 accumulation. Under it, plain float32 products lose accuracy the production path may not
lose, and the split products must not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from producer.segmentation import DamageSegmenter, predict_array
from producer.segmentation.inference import BatchedForward
from producer.segmentation.split_tf32 import (
    TF32_MASK,
    SplitTF32Linear,
    split_tf32,
    split_tf32_channel_map,
)
from tests.tiny_models import decisive_segmenter

aten = torch.ops.aten
#: Matrix products and the positions of their two factors (bias-adding ones take it first).
PRODUCTS = {aten.mm.default: (0, 1), aten.bmm.default: (0, 1), aten.matmul.default: (0, 1),
            aten.linear.default: (0, 1), aten.addmm.default: (1, 2),
            aten.baddbmm.default: (1, 2)}


def to_tf32(tensor: Any) -> Any:
    """``tensor`` rounded to TF32 (nearest, ties to even) if it is a float32 tensor."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32:
        return tensor
    bits = tensor.contiguous().view(torch.int32)
    return ((bits + 0xFFF + ((bits >> 13) & 1)) & TF32_MASK).view(torch.float32)


class EmulatedTF32(TorchDispatchMode):
    """Every matrix product of float32 operands sees them rounded to TF32; ``products`` counts."""

    def __init__(self) -> None:
        super().__init__()
        self.products = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        args = list(args)
        if func in PRODUCTS:
            self.products += 1
            for index in PRODUCTS[func]:
                args[index] = to_tf32(args[index])
        elif func is aten.einsum.default:
            self.products += 1
            args[1] = [to_tf32(operand) for operand in args[1]]
        return func(*args, **(kwargs or {}))


finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(st.lists(finite_floats, min_size=1, max_size=64))
def test_a_split_is_exact_and_its_high_part_is_tf32(values: list[float]) -> None:
    """high + low gives the number back bit for bit; high has no bits TF32 would round away,
    and low is below one TF32 unit of the number (so the dropped low × low term is ~2^-22;
    subnormal numbers: below 2^13 of their units)."""
    tensor = torch.tensor(values, dtype=torch.float32)
    high, low = split_tf32(tensor)
    assert torch.equal(high + low, tensor)
    assert torch.equal(to_tf32(high), high)
    bound = torch.maximum(tensor.abs() * 2.0 ** -10, torch.tensor(2.0 ** -136))
    assert bool((low.abs() <= bound).all())


@pytest.fixture(scope="module")
def linear() -> nn.Linear:
    """A 256 → 64 linear layer with a bias."""
    torch.manual_seed(1)
    return nn.Linear(256, 64)


def test_a_split_linear_keeps_float32_accuracy_under_tf32(linear: nn.Linear) -> None:
    """Under TF32 rounding a plain product is off by ~1e-3 relative; the split one stays at
    float32 rounding (~1e-6) of the float64 result."""
    torch.manual_seed(2)
    hidden = torch.randn(32, 256)
    with torch.no_grad():
        exact = nn.functional.linear(hidden.double(), linear.weight.double(),
                                     linear.bias.double())
        with EmulatedTF32():
            plain = linear(hidden)
            split = SplitTF32Linear(linear)(hidden)
    scale = float(exact.abs().max())
    assert float((plain.double() - exact).abs().max()) / scale > 1e-4
    assert float((split.double() - exact).abs().max()) / scale < 2e-6


def test_a_split_channel_map_matches_the_einsum_under_tf32() -> None:
    """The fused decode head's per-stage 1×1 projection keeps float32 accuracy too."""
    torch.manual_seed(3)
    weight, feature = torch.randn(48, 32), torch.randn(2, 32, 8, 8)
    exact = torch.einsum("dc,nchw->ndhw", weight.double(), feature.double())
    with EmulatedTF32():
        split = split_tf32_channel_map(*split_tf32(weight), feature)
    assert float((split.double() - exact).abs().max()) / float(exact.abs().max()) < 2e-6


@pytest.fixture(scope="module")
def b0() -> DamageSegmenter:
    """Random-init MiT-b0 with a decisive classifier."""
    return decisive_segmenter("b0")


def test_every_product_of_the_production_forward_is_split(b0: DamageSegmenter) -> None:
    """The whole production algorithm (TTA, windows, fused head) with split products under TF32
    rounding gives the exact float32 probabilities within float rounding, where plain TF32
    products move them by more: no product of the forward is left unsplit."""
    pixels = np.random.default_rng(0).integers(1, 255, (3, 96, 96), dtype=np.uint8)
    options: dict[str, Any] = {"tta": True, "device": "cpu", "window": 64, "stride": 32,
                               "batch_size": 8}
    exact = predict_array(b0, pixels, **options).probabilities
    with EmulatedTF32() as plain_mode:
        plain = predict_array(b0, pixels, **options).probabilities
    with EmulatedTF32() as split_mode:
        split = predict_array(b0, pixels, split_tf32=True, **options).probabilities
    assert plain_mode.products > 0 and split_mode.products > plain_mode.products
    assert float(np.abs(plain - exact).max()) > 2e-5
    assert float(np.abs(split - exact).max()) < 2e-6


def test_split_products_leave_the_model_as_it_was(b0: DamageSegmenter) -> None:
    """The split layers live in the forward's private copy: the caller's model keeps its
    ``nn.Linear`` layers (training, checkpoints and other forwards use it unchanged)."""
    forward = BatchedForward(b0, torch.device("cpu"), tta=False, batch_size=4, split_tf32=True)
    assert any(isinstance(m, SplitTF32Linear) for m in forward.stages.modules())
    assert not any(isinstance(m, SplitTF32Linear) for m in b0.modules())


@pytest.mark.parametrize("options", [{"amp": True}, {"fuse_decoder": False}])
def test_split_products_refuse_autocast_and_the_unfused_head(b0: DamageSegmenter,
                                                             options: dict[str, bool]) -> None:
    """Split TF32 is a float32 method of the fused forward: asked with float16 autocast or the
    unfused decode head it says so instead of silently running something else."""
    with pytest.raises(ValueError, match="split TF32"):
        BatchedForward(b0, torch.device("cpu"), tta=False, batch_size=4, split_tf32=True,
                       **options)
