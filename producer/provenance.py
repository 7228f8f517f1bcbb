"""The provenance record written beside each shelf-year's products.

The catalog builds STAC items, metadata.ods and statistics from this record and the rasters
alone, so everything a user needs to trace a map back to its imagery lives here.

Fractions and their base. Every pixel fraction of a scene (``SceneRecord``) and of the merge
(``Provenance.parameters``) is a share of the ROI's pixels on the grid, recorded as
``parameters["roi_pixels"]``, except where a field says otherwise (``restored_extent_fraction``:
of the effective extent's pixels; ``extent_outside_roi_fraction``: of the extent polygon's
area). Records of schema 1.0 (before ``roi_pixels`` was recorded) gave ``cloud_fraction`` and
``extent_fraction`` as shares of the whole grid (``parameters["grid"]``: width × height); they
are read as they are, and ``fraction_base`` says which base a record used.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from producer.spec import TYPE1, ProductName, build_name, is_demo_source

#: 1.1: ``cloud_fraction`` and ``parameters["extent_fraction"]`` became shares of the ROI (1.0:
#: of the grid); ``roi_pixels`` and ``extent_pixels`` are recorded.
SCHEMA_VERSION = "1.1"


@dataclass(frozen=True)
class SceneRecord:
    """One scene (daily composite) used for the map."""

    scene_id: str
    sensor: str
    acquired: dt.date
    valid_fraction: float
    """Share of the ROI with usable pixels in this scene: imaged and cloud-free, SLC-off gaps
    included (they are restored before segmentation) unless a cloud lies across them."""
    map_fraction: float
    """Share of the ROI whose merged map pixels come from this scene's prediction."""
    role: str = "fill"
    """"main" for the scene the map is based on, "fill" for complementary scenes."""
    cloud_fraction: float | None = None
    """Share of the ROI where this scene has data but is cloudy (flagged cloud, and SLC-off gap
    pixels a cloud lies across); ``valid_fraction + cloud_fraction`` is its data share of the
    ROI. Schema 1.0 records: share of the grid. None when not counted."""
    slc_off: bool = False
    """Whether the scene is Landsat 7 SLC-off imagery (its gaps restored before segmentation)."""
    source_ids: tuple[str, ...] = ()
    """Landsat product ids combined into this daily composite, when known (empty when not:
    never a file name or composite id in their place)."""
    restored_fraction: float | None = None
    """Share of the ROI whose map pixels come from this scene's restored SLC-off gap pixels (0
    for a scene without gaps; None in records written before it was counted)."""
    files: tuple[str, ...] = ()
    """For a ``local:DIR`` scene: the file(s) it was made from (scene files; of a Level-1
    product its MTL or .tar), relative to ``Provenance.source_folder`` (POSIX separators).
    Empty for other sources and in records written before it was recorded."""
    reprojected: bool | None = None
    """For a ``local:DIR`` scene: whether its files were resampled onto the ROI grid (False:
    already on it). None for other sources and in older records."""


@dataclass(frozen=True)
class ModelRecord:
    """A model used in production, identified by the hash of its weights file."""

    name: str
    weights_sha256: str
    weights_file: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    """The configuration that rebuilds the model: the segmenter's variant and architecture;
    DiffGF's ``vae``, ``unet`` and ``scheduler`` configurations, with the JSON file beside the
    weights they come from (``config_file``, ``config_sha256``; ``config_files`` of a
    ``save_pretrained`` folder, covered by its ``weights_sha256``). Empty in DiffGF records
    written before it was recorded."""


@dataclass(frozen=True)
class Provenance:
    """How one shelf-year was produced."""

    shelf: str
    year: int
    sensors: tuple[str, ...]
    restoration: str | None
    source: str
    scenes: tuple[SceneRecord, ...]
    segmentation: ModelRecord
    restoration_model: ModelRecord | None = None
    """The DiffGF weights an SLC-off map was restored with (None: FillNodata or no SLC-off)."""
    software: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    """The run parameters that enter the inputs digest (``tta``, ``extent``, ``grid``, …) and
    facts of the merge: ``roi_pixels`` (ROI pixels on the grid, the base of the fractions),
    ``extent_pixels`` (effective-extent pixels inside the ROI: the type 1 map's valid pixels),
    ``extent_fraction`` (``extent_pixels / roi_pixels``), ``uncovered_fraction`` (share of the
    ROI no scene imaged: 0 in type 2, not an observation), ``cloudy_fill_fraction`` (share of
    the ROI filled from cloudy pixels, off the shelf region only), ``restored_fraction`` (share
    of the ROI from restored SLC-off gap pixels), ``restored_extent_fraction`` (share of
    ``extent_pixels`` from restored gap pixels), ``extent_outside_roi_fraction`` (share of the
    extent polygon's area outside the ROI, NoData in type 1; in a produced year at most
    ``producer.extent.MAX_OUTSIDE_ROI_SHARE``), ``candidates``, ``single_scene``,
    ``full_coverage_scenes``, device and compilation."""
    products: dict[str, str] = field(default_factory=dict)
    """Asset role -> file name in the shelf-year folder (damage_map, damage, probability, …)."""
    inputs_digest: str = ""
    """Digest of scene ids, weights hashes and software version; unchanged inputs skip work."""
    schema_version: str = SCHEMA_VERSION
    comparison: dict[str, Any] | None = None
    """When several scenes covered the whole ROI and their predictions were compared: which
    (``compared``), their agreement (``pairs``, ``mean_agreement``), which was ``chosen`` and
    why (``decided_by``, ``reason``); see ``producer.compare``. None when nothing was compared
    (and in records written before comparisons existed)."""
    source_folder: str | None = None
    """For the ``local:DIR`` source: the name of the folder that each scene's ``files`` are
    relative to (not its path: records are published). None for other sources and in records
    written before it was recorded."""
    restoration_run: dict[str, Any] | None = None
    """How the SLC-off scenes were restored, when any was: ``method``, its settings (DiffGF:
    ``seed``, ``ddim_steps``, ``ddim_eta``, ``tile_px``, ``overlap_px``; FillNodata:
    ``max_search_distance_px``, ``smoothing_iterations``), the ``device`` it ran on, and per
    restored scene id under ``scenes`` its ``gap_pixels``, ``gap_fraction`` (of the scene's
    data and gap pixels) and, for DiffGF, the ``tiles`` diffused. None when nothing was
    restored, and in records written before it was recorded (read as they are)."""

    @property
    def demo(self) -> bool:
        """Products made from the offline demo source must never be published as real data."""
        return is_demo_source(self.source)

    @property
    def fraction_base(self) -> str:
        """"roi" when the record's pixel fractions are all shares of the ROI (``roi_pixels``
        recorded), "grid" for older records whose ``cloud_fraction`` and ``extent_fraction``
        were shares of the whole grid (their other fractions were already of the ROI)."""
        return "roi" if "roi_pixels" in self.parameters else "grid"

    @property
    def main_scene(self) -> SceneRecord:
        """The scene the map is based on."""
        return next((s for s in self.scenes if s.role == "main"), self.scenes[0])

    def product_name(self) -> ProductName:
        """The type-1 product name of this shelf-year."""
        return build_name(self.sensors, self.shelf, self.year, self.restoration, TYPE1)

    def to_json(self) -> str:
        """Stable JSON text (sorted keys) for the record file."""
        data = asdict(self)
        data["demo"] = self.demo
        return json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Provenance:
        """Parse a record written by ``to_json``; ValueError when it says ``"demo": true``
        but its ``source`` is not the demo source (see ``_check_demo_field``)."""
        data = json.loads(text)
        _check_demo_field(data)
        data.pop("demo", None)
        scenes = tuple(
            SceneRecord(**{**s, "acquired": dt.date.fromisoformat(s["acquired"]),
                           "source_ids": tuple(s.get("source_ids", ())),
                           "files": tuple(s.get("files", ()))})
            for s in data.pop("scenes")
        )
        seg = ModelRecord(**data.pop("segmentation"))
        rest = data.pop("restoration_model")
        return cls(scenes=scenes, segmentation=seg,
                   restoration_model=ModelRecord(**rest) if rest else None,
                   sensors=tuple(data.pop("sensors")), **data)


def _check_demo_field(data: dict[str, Any]) -> None:
    """Refuse a record saying ``"demo": true`` whose ``source`` is not the demo source: the
    publisher counts such a record as demo, so the catalog, which reads ``source``, must not
    quietly describe its maps as real. (The other way round, a demo ``source`` decides for
    everyone, whatever a stale ``demo`` field says.)"""
    source = data.get("source")
    if data.get("demo") is True and not is_demo_source(source if isinstance(source, str)
                                                       else None):
        raise ValueError(f"the record's 'demo' field (true) contradicts its 'source' "
                         f"({source!r}); only the demo source's records say true")


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


#: Inside ``remembered_hashes``: (path, inode, size, mtime_ns) -> sha256 of the files hashed.
_HASHED: dict[tuple[str, int, int, int], str] | None = None


@contextlib.contextmanager
def remembered_hashes() -> Iterator[None]:
    """Within the block, a file hashed twice while its inode, size and mtime stay the same is
    read once: the publisher's snapshot of a release and the validator's checksum rules then
    share one read of each file (a dataset is hundreds of gigabytes). Nothing outlives the
    block, so a later run reads the files again."""
    global _HASHED
    outer, _HASHED = _HASHED, ({} if _HASHED is None else _HASHED)
    try:
        yield
    finally:
        _HASHED = outer


def file_sha256(path: Path) -> str:
    """Hex SHA-256 identifying a weights file, or a folder of files (relative names and bytes,
    in name order); the hash that provenance, checkpoints and catalog items record (read once
    per unchanged file within ``remembered_hashes``)."""
    path = Path(path)
    if _HASHED is not None and path.is_file():
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in _HASHED:
            _HASHED[key] = _sha256_of(path)
        return _HASHED[key]
    return _sha256_of(path)


def _sha256_of(path: Path) -> str:
    """``file_sha256`` read from the disk."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode())
        with f.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def provenance_path(release_dir: Path, name: ProductName) -> Path:
    """Where a shelf-year's provenance record lives."""
    return Path(release_dir) / name.relative_path().parent / name.auxiliary("provenance")


def read_provenance(path: Path) -> Provenance:
    """Read a provenance record file."""
    return Provenance.from_json(Path(path).read_text())
