"""The scene-source interface: where the imagery of a shelf-year comes from.

Three implementations: Earth Engine (``gee``), a local folder (``local:DIR``) and the offline
demo renderer (``demo``). Every source hands the producer GeoTIFF scenes on one common grid
(the shelf's ROI grid, EPSG:3031 at 30 m), so predictions can be merged pixel by pixel.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shapely.geometry.base import BaseGeometry

from producer.grid import Grid

#: Scene.metadata key of a 1-band mask of the scene's footprint (1 = imaged), when known; the
#: producer then finds SLC-off gaps reaching the window edge, which a hull cannot.
FOOTPRINT_KEY = "footprint_path"


@dataclass(frozen=True)
class Scene:
    """One daily scene of a summer, as a 3-band UInt8 RGB GeoTIFF on the ROI grid.

    Pixels that are 0 in all three bands are no-data (outside the footprint, masked, or SLC-off
    gaps); ``cloud_mask_path`` (optional, 1-band UInt8, 1 = cloud or shadow) marks pixels that are
    present but unusable.
    """

    scene_id: str
    sensor: str
    acquired: dt.date
    path: Path
    valid_fraction: float
    """Share of the ROI with usable (present, cloud-free) pixels, used to rank scenes."""
    cloud_mask_path: Path | None = None
    source_ids: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


class SceneSource(Protocol):
    """Delivers the candidate scenes of one shelf and summer."""

    name: str
    """"gee", "local" or "demo"; recorded in the provenance."""

    def grid(self, shelf: str, roi: BaseGeometry) -> Grid:
        """The grid the scenes (and so the products) of this shelf are delivered on."""
        ...

    def scenes(self, shelf: str, year: int, grid: Grid, workdir: Path) -> list[Scene]:
        """The candidate scenes of the summer ``year``, best first, written under ``workdir``.

        Returns an empty list when no imagery covers the shelf that summer.
        """
        ...
