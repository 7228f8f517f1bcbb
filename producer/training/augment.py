"""Training augmentation of the authors' code: random rotation and random brightness.

Rotation by an angle drawn uniformly from [-45°, 45°] about the tile centre (nearest for the
image and the label, as the authors' code rotates both; zeros outside), then with probability
0.5 the image is multiplied by a factor drawn uniformly from [0.75, 1.25] and clamped to
[0, 1]. All draws come from the
``torch.Generator`` passed in, so a sample's augmentation is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Parameters of the augmentation (the authors' values by default)."""

    max_rotation_deg: float = 45.0
    brightness: float = 0.25
    brightness_p: float = 0.5

    def __call__(self, image: torch.Tensor, label: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a (3, H, W) float [0, 1] image and its (H, W) 0/1 label together."""
        u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        angle = (2.0 * u[0] - 1.0) * self.max_rotation_deg
        image, label = rotate(image, label, angle)
        if u[1] < self.brightness_p:
            factor = 1.0 + (2.0 * u[2] - 1.0) * self.brightness
            image = image * factor
        return image.clamp(0.0, 1.0), label


def rotate(image: torch.Tensor, label: torch.Tensor,
           angle_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate image and label by ``angle_deg`` about the centre, nearest neighbour for both
    (the authors' rotation: image pixels keep their Landsat values, never blends of two)."""
    a = math.radians(angle_deg)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0],
                          [math.sin(a), math.cos(a), 0.0]], dtype=torch.float32)
    h, w = image.shape[-2:]
    if h != w:  # keep the rotation a rotation in pixel units for non-square tiles
        theta[0, 1] *= h / w
        theta[1, 0] *= w / h
    grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)
    img = F.grid_sample(image[None].float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[0]
    lab = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[0, 0]
    return img, lab.to(label.dtype)
