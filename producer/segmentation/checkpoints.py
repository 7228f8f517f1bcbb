"""Load and save segmentation weights: the authors' ``.pth`` files and our safetensors + JSON.

The authors' checkpoints are ``torch.save``d state_dicts of ``DamageSegmenter`` written with
transformers 4.x, whose SegFormer module names differ from 5.9 on. ``OLD_TO_NEW`` lists the exact
renames (../shared/reference/README.md); loading is strict after them, so a missing or unexpected
tensor is an error rather than a silently half-initialised model. The architecture is inferred
from the tensor shapes. Our own format is a safetensors file with a sidecar JSON (same stem)
recording the config, variant, training facts, metrics and the training-data hash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from producer.provenance import ModelRecord
from producer.provenance import file_sha256 as weights_sha256
from producer.segmentation.model import (
    SHARED_ARCHITECTURE,
    VARIANTS,
    DamageSegmenter,
    architecture_of,
    segformer_config,
    variant_of,
)
from producer.writer import atomic_path

#: transformers 4.x → 5.9+ SegFormer parameter-name renames (``{n}`` is a stage index), as
#: listed in ../shared/reference/README.md; both directions below are derived from this table.
RENAMES: tuple[tuple[str, str], ...] = (
    ("encoder.patch_embeddings.{n}.", "stages.{n}.patch_embeddings."),
    ("encoder.block.{n}.", "stages.{n}.blocks."),
    ("encoder.layer_norm.{n}.", "stages.{n}.layer_norm."),
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.self.sr.", "attention.sequence_reduction.sequence_reduction."),
    ("attention.self.layer_norm.", "attention.sequence_reduction.layer_norm."),
    ("attention.output.dense.", "attention.o_proj."),
    ("mlp.dense1.", "mlp.fc1."),
    ("mlp.dense2.", "mlp.fc2."),
    ("layer_norm_1.", "layernorm_before."),
    ("layer_norm_2.", "layernorm_after."),
    ("decode_head.linear_c.", "decode_head.linear_projections."),
)


def _rule(source: str, target: str) -> tuple[str, str]:
    """A (pattern, replacement) pair turning name fragment ``source`` into ``target``."""
    pattern = r"\b" + re.escape(source).replace(re.escape("{n}"), r"(\d+)")
    return pattern, target.replace("{n}", r"\1")


OLD_TO_NEW: tuple[tuple[str, str], ...] = tuple(_rule(old, new) for old, new in RENAMES)
#: The inverse renames (5.9+ → 4.x), used to write checkpoints the authors' code can load.
NEW_TO_OLD: tuple[tuple[str, str], ...] = tuple(_rule(new, old) for old, new in RENAMES)

_OLD_LAYOUT = re.compile(r"\bencoder\.(block|patch_embeddings|layer_norm)\.\d+\.")
SIDECAR_FORMAT = 1


class CheckpointError(ValueError):
    """A weights file that cannot be loaded as a damage segmenter (message names file and rule)."""


@dataclass
class ModelInfo:
    """What we know about a set of weights: identity, architecture, how it was trained."""

    name: str
    variant: str
    sha256: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_sha256: str = ""
    weights_file: str = ""
    source_format: str = ""

    def to_json(self) -> dict[str, Any]:
        """The sidecar JSON document of these weights."""
        doc = asdict(self)
        doc["format_version"] = SIDECAR_FORMAT
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelInfo:
        """Read a sidecar document back (unknown keys are ignored for forward compatibility)."""
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**known)

    def model_record(self) -> ModelRecord:
        """The provenance record of these weights (name, sha256, file, config)."""
        return ModelRecord(
            name=self.name,
            weights_sha256=self.sha256,
            weights_file=self.weights_file,
            config={"variant": self.variant, **self.config},
        )


def _rename(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    """Apply every rename rule to one parameter name."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def to_new_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers-4.x SegFormer state_dict renamed to the 5.9+ module names."""
    return {_rename(k, OLD_TO_NEW): v for k, v in state_dict.items()}


def to_old_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A 5.9+ SegFormer state_dict renamed to the transformers-4.x names the authors' code uses."""
    return {_rename(k, NEW_TO_OLD): v for k, v in state_dict.items()}


def is_old_layout(state_dict: Mapping[str, Any]) -> bool:
    """Whether the state_dict uses transformers-4.x SegFormer names."""
    return any(_OLD_LAYOUT.search(k) for k in state_dict)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict inside what ``torch.load`` returned (bare, or under a usual training key)."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state_dict of tensors (got {type(obj).__name__})")
    state = dict(obj)
    if all(k.startswith("segformer.") or k.startswith("decode_head.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}  # bare HF model, no wrapper
    if not any(k.startswith("model.segformer.") for k in state):
        raise CheckpointError(f"{path}: no 'model.segformer.*' tensors; not a SegFormer segmenter")
    return state


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """SegFormer settings read from tensor shapes of a 5.9+-layout ``model.*`` state_dict.

    Depths, widths, patch sizes, sequence-reduction ratios, MLP ratios, decoder width and class
    count are all visible in the shapes; attention heads and strides are not, so they take the
    MiT values (the same for every variant).
    """
    prefix = "model.segformer.stages."
    stages = sorted({int(k[len(prefix):].split(".")[0])
                     for k in state_dict if k.startswith(prefix)})
    try:
        return _architecture(state_dict, prefix, stages)
    except (KeyError, IndexError) as error:
        raise CheckpointError(f"SegFormer tensor {error} is missing: the checkpoint is "
                              "incomplete or not a SegFormer segmenter") from None


def _architecture(state_dict: Mapping[str, torch.Tensor], prefix: str,
                  stages: list[int]) -> dict[str, Any]:
    """``infer_architecture``'s reading of the shapes (raises KeyError for a missing tensor)."""
    hidden, patch, depths, srs, mlps = [], [], [], [], []
    for n in stages:
        proj = state_dict[f"{prefix}{n}.patch_embeddings.proj.weight"]
        hidden.append(int(proj.shape[0]))
        patch.append(int(proj.shape[2]))
        blocks = {k.split(".")[5] for k in state_dict if k.startswith(f"{prefix}{n}.blocks.")}
        depths.append(len(blocks))
        sr = state_dict.get(
            f"{prefix}{n}.blocks.0.attention.sequence_reduction.sequence_reduction.weight"
        )
        srs.append(int(sr.shape[2]) if sr is not None else 1)
        fc1 = state_dict[f"{prefix}{n}.blocks.0.mlp.fc1.weight"]
        mlps.append(int(fc1.shape[0]) // hidden[-1])
    first = state_dict[f"{prefix}0.patch_embeddings.proj.weight"]
    return {
        "num_channels": int(first.shape[1]),
        "depths": depths,
        "hidden_sizes": hidden,
        "decoder_hidden_size": int(state_dict["model.decode_head.linear_fuse.weight"].shape[0]),
        "num_attention_heads": list(SHARED_ARCHITECTURE["num_attention_heads"][: len(stages)]),
        "sr_ratios": srs,
        "patch_sizes": patch,
        "strides": list(SHARED_ARCHITECTURE["strides"][: len(stages)]),
        "mlp_ratios": mlps,
        "num_labels": int(state_dict["model.decode_head.classifier.weight"].shape[0]),
        "num_encoder_blocks": len(stages),
    }


def _build_and_load(state: dict[str, torch.Tensor], arch: dict[str, Any], path: Path,
                    device: str | torch.device) -> DamageSegmenter:
    """A segmenter of architecture ``arch`` with ``state`` loaded strictly, in eval mode."""
    arch = dict(arch)
    arch.setdefault("num_encoder_blocks", len(arch["depths"]))
    model = DamageSegmenter(_segformer_from_arch(arch))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match the architecture (strict load): "
                              f"{error}") from error
    return model.to(device).eval()


def _segformer_from_arch(arch: dict[str, Any]):  # noqa: ANN202 - transformers type
    """The SegFormer model for an architecture dict (variant settings overridden by it)."""
    from transformers import SegformerForSemanticSegmentation

    return SegformerForSemanticSegmentation(segformer_config("custom", **arch))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[DamageSegmenter, ModelInfo]:
    """Load weights from an authors' ``.pth`` or our ``.safetensors`` (+ sidecar ``.json``).

    Returns the segmenter in eval mode on ``device`` and its ``ModelInfo`` (sha256 of the file
    given). Unknown file types, non-SegFormer content, shape mismatches and a sidecar whose
    recorded sha256 disagrees with the file are errors naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    sha = weights_sha256(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, sha, device)
    if path.suffix in (".pth", ".pt", ".bin"):
        return _load_pth(path, sha, device)
    raise CheckpointError(f"{path}: unknown weights format {path.suffix!r} "
                          "(expected .pth from the authors or .safetensors)")


def _load_pth(path: Path, sha: str, device: str | torch.device
              ) -> tuple[DamageSegmenter, ModelInfo]:
    """Load a ``torch.save``d state_dict (transformers 4.x or 5.x names), shapes → architecture."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for bad files
        # torch's own words are often bare (a truncated pickle says "KeyError: 105")
        raise CheckpointError(f"{path}: not a torch state_dict file (torch.load failed: "
                              f"{type(error).__name__})") from error
    state = _unwrap(raw, path)
    old = is_old_layout(state)
    if old:
        state = to_new_layout(state)
    arch = infer_architecture(state)
    model = _build_and_load(state, arch, path, device)
    info = ModelInfo(
        name=path.stem,
        variant=variant_of(model.config),
        sha256=sha,
        config={k: arch[k] for k in arch if k != "num_encoder_blocks"},
        weights_file=path.name,
        source_format="pth-transformers4" if old else "pth-transformers5",
    )
    return model, info


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar beside a safetensors weights file (same stem)."""
    return Path(path).with_suffix(".json")


def _load_safetensors(path: Path, sha: str, device: str | torch.device
                      ) -> tuple[DamageSegmenter, ModelInfo]:
    """Load safetensors weights: ours (the sidecar gives config and facts) or a bare Hugging
    Face ``model.safetensors`` (shapes give the architecture)."""
    try:
        tensors = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    state = _unwrap(tensors, path)
    if is_old_layout(state):
        state = to_new_layout(state)
    side = sidecar_path(path)
    if side.is_file():
        try:
            info = ModelInfo.from_json(json.loads(side.read_text()))
        except (json.JSONDecodeError, TypeError) as error:
            raise CheckpointError(f"{side}: unreadable model sidecar: {error}") from error
        if info.sha256 and info.sha256 != sha:
            raise CheckpointError(f"{side}: sha256 {info.sha256[:12]}… does not match "
                                  f"{path.name} ({sha[:12]}…); weights and sidecar disagree")
        arch = info.config or infer_architecture(state)
        _check_sidecar_config(side, path, arch, state)
    else:
        arch = infer_architecture(state)
        info = ModelInfo(name=path.stem, variant="")
    model = _build_and_load(state, arch, path, device)
    info.variant = variant_of(model.config)
    info.sha256 = sha
    info.weights_file = path.name
    info.config = architecture_of(model.config)
    info.source_format = "safetensors"
    return model, info


#: Architecture settings visible in the tensor shapes (``infer_architecture`` reads them).
SHAPE_SETTINGS = ("depths", "hidden_sizes", "decoder_hidden_size", "patch_sizes", "sr_ratios",
                  "mlp_ratios", "num_labels", "num_channels")


def _check_sidecar_config(side: Path, path: Path, arch: Mapping[str, Any],
                          state: Mapping[str, torch.Tensor]) -> None:
    """Refuse a sidecar whose config disagrees with the shapes of the tensors, naming the
    settings, instead of a strict-load dump of every mismatched tensor."""
    try:
        shapes = infer_architecture(state)
    except CheckpointError:
        return  # incomplete weights: the strict load names what is missing
    differs = [f"{key} {arch[key]} (weights: {shapes[key]})" for key in SHAPE_SETTINGS
               if key in arch and list(_as_list(arch[key])) != list(_as_list(shapes[key]))]
    if differs:
        raise CheckpointError(f"{side}: sidecar config disagrees with the weights in "
                              f"{path.name}: {'; '.join(differs)} (fix or remove the sidecar)")


def _as_list(value: Any) -> list[Any]:
    """A setting as a list, so 768 and [2, 2] compare alike whatever JSON made of them."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def save_checkpoint(model: DamageSegmenter, path: str | Path, info: ModelInfo, *,
                    authors_pth: bool = False) -> ModelInfo:
    """Write ``model`` as safetensors + sidecar JSON (and the authors' 4.x ``.pth`` on request).

    ``path`` must end in ``.safetensors``; the sidecar is ``<stem>.json`` and the optional
    ``.pth`` is ``<stem>.pth`` (state_dict with transformers-4.x names, loadable by the authors'
    code). Every file is written atomically. Returns the info as recorded, sha256 included.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: save_checkpoint writes .safetensors (got {path.suffix!r})")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    recorded = ModelInfo(**{**asdict(info)})
    recorded.sha256 = weights_sha256(path)
    recorded.variant = variant_of(model.config)
    recorded.config = architecture_of(model.config)
    recorded.weights_file = path.name
    recorded.source_format = "safetensors"
    with atomic_path(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(recorded.to_json(), indent=2, sort_keys=True) + "\n")
    if authors_pth:
        with atomic_path(path.with_suffix(".pth")) as tmp:
            torch.save(to_old_layout(state), tmp)
    return recorded


__all__ = [
    "NEW_TO_OLD",
    "OLD_TO_NEW",
    "VARIANTS",
    "CheckpointError",
    "ModelInfo",
    "infer_architecture",
    "is_old_layout",
    "load_checkpoint",
    "save_checkpoint",
    "sidecar_path",
    "to_new_layout",
    "to_old_layout",
    "weights_sha256",
]
