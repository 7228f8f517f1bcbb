"""SegFormer for surface damage: MiT-b0…b5 configurations and the authors' wrapper module.

The authors hold ``transformers.SegformerForSemanticSegmentation`` in an attribute named
``model`` of a small wrapper whose forward upsamples the 1/4-resolution logits bilinearly to the
input size; their ``.pth`` state_dicts therefore have keys starting with ``model.``. We keep
exactly that layout so their checkpoints load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation

#: The two classes of the product, as the authors label them.
ID2LABEL: dict[int, str] = {0: "background", 1: "damage"}

#: Settings every Mix Transformer (MiT) variant shares (SegFormer paper, Table 6).
SHARED_ARCHITECTURE: dict[str, list[int]] = {
    "num_attention_heads": [1, 2, 5, 8],
    "sr_ratios": [8, 4, 2, 1],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "mlp_ratios": [4, 4, 4, 4],
}


@dataclass(frozen=True)
class Variant:
    """What distinguishes one MiT encoder (plus its all-MLP decoder) from another."""

    depths: tuple[int, int, int, int]
    hidden_sizes: tuple[int, int, int, int]
    decoder_hidden_size: int

    def config_kwargs(self) -> dict[str, Any]:
        """The ``SegformerConfig`` keyword arguments of this variant (shared settings included)."""
        kwargs: dict[str, Any] = {
            "depths": list(self.depths),
            "hidden_sizes": list(self.hidden_sizes),
            "decoder_hidden_size": self.decoder_hidden_size,
        }
        kwargs.update({k: list(v) for k, v in SHARED_ARCHITECTURE.items()})
        return kwargs


_WIDE = (64, 128, 320, 512)
#: MiT-b0 … b5 as in the SegFormer paper and the nvidia/mit-b* configs (b2 is the authors' model).
VARIANTS: dict[str, Variant] = {
    "b0": Variant((2, 2, 2, 2), (32, 64, 160, 256), 256),
    "b1": Variant((2, 2, 2, 2), _WIDE, 256),
    "b2": Variant((3, 4, 6, 3), _WIDE, 768),
    "b3": Variant((3, 4, 18, 3), _WIDE, 768),
    "b4": Variant((3, 8, 27, 3), _WIDE, 768),
    "b5": Variant((3, 6, 40, 3), _WIDE, 768),
}

#: Config keys that define the architecture; what our sidecar JSON records and reads back.
ARCHITECTURE_KEYS: tuple[str, ...] = (
    "num_channels", "depths", "hidden_sizes", "decoder_hidden_size", "num_attention_heads",
    "sr_ratios", "patch_sizes", "strides", "mlp_ratios", "num_labels",
)


def segformer_config(variant: str = "b0", **overrides: Any) -> SegformerConfig:
    """A 2-class ``SegformerConfig`` for ``variant``; ``overrides`` replace single settings.

    Overrides exist for tiny test models and for configs read back from a sidecar; a variant
    name that is not in ``VARIANTS`` is an error naming the valid ones.
    """
    if variant not in VARIANTS and variant != "custom":
        raise ValueError(f"unknown SegFormer variant {variant!r}; valid: {', '.join(VARIANTS)}")
    kwargs: dict[str, Any] = VARIANTS["b0" if variant == "custom" else variant].config_kwargs()
    kwargs.update(num_channels=3, num_labels=len(ID2LABEL))
    kwargs.update(overrides)
    num_labels = int(kwargs.pop("num_labels"))
    id2label = (ID2LABEL if num_labels == len(ID2LABEL)
                else {i: f"class_{i}" for i in range(num_labels)})
    return SegformerConfig(
        **kwargs,
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )


def build_segformer(variant: str = "b0", **overrides: Any) -> SegformerForSemanticSegmentation:
    """A randomly initialised 2-class SegFormer of the given MiT variant (no download)."""
    return SegformerForSemanticSegmentation(segformer_config(variant, **overrides))


def architecture_of(config: SegformerConfig) -> dict[str, Any]:
    """The architecture-defining settings of ``config`` as plain JSON-able values."""
    return {key: getattr(config, key) for key in ARCHITECTURE_KEYS}


def variant_of(config: SegformerConfig) -> str:
    """The MiT variant name whose depths / widths / decoder size ``config`` has, or "custom"."""
    for name, variant in VARIANTS.items():
        if (
            list(config.depths) == list(variant.depths)
            and list(config.hidden_sizes) == list(variant.hidden_sizes)
            and int(config.decoder_hidden_size) == variant.decoder_hidden_size
        ):
            return name
    return "custom"


class DamageSegmenter(nn.Module):
    """The authors' wrapper: SegFormer in ``self.model``; logits upsampled to the input size.

    Input is RGB scaled to [0, 1] (uint8 / 255, no mean/std), shape (N, 3, H, W); output is
    (N, num_labels, H, W) logits.
    """

    def __init__(self, model: SegformerForSemanticSegmentation) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def build(cls, variant: str = "b0", **overrides: Any) -> DamageSegmenter:
        """A randomly initialised segmenter of ``variant`` (see ``build_segformer``)."""
        return cls(build_segformer(variant, **overrides))

    @property
    def config(self) -> SegformerConfig:
        """The SegFormer configuration of the wrapped model."""
        return self.model.config

    @property
    def variant(self) -> str:
        """MiT variant name of the wrapped model ("custom" for non-standard sizes)."""
        return variant_of(self.model.config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits at the input's resolution (bilinear, align_corners=False, as the authors)."""
        logits = self.model(pixel_values=pixel_values).logits
        return nn.functional.interpolate(
            logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False
        )
