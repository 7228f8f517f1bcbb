"""Pure pystac builders: the release's catalog, its collection and one item per shelf-year.

Nothing here reads or writes files: the I/O layer (``catalog.build``) collects the facts of each
shelf-year (raster grids and checksums, provenance, metadata.ods row, statistics) into
``ItemInputs``; these functions turn facts into STAC 1.1 objects. Facts that the release does not
record (no provenance record, no metadata.ods row) are set to null and listed in
``icedamage:unknown`` rather than guessed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.scientific import ScientificExtension
from pystac.extensions.version import VersionExtension
from shapely.geometry import shape

import schemas
from catalog.geometry import bbox_of, geojson_and_bbox, grid_footprint, lon_span
from catalog.ods import OdsRow
from catalog.release import RasterFacts, tagged_source
from catalog.stats import DamageStats
from producer.provenance import Provenance
from producer.shelves import get_shelf
from producer.spec import (
    AUXILIARY_RASTERS,
    CONSTELLATION,
    ENCODING,
    PRODUCT_TYPES,
    RELEASED_RESTORATION,
    RESTORATION_METHODS,
    SENSORS,
    SOURCE_SCENE_NOT_IMAGED,
    SOURCE_SCENE_RASTER,
    TYPE1,
    TYPE2,
    ProductName,
    ProductType,
    is_demo_source,
    summer_window,
)

CATALOG_ID = "icedamage"
COLLECTION_ID = "antarctic-ice-shelf-surface-damage"
#: The collection's title, before the summers the release holds (``collection_title``).
COLLECTION_TITLE_STEM = "Surface Damage Dataset for Antarctic Ice Shelves"
DEFAULT_LICENSE = "CC-BY-4.0"
COG_MEDIA_TYPE = pystac.MediaType.COG
GPKG_MEDIA_TYPE = "application/geopackage+sqlite3"
ODS_MEDIA_TYPE = "application/vnd.oasis.opendocument.spreadsheet"
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
# The citations name published works: "1999-2024" is part of their titles, not the summers of
# the release being cataloged, so it is quoted as published and never derived.
DATASET_CITATION = ("Tang, L., Bamber, J., Li, T., and Qiao, G.: Surface Damage Dataset for "
                    "Antarctic Ice Shelves 1999-2024, Zenodo [data set], 2026.")
PAPER_CITATION = ("Tang, L., Bamber, J., Li, T., and Qiao, G.: A multi-decadal dataset of surface "
                  "damage on Antarctic ice shelves (1999-2024), Earth System Science Data, 2026.")
P = schemas.PREFIX
#: Non-raster files of a shelf-year that become item assets when present: asset key -> (title,
#: media type, STAC roles); the items' assets and the collection's item_assets both read it.
FILE_ASSETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "thumbnail": ("Quicklook of the type 1 map", pystac.MediaType.PNG, ("thumbnail",)),
    "provenance": ("Provenance record (scenes, models, software)", pystac.MediaType.JSON,
                   ("metadata",)),
}


@dataclass(frozen=True)
class FileRef:
    """A non-raster file that becomes an asset (thumbnail, provenance record)."""

    path: Path
    size: int
    checksum: str


@dataclass(frozen=True)
class ItemInputs:
    """Everything known about one shelf-year, collected by the I/O layer."""

    name: ProductName
    rasters: dict[str, RasterFacts]
    """Asset key (damage_map, damage, probability, source_scene) -> facts of the file."""
    stats: DamageStats
    files: dict[str, FileRef] = field(default_factory=dict)
    """Asset key (thumbnail, provenance) -> file."""
    provenance: Provenance | None = None
    ods_row: OdsRow | None = None


@dataclass(frozen=True)
class CatalogSettings:
    """Release-wide settings of the catalog."""

    license: str = DEFAULT_LICENSE
    software_version: str = "unknown"
    dataset_version: str | None = None
    providers: tuple[pystac.Provider, ...] = ()


def item_id(name: ProductName) -> str:
    """``<shelf-slug>-<YYYY>`` (e.g. ``larsen-b-2005``)."""
    return f"{get_shelf(name.shelf).slug}-{name.year:04d}"


def _at(day: dt.date, end: bool = False) -> dt.datetime:
    time = dt.time(23, 59, 59) if end else dt.time(0, 0, 0)
    return dt.datetime.combine(day, time, tzinfo=dt.UTC)


# ---------------------------------------------------------------------------------------------
# Facts of a shelf-year, with the unknown ones listed
# ---------------------------------------------------------------------------------------------


def _scenes(inputs: ItemInputs) -> list[dict[str, Any]] | None:
    """Scene records from provenance, else from the metadata.ods row, else None."""
    if inputs.provenance is not None:
        return [{"id": s.scene_id, "sensor": s.sensor, "acquired": s.acquired.isoformat(),
                 "role": s.role, "slc_off": s.slc_off, "valid_fraction": s.valid_fraction,
                 "map_fraction": s.map_fraction, "restored_fraction": s.restored_fraction}
                for s in sorted(inputs.provenance.scenes, key=lambda s: s.acquired)]
    row = inputs.ods_row
    if row is None or not row.acquisition_dates or len(row.scene_ids) != len(row.acquisition_dates):
        return None
    sensors = row.scene_sensors if len(row.scene_sensors) == len(row.scene_ids) else ()
    return [{"id": scene_id, "sensor": sensors[i] if sensors else None,
             "acquired": day.isoformat(),
             "role": ("main" if scene_id == row.main_scene else "fill") if row.main_scene
             else None}
            for i, (scene_id, day) in enumerate(zip(row.scene_ids, row.acquisition_dates,
                                                    strict=True))]


def _dates_and_main(inputs: ItemInputs) -> tuple[list[dt.date], str | None, dt.date | None]:
    """Acquisition dates, main scene id and main scene date (provenance first, then ods)."""
    if inputs.provenance is not None:
        main = inputs.provenance.main_scene
        return sorted(s.acquired for s in inputs.provenance.scenes), main.scene_id, main.acquired
    row = inputs.ods_row
    if row is None:
        return [], None, None
    return sorted(row.acquisition_dates), row.main_scene, row.main_scene_date


def product_properties(inputs: ItemInputs) -> dict[str, Any]:
    """The ``icedamage:`` fields of an item; unknown facts are None and listed.

    A restored map records its method's restoration factor (``lambda_restoration``) and the
    upper factor it took (``lambda_upper_restored``); when no factor is known for the method
    (FillNodata unless the factors file gives one), both and the upper bounds are null and
    listed as unknown rather than given the bounds of an unrestored map.
    """
    name, prov, stats = inputs.name, inputs.provenance, inputs.stats
    # without a record, the products' own tag still says where they came from (demo or not)
    source = prov.source if prov else tagged_source(
        facts for key, facts in inputs.rasters.items() if key in _product_types())
    dates, main_id, _ = _dates_and_main(inputs)
    restored = name.restoration is not None
    props: dict[str, Any] = {
        f"{P}shelf": name.shelf,
        f"{P}year": name.year,
        f"{P}sensors": list(name.sensors),
        f"{P}restoration": name.restoration,
        f"{P}slc_off": any(SENSORS[t].slc_off_in(name.year) for t in name.sensors),
        f"{P}scenes": _scenes(inputs),
        f"{P}acquisition_dates": [d.isoformat() for d in dates] or None,
        f"{P}main_scene": main_id,
        f"{P}source": source,
        f"{P}demo": is_demo_source(source) if source is not None else None,
        f"{P}model": prov.segmentation.name if prov else None,
        f"{P}model_weights_sha256": prov.segmentation.weights_sha256 if prov else None,
    }
    if restored:
        model = prov.restoration_model if prov else None
        props[f"{P}restoration_model"] = model.name if model else None
        props[f"{P}restoration_weights_sha256"] = model.weights_sha256 if model else None
        props[f"{P}restored_fraction"] = (prov.parameters.get("restored_extent_fraction")
                                          if prov else None)
    props.update({
        f"{P}damage_area_km2": stats.damage_area_km2,
        f"{P}valid_area_km2": stats.valid_area_km2,
        f"{P}damage_fraction": stats.damage_fraction,
        f"{P}lambda_lower": stats.lambda_lower,
        f"{P}lambda_upper": stats.lambda_upper,
        f"{P}lambda_restoration": stats.lambda_restoration,
        f"{P}lambda_upper_restored": stats.lambda_upper_restored,
        f"{P}damage_area_km2_low": stats.damage_area_km2_low,
        f"{P}damage_area_km2_high": stats.damage_area_km2_high,
        f"{P}damage_fraction_low": stats.damage_fraction_low,
        f"{P}damage_fraction_high": stats.damage_fraction_high,
    })
    if not restored:  # the restoration factors do not apply (their fields are left out)
        props.pop(f"{P}lambda_restoration")
        props.pop(f"{P}lambda_upper_restored")
    not_applicable = not_applicable_fields(props)
    props[f"{P}unknown"] = sorted(k for k, v in props.items()
                                  if v is None and k not in not_applicable)
    return props


def not_applicable_fields(props: dict[str, Any]) -> set[str]:
    """Product fields whose null means "does not apply", never "unknown" (the one rule the
    builder, the catalog validator and search's null handling share):

    * ``restoration``: always known (the file name says it); null means not restored;
    * the fractions of a map without a valid pixel;
    * the restoration model of a classical fill (FillNodata), which has none.
    """
    fields = {f"{P}restoration"}
    if props.get(f"{P}valid_area_km2") == 0:
        fields |= {f"{P}damage_fraction", f"{P}damage_fraction_low",
                   f"{P}damage_fraction_high"}
    restoration = props.get(f"{P}restoration")
    if restoration is not None and is_classical_fill(restoration):
        fields |= {f"{P}restoration_model", f"{P}restoration_weights_sha256"}
    return fields


def _allows_null(definition: dict[str, Any]) -> bool:
    kinds = definition.get("type")
    return (kinds == "null" or (isinstance(kinds, list) and "null" in kinds)
            or any(_allows_null(branch) for key in ("oneOf", "anyOf")
                   for branch in definition.get(key, ())))


@cache
def nullable_fields() -> frozenset[str]:
    """The item fields of our extension whose value may be null (as its schema defines them).

    None of them is required: stac-geoparquet readers (rustac, ``stac_table_to_items``) treat a
    null and a missing key alike and may drop the null, so a missing one means exactly what a
    null one does. Readers of item properties take them with ``.get``, never ``[...]``.
    """
    definitions = schemas.load_schema()["definitions"]["fields"]["properties"]
    return frozenset(name for name, definition in definitions.items() if _allows_null(definition))


def is_classical_fill(method: str) -> bool:
    """Whether a restoration method is a classical fill (FillNodata) rather than the released
    learned restoration (DiffGF): it has no model (and the paper gives no restoration factor
    for it; a factors file may)."""
    return method != RELEASED_RESTORATION


def _times(inputs: ItemInputs) -> tuple[dt.datetime | None, dt.datetime, dt.datetime]:
    """(datetime, start, end): main scene date; first/last acquisition, else the summer."""
    dates, _, main_date = _dates_and_main(inputs)
    if dates:
        start, end = _at(dates[0]), _at(dates[-1], end=True)
    else:
        first, last = summer_window(inputs.name.year)
        start, end = _at(first), _at(last, end=True)
    return (_at(main_date) if main_date else None), start, end


# ---------------------------------------------------------------------------------------------
# Assets
# ---------------------------------------------------------------------------------------------


def classes_of(product_type: ProductType) -> list[Classification]:
    """Classification v2 classes of a product type, with the spec's colour hints."""
    return [Classification.create(value=c.value, name=c.name, description=c.description,
                                  color_hint=c.color_hint, nodata=bool(c.nodata))
            for c in product_type.classes]


def scene_classes(scene_ids: Sequence[str]) -> list[Classification]:
    """Classes of a source-scene index, one per value the producer writes, with the meanings
    the spec gives them (``SOURCE_SCENE_RASTER``):

    * value i: the i-th scene id of the file's ``scene_ids`` tag (its title; the name is the
      id with characters classification names forbid replaced by ``_``);
    * ``SOURCE_SCENE_NOT_IMAGED``: inside the ROI, but no scene of the summer has data there
      (the full-ROI map holds 0 there, which is no observation);
    * the raster's nodata: outside the ROI polygon.

    The two values without a scene are classes with ``nodata`` true: no scene's data is there.
    Values come from the spec, never restated; a tag naming more scenes than there are values
    below the reserved ones is refused (``ValueError``): no such file can be written.
    """
    if len(scene_ids) > SOURCE_SCENE_NOT_IMAGED:
        raise ValueError(f"the source-scene index names {len(scene_ids)} scenes; values from "
                         f"{SOURCE_SCENE_NOT_IMAGED} on are reserved, so at most "
                         f"{SOURCE_SCENE_NOT_IMAGED} can be indexed")
    # every class has the same fields: a columnar index (items.parquet) fills missing ones with
    # nulls, which the classification schema refuses
    classes = [Classification.create(value=i, name=re.sub(r"[^0-9A-Za-z_-]", "_", scene_id),
                                     title=scene_id, description="pixels from this scene",
                                     nodata=False)
               for i, scene_id in enumerate(scene_ids)]
    classes.append(Classification.create(
        value=SOURCE_SCENE_NOT_IMAGED, name="not_imaged", title="not imaged",
        description=("inside the ROI, but no scene of the summer has data here (the full-ROI "
                     "map holds 0 there, which is no observation)"),
        nodata=True))
    classes.append(Classification.create(
        value=SOURCE_SCENE_RASTER.nodata, name="outside_roi", title="outside the ROI",
        description="outside the ROI polygon (the raster's nodata)", nodata=True))
    return classes


def _file_fields(asset: pystac.Asset, size: int, checksum: str) -> None:
    FileExtension.ext(asset, add_if_missing=False).apply(size=size, checksum=checksum)


def _proj_fields(target: pystac.Item | pystac.Asset, facts: RasterFacts) -> None:
    ProjectionExtension.ext(target, add_if_missing=False).apply(
        code=f"EPSG:{facts.epsg}" if facts.epsg else None,
        shape=[facts.grid.height, facts.grid.width],
        transform=list(facts.grid.transform)[:6],
    )


def raster_asset(facts: RasterFacts, title: str, roles: list[str],
                 product_type: ProductType | None) -> pystac.Asset:
    """A GeoTIFF asset (a COG's media type when the file is one) with data type, nodata (when
    the file has one), grid, classes, size, checksum."""
    extra: dict[str, Any] = {"data_type": facts.data_type}
    if facts.nodata is not None:
        extra["nodata"] = int(facts.nodata) if float(facts.nodata).is_integer() else facts.nodata
    if product_type is not None:
        extra["gsd"] = ENCODING.resolution
    media_type = pystac.MediaType.GEOTIFF if facts.cloud_optimized is False else COG_MEDIA_TYPE
    asset = pystac.Asset(href=str(facts.path), title=title, media_type=media_type,
                         roles=roles, extra_fields=extra)
    return asset


def _decorate_asset(asset: pystac.Asset, facts: RasterFacts,
                    product_type: ProductType | None) -> None:
    """Extension fields that need the asset attached to its item."""
    _file_fields(asset, facts.size, facts.checksum)
    _proj_fields(asset, facts)
    if product_type is not None:
        ClassificationExtension.ext(asset, add_if_missing=False).apply(
            classes=classes_of(product_type))
    elif facts.scene_ids is not None:
        ClassificationExtension.ext(asset, add_if_missing=False).apply(
            classes=scene_classes(facts.scene_ids))


def _file_asset(ref: FileRef, title: str, media_type: str, roles: list[str]) -> pystac.Asset:
    return pystac.Asset(href=str(ref.path), title=title, media_type=media_type, roles=roles)


def _product_types() -> dict[str, ProductType]:
    return {t.key: t for t in PRODUCT_TYPES}


# ---------------------------------------------------------------------------------------------
# Item
# ---------------------------------------------------------------------------------------------


def _footprint_facts(inputs: ItemInputs) -> RasterFacts:
    """The raster whose extent is the item's footprint: type 2 (full ROI), else type 1."""
    for key in (TYPE2.key, TYPE1.key):
        if key in inputs.rasters:
            return inputs.rasters[key]
    raise ValueError(f"{inputs.name.stem}: neither product file is present")


def processing_lineage(inputs: ItemInputs) -> str:
    """A sentence on how the map was made."""
    sensors = ", ".join(f"{SENSORS[t].platform} {SENSORS[t].instrument.upper()}"
                        for t in inputs.name.sensors)
    text = (f"Surface damage segmented with a SegFormer model from Landsat TOA RGB daily "
            f"composites ({sensors}) of the austral summer {inputs.name.year}/"
            f"{inputs.name.year + 1}; predictions of complementary scenes merged into a full-ROI "
            f"map (type 2) and refined to the effective ice-shelf extent (type 1).")
    if inputs.name.restoration:
        text += (f" Landsat 7 SLC-off gaps restored with {inputs.name.restoration}: "
                 f"{RESTORATION_METHODS[inputs.name.restoration]}.")
    return text


def build_item(inputs: ItemInputs, settings: CatalogSettings) -> pystac.Item:
    """The STAC item of one shelf-year (asset hrefs stay absolute until the catalog is saved)."""
    footprint = _footprint_facts(inputs)
    geometry, bbox = geojson_and_bbox(grid_footprint(footprint.grid.bounds))
    when, start, end = _times(inputs)
    name = inputs.name
    props: dict[str, Any] = {
        "title": f"Surface damage of {name.shelf} ice shelf, summer {name.year}/{name.year + 1}",
        "start_datetime": pystac.utils.datetime_to_str(start),
        "end_datetime": pystac.utils.datetime_to_str(end),
        "platform": SENSORS[name.sensors[0]].platform if len(name.sensors) == 1 else None,
        "constellation": CONSTELLATION,
        "instruments": sorted({SENSORS[t].instrument for t in name.sensors}),
        "gsd": ENCODING.resolution,
        "processing:level": "L3",
        "processing:lineage": processing_lineage(inputs),
    }
    if inputs.provenance is not None and inputs.provenance.software:
        # the software that made the map, as its record says; the authors' maps name none
        props["processing:software"] = dict(sorted(inputs.provenance.software.items()))
    if props["platform"] is None:
        # STAC's platform is a single string: a map merged from several satellites leaves it
        # out; constellation, instruments and icedamage:sensors still say which were used.
        del props["platform"]
    props.update(product_properties(inputs))
    item = pystac.Item(id=item_id(name), geometry=geometry, bbox=bbox, datetime=when,
                       properties=props, stac_extensions=[schemas.SCHEMA_URI, PROCESSING_SCHEMA])
    for ext in (ProjectionExtension, FileExtension, ClassificationExtension):
        ext.add_to(item)
    _proj_fields(item, footprint)
    if settings.dataset_version:
        VersionExtension.ext(item, add_if_missing=True).apply(version=settings.dataset_version)
    _add_assets(item, inputs)
    return item


def _add_assets(item: pystac.Item, inputs: ItemInputs) -> None:
    types = _product_types()
    for key, facts in inputs.rasters.items():
        if key in types:
            kind = types[key]
            asset = raster_asset(facts, f"Type {kind.number}: {kind.title}", ["data"], kind)
        else:
            aux = AUXILIARY_RASTERS[key]
            kind = None
            asset = raster_asset(facts, aux.title, list(aux.roles), None)
            asset.description = aux.description
            if aux.unit is not None:
                asset.extra_fields["unit"] = aux.unit  # STAC 1.1 common metadata
        item.add_asset(key, asset)
        _decorate_asset(asset, facts, kind)
    for key, ref in inputs.files.items():
        title, media, roles = FILE_ASSETS[key]
        asset = _file_asset(ref, title, media, list(roles))
        item.add_asset(key, asset)
        _file_fields(asset, ref.size, ref.checksum)


# ---------------------------------------------------------------------------------------------
# Collection and catalog
# ---------------------------------------------------------------------------------------------


def default_providers() -> list[pystac.Provider]:
    """Who made the data (the authors) and where the imagery comes from."""
    return [
        pystac.Provider("Tang, Bamber, Li, Qiao (dataset authors)",
                        roles=[pystac.ProviderRole.PRODUCER, pystac.ProviderRole.PROCESSOR,
                               pystac.ProviderRole.LICENSOR],
                        url="https://github.com/tly-code/surface-damage-seg",
                        extra_fields={"processing:level": "L3"}),
        pystac.Provider("USGS / NASA Landsat (imagery via Google Earth Engine)",
                        roles=[pystac.ProviderRole.PRODUCER],
                        url="https://www.usgs.gov/landsat-missions"),
    ]


def _union_bbox(bboxes: list[list[float]]) -> list[float]:
    """The bbox covering every (possibly wrapping) bbox: the shortest arc of longitudes."""
    west, east = lon_span([(b[0], b[2]) for b in bboxes])
    return [west, min(b[1] for b in bboxes), east, max(b[3] for b in bboxes)]


def _shelf_bbox(items: list[pystac.Item]) -> list[float]:
    """The bbox of a shelf's items (union of their geometries, wrapping when they do)."""
    from shapely.ops import unary_union

    union = unary_union([shape(i.geometry) for i in items])
    return bbox_of(union)


def item_asset_definitions(auxiliary: Sequence[str] = (), files: Sequence[str] = (),
                           plain: Sequence[str] = ()) -> dict[str, pystac.ItemAssetDefinition]:
    """What every item's product assets look like (collection ``item_assets``), and the
    auxiliary rasters named in ``auxiliary`` and the files (``FILE_ASSETS`` keys: thumbnail,
    provenance) named in ``files``: those some item has, so that every asset an item carries
    is described and none that no item carries. Raster keys in ``plain`` are GeoTIFFs that
    are not all cloud-optimized (the authors' maps): their media type says GeoTIFF only."""
    def media(key: str) -> str:
        return pystac.MediaType.GEOTIFF if key in plain else COG_MEDIA_TYPE

    defs = {}
    for kind in PRODUCT_TYPES:
        extra: dict[str, Any] = {
            "data_type": ENCODING.dtype, "gsd": ENCODING.resolution,
            "classification:classes": [c.to_dict() for c in classes_of(kind)],
            "proj:code": ENCODING.crs,
        }
        if kind.nodata is not None:
            extra["nodata"] = kind.nodata
        defs[kind.key] = pystac.ItemAssetDefinition.create(
            title=f"Type {kind.number}: {kind.title}", description=None,
            media_type=media(kind.key), roles=["data"], extra_fields=extra)
    for key in auxiliary:
        aux = AUXILIARY_RASTERS[key]
        extra = {"data_type": ENCODING.dtype, "nodata": aux.nodata, "proj:code": ENCODING.crs}
        defs[key] = pystac.ItemAssetDefinition.create(
            title=aux.title, description=aux.description, media_type=media(key),
            roles=list(aux.roles),
            extra_fields=extra | ({"unit": aux.unit} if aux.unit is not None else {}))
    for key in files:
        title, media, roles = FILE_ASSETS[key]
        defs[key] = pystac.ItemAssetDefinition.create(
            title=title, description=None, media_type=media, roles=list(roles))
    return defs


def build_collection(items: list[pystac.Item], settings: CatalogSettings,
                     release_files: dict[str, FileRef]) -> pystac.Collection:
    """The dataset's collection: extents, license, providers, summaries, item_assets, links.

    ``release_files`` maps a key (``metadata`` or ``roi-<shelf-slug>``) to the metadata.ods and
    ROI GeoPackages at the release root; each becomes a collection asset and a link.
    """
    if not items:
        raise ValueError("no shelf-year products found: nothing to catalog")
    by_shelf: dict[str, list[pystac.Item]] = {}
    for item in items:
        by_shelf.setdefault(item.properties[f"{P}shelf"], []).append(item)
    bboxes = [_shelf_bbox(group) for _, group in sorted(by_shelf.items())]
    starts = [pystac.utils.str_to_datetime(i.properties["start_datetime"]) for i in items]
    ends = [pystac.utils.str_to_datetime(i.properties["end_datetime"]) for i in items]
    years = [i.properties[f"{P}year"] for i in items]
    extent = pystac.Extent(
        # STAC: one bbox, or the union followed by at least two sub-bboxes (one per shelf)
        pystac.SpatialExtent([_union_bbox(bboxes), *bboxes] if len(bboxes) > 1
                             else bboxes),
        pystac.TemporalExtent([[min(starts), max(ends)]]),
    )
    platforms = sorted({SENSORS[t].platform for i in items for t in i.properties[f"{P}sensors"]})
    # a field that may be null may also be missing (read back from stac-geoparquet): .get
    restorations = sorted({i.properties[f"{P}restoration"] for i in items
                           if i.properties.get(f"{P}restoration")})
    demo = sorted({i.properties[f"{P}demo"] for i in items
                   if i.properties.get(f"{P}demo") is not None})
    summaries = pystac.Summaries({
        f"{P}shelf": sorted(by_shelf),
        f"{P}year": {"minimum": min(years), "maximum": max(years)},
        f"{P}sensors": sorted({t for i in items for t in i.properties[f"{P}sensors"]}),
        "platform": platforms,
        "constellation": [CONSTELLATION],
        "instruments": sorted({SENSORS[t].instrument for i in items
                               for t in i.properties[f"{P}sensors"]}),
        "gsd": [ENCODING.resolution],
        "proj:code": [ENCODING.crs],
    } | ({f"{P}restoration": restorations} if restorations else {})
      | ({f"{P}demo": demo} if demo else {}))
    collection = pystac.Collection(
        id=COLLECTION_ID, title=collection_title(min(years), max(years)),
        description=("30 m surface damage maps (crevasses, rifts, fractured zones) of Antarctic "
                     "ice shelves, one map per shelf and austral summer, segmented from Landsat "
                     f"7/8/9 imagery with SegFormer{restoration_text(items)}. Type 1 maps cover "
                     f"the effective ice-shelf extent ({encoding_text(TYPE1)}); type 2 maps the "
                     f"full region of interest ({encoding_text(TYPE2)}) and need manual checking "
                     "before use."),
        extent=extent, license=settings.license,
        keywords=["Antarctica", "ice shelf", "surface damage", "crevasses", "rifts", "Landsat",
                  "deep learning", "SegFormer",
                  *(["SLC-off", *restorations] if restorations else [])],
        providers=list(settings.providers) or default_providers(),
        summaries=summaries,
        stac_extensions=[schemas.SCHEMA_URI, PROCESSING_SCHEMA],
    )
    collection.item_assets = item_asset_definitions(
        [key for key in AUXILIARY_RASTERS if any(key in item.assets for item in items)],
        [key for key in FILE_ASSETS if any(key in item.assets for item in items)],
        sorted({key for item in items for key, asset in item.assets.items()
                if asset.media_type == pystac.MediaType.GEOTIFF}))
    # item_assets carry classification:classes and proj:code, the summaries proj:code
    ClassificationExtension.add_to(collection)
    ProjectionExtension.add_to(collection)
    ScientificExtension.ext(collection, add_if_missing=True).apply(citation=DATASET_CITATION)
    collection.extra_fields["sci:publications"] = [{"citation": PAPER_CITATION}]
    if settings.dataset_version:
        VersionExtension.ext(collection, add_if_missing=True).apply(
            version=settings.dataset_version)
    FileExtension.add_to(collection)
    _release_file_assets(collection, release_files)
    return collection


def restoration_text(items: Sequence[pystac.Item]) -> str:
    """The collection description's clause on SLC-off restoration, naming the methods the
    items were really restored with ("" when none was restored): a release restored with a
    classical fill must not claim DiffGF, and one restored with both says how many maps each.
    """
    counts: dict[str, int] = {}
    for item in items:
        method = item.properties.get(f"{P}restoration")
        if method:
            counts[method] = counts.get(method, 0) + 1
    if not counts:
        return ""
    several = len(counts) > 1
    parts = []
    for method, count in sorted(counts.items()):
        notes = [f"{count} map{'s' if count != 1 else ''}"] if several else []
        if is_classical_fill(method):
            notes.append(f"a classical fill, not {RELEASED_RESTORATION}")
        parts.append(f"with {method}" + (f" ({'; '.join(notes)})" if notes else ""))
    return "; Landsat 7 SLC-off imagery restored " + " and ".join(parts)


def collection_title(first: int, last: int) -> str:
    """The collection's title with the summers the release holds: the published dataset's
    title ("... 1999-2024") for the release of the paper, and no claim of summers that a
    smaller or later release does not hold."""
    return f"{COLLECTION_TITLE_STEM} {first}" + (f"-{last}" if last != first else "")


def encoding_text(product_type: ProductType) -> str:
    """The pixel values of a product type as the spec encodes them: "0 background, 1 damage,
    255 nodata" for type 1."""
    return ", ".join(f"{c.value} {c.name}" for c in product_type.classes)


def _release_file_assets(collection: pystac.Collection, files: dict[str, FileRef]) -> None:
    """metadata.ods and the ROI GeoPackages as collection assets and links."""
    for key, ref in sorted(files.items()):
        is_ods = key == "metadata"
        media = ODS_MEDIA_TYPE if is_ods else GPKG_MEDIA_TYPE
        title = ("Acquisition dates and scenes of every shelf-year (metadata.ods)" if is_ods
                 else f"Region of interest: {ref.path.name}")
        asset = pystac.Asset(href=str(ref.path), title=title, media_type=media,
                             roles=["metadata"])
        collection.add_asset(key, asset)
        _file_fields(asset, ref.size, ref.checksum)
        collection.add_link(pystac.Link(rel="describedby" if is_ods else "related",
                                        target=str(ref.path), media_type=media, title=title))


def make_file_links_relative(root: pystac.Catalog) -> None:
    """Turn links to local files (metadata.ods, ROI GeoPackages) into paths relative to the
    object holding them, as asset hrefs are, so a copied or moved release keeps them working.

    pystac makes only hierarchical links relative; call this after ``normalize_hrefs``.
    """
    for obj in (root, *root.get_all_collections(), *root.get_items(recursive=True)):
        self_href = obj.get_self_href()
        for link in obj.links:
            if (self_href is None or link.rel == pystac.RelType.SELF or link.is_hierarchical()
                    or not link.has_target_href()):
                continue
            href = link.get_href(transform_href=False)
            if not href or "://" in href or not pystac.utils.is_absolute_href(href):
                continue
            link.target = pystac.utils.make_relative_href(href, self_href)


def build_catalog(collection: pystac.Collection, items: list[pystac.Item]) -> pystac.Catalog:
    """Root catalog -> collection -> items."""
    root = pystac.Catalog(id=CATALOG_ID, title="icedamage release catalog",
                          description=("STAC catalog of a release of the Antarctic ice-shelf "
                                       "surface damage dataset."))
    root.add_child(collection)
    for item in sorted(items, key=lambda i: i.id):
        collection.add_item(item)
    return root
