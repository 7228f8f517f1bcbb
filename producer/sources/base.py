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
from producer.spec import summer_window

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
    signature: str = ""
    """Digest of the files the scene was made from (their paths, sizes and modification times),
    for sources whose scene ids do not pin the pixels: a ``local:DIR`` file replaced by a new
    export, or a second file of the same day, keeps the id. It enters the shelf-year's inputs
    digest (``digest_key``); empty where the id says it all (``demo``, ``gee``)."""

    @property
    def digest_key(self) -> str:
        """How the scene enters a shelf-year's inputs digest (``scene_key``)."""
        return scene_key(self.scene_id, self.signature)


def scene_key(scene_id: str, signature: str = "") -> str:
    """A scene's id, with the signature of its files when it has one: what the inputs digest
    hashes, so a re-run redoes a shelf-year whose files changed under the same scene ids."""
    return f"{scene_id}@{signature}" if signature else scene_id


def summer_span(year: int) -> str:
    """The months of the austral summer ``year`` (``spec.summer_window``), for messages."""
    first, last = summer_window(year)
    return f"{first:%B %Y} – {last:%B %Y}"


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

        Optional, found by ``getattr``: ``scene_ids(shelf, year, grid)`` (or ``scene_keys``,
        when scenes carry a ``signature``) lists the ``digest_key`` of every scene ``scenes``
        would return, without building any, so an up-to-date shelf-year is skipped cheaply
        (None: cannot tell without the pixels); ``explain(shelf, year)`` gives lines on what the
        last ``scenes`` call left out and why, for a year that cannot be mapped.
        """
        ...
