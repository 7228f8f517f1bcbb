"""Damage segmentation: SegFormer (MiT-b0…b5), the authors' checkpoints, whole-scene inference.

torch and transformers are imported only inside this subpackage, so the rest of the producer (and
the catalog, validation, publish packages) stays importable without them.
"""

from producer.segmentation.checkpoints import (
    CheckpointError,
    ModelInfo,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from producer.segmentation.inference import (
    ArrayPrediction,
    SceneStats,
    predict_array,
    predict_array_reference,
    predict_scene,
)
from producer.segmentation.model import VARIANTS, DamageSegmenter, build_segformer

__all__ = [
    "VARIANTS",
    "ArrayPrediction",
    "CheckpointError",
    "DamageSegmenter",
    "ModelInfo",
    "SceneStats",
    "build_segformer",
    "load_checkpoint",
    "predict_array",
    "predict_array_reference",
    "predict_scene",
    "save_checkpoint",
    "weights_sha256",
]
