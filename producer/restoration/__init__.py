"""Landsat 7 SLC-off restoration: DiffGF (paper 2.2) and an explicit classical alternative."""

from producer.restoration.api import (
    DEMO_WEIGHTS,
    MissingWeightsError,
    RestorationResult,
    check_method,
    restore,
    restore_scene_file,
)

__all__ = [
    "DEMO_WEIGHTS",
    "MissingWeightsError",
    "RestorationResult",
    "check_method",
    "restore",
    "restore_scene_file",
]
