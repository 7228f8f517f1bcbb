"""Builds small, valid releases with the real writer, for tests of everything downstream."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from producer.grid import Grid
from producer.provenance import ModelRecord, Provenance, SceneRecord, provenance_path
from producer.shelves import roi_polygon
from producer.spec import TYPE1, TYPE2, build_name
from producer.writer import write_products


@dataclass(frozen=True)
class ShelfYear:
    """One shelf-year of a fixture release."""

    shelf: str
    year: int
    sensors: tuple[str, ...]
    restoration: str | None = None
    size: tuple[int, int] = (600, 700)


#: Several shelves and years, a multi-sensor name and a restored LE07 (SLC-off) year.
DEFAULT_SHELF_YEARS: tuple[ShelfYear, ...] = (
    ShelfYear("Totten", 2021, ("LC08", "LC09")),
    ShelfYear("Totten", 2016, ("LC08",)),
    ShelfYear("Larsen B", 2005, ("LE07",), "DiffGF"),
    ShelfYear("Larsen B", 2001, ("LE07",)),
    ShelfYear("Amery_front", 2012, ("LE07", "LC08"), "DiffGF", size=(1100, 900)),
)


def fixture_grid(shelf: str, size: tuple[int, int]) -> Grid:
    """A small grid centred in the shelf's default ROI."""
    centre = roi_polygon(shelf).centroid
    height, width = size
    left = round(centre.x / 30) * 30 - (width // 2) * 30  # aligned to 30 m, odd sizes too
    top = round(centre.y / 30) * 30 + (height // 2) * 30
    return Grid.from_bounds(left, top - height * 30, left + width * 30, top)


def fixture_arrays(item: ShelfYear, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A damage map with crevasse-like lines and blobs, and an elliptical shelf extent."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:item.size[0], 0:item.size[1]]
    damage = (np.sin(cols / 7.0 + rows / 19.0) > 0.97) | (rng.random(item.size) < 0.01)
    damage &= rows > item.size[0] // 5
    cy, cx = item.size[0] / 2, item.size[1] / 2
    extent = ((rows - cy) / (0.42 * item.size[0])) ** 2 \
        + ((cols - cx) / (0.45 * item.size[1])) ** 2 < 1
    return damage, extent


def fixture_provenance(item: ShelfYear) -> Provenance:
    """A plausible provenance record for a fixture shelf-year (two scenes of the summer)."""
    first = dt.date(item.year, 12, 10)
    scenes = tuple(
        SceneRecord(
            scene_id=f"{sensor}_{item.shelf.replace(' ', '')}_composite_{day.isoformat()}",
            sensor=sensor, acquired=day, valid_fraction=0.9 - 0.2 * i,
            map_fraction=0.8 if i == 0 else 0.2 / max(1, len(item.sensors) - 1),
            role="main" if i == 0 else "fill",
            slc_off=sensor == "LE07" and item.restoration is not None,
            restored_fraction=0.15 if sensor == "LE07" and item.restoration else 0.0,
        )
        for i, (sensor, day) in enumerate(
            (s, first + dt.timedelta(days=9 * k)) for k, s in enumerate(item.sensors))
    )
    name = build_name(item.sensors, item.shelf, item.year, item.restoration, TYPE1)
    return Provenance(
        shelf=item.shelf, year=item.year, sensors=item.sensors, restoration=item.restoration,
        source="local", scenes=scenes,
        segmentation=ModelRecord("segformer-mit-b2", "0" * 64, "fixture.pth"),
        restoration_model=(ModelRecord("diffgf", "1" * 64) if item.restoration == "DiffGF"
                           else None),  # a classical fill (FillNodata) has no model
        software={"icedamage": "test"},
        parameters={"restored_extent_fraction": 0.17} if item.restoration else {},
        products={TYPE1.key: name.filename, TYPE2.key: name.partner().filename},
    )


def build_release(root: Path, shelf_years: tuple[ShelfYear, ...] = DEFAULT_SHELF_YEARS,
                  with_provenance: bool = True) -> Path:
    """Write a small valid release (both products per shelf-year, optional provenance)."""
    for seed, item in enumerate(shelf_years):
        damage, extent = fixture_arrays(item, seed)
        written = write_products(root, item.shelf, item.year, item.sensors, item.restoration,
                                 damage, extent, fixture_grid(item.shelf, item.size))
        if with_provenance:
            path = provenance_path(root, written.name)
            path.write_text(fixture_provenance(item).to_json())
    return root
