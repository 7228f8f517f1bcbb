"""Validation rule sets for the catalog side of a release (plug into ``icedamage validate``).

Three rule sets, each reporting every problem it finds as ``validation.report.Problem``:

``stac-schema``
    Every STAC object under ``stac/`` validates: core 1.1.0 from pystac's bundled schemas,
    official extensions from a local schema folder (``--schemas DIR`` or the environment variable
    ``ICEDAMAGE_STAC_SCHEMAS``; the folder holds ``schema-map.json`` mapping URLs to files), else
    fetched once and cached (``catalog.schema_fetch``), our product extension from the
    ``schemas`` package.
``catalog-consistency``
    Products ⇔ items, asset hrefs are relative paths inside the release, assets exist with the
    recorded size and checksum, grid / nodata / data type fields (of assets and of the item)
    agree with the files, the item's geometry and bbox are the products' footprint, its
    timestamps agree with its acquisition dates, statistics agree with the type-1 raster, null
    facts are listed as unknown, the fields the product name decides (shelf, year, sensors,
    restoration, platform, ...) say what the name says, the fields the provenance record
    decides (models, scenes, main scene) say what the record says, the product classes are the
    spec's, the demo flag says what the provenance record of the release says, the products'
    source tag names the source that record names, the item index (items.parquet and
    items.ndjson) holds exactly the catalog's items as they are.
``release-metadata``
    metadata.ods rows ⇔ items (its Summary sheet and each shelf's sheet), one row per
    shelf-year, each row agrees with its product's name and (when present) provenance record,
    acquisition dates agree between metadata.ods, provenance and STAC, provenance records are
    plausible (scenes of the summer and of the sensors the name says, products on the grid the
    record names), each shelf has its ROI GeoPackage (valid polygon layer of that shelf,
    EPSG:3031), its products lie in the ROI and type 2 is on the grid the producer maps for
    it; release.yaml reads as the publisher reads it.

A release with products but without a catalog (no ``stac/catalog.json``, nothing a catalog run
writes) is not cataloged yet: the rule sets then report one warning saying so (and check
release.yaml); one with files a catalog run writes but no root catalog has a broken catalog,
an error, and its remains are checked. One bad file (a truncated raster, a garbled JSON
record, an item pystac cannot read, a link that loops) is reported as a problem of that file;
it never aborts a rule set nor hides the problems of other files.

One module per rule set (``stac_schema``, ``consistency``, ``release_metadata``) and what they
share (``common``); this package registers them with the validator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catalog.rules.consistency import CatalogConsistencyRules
from catalog.rules.release_metadata import ReleaseMetadataRules
from catalog.rules.stac_schema import OfflineSchemas, StacSchemaRules

__all__ = ["CatalogConsistencyRules", "OfflineSchemas", "ReleaseMetadataRules", "StacSchemaRules",
           "catalog_rule_sets", "register_catalog_rule_sets", "RULE_SET_FACTORIES",
           "stac_schema_rule_set", "catalog_consistency_rule_set", "release_metadata_rule_set"]


def catalog_rule_sets(schemas_folder: Path | None = None) -> list[Any]:
    """The catalog's rule sets, for the validator's registry."""
    return [StacSchemaRules(schemas_folder), CatalogConsistencyRules(), ReleaseMetadataRules()]


# Factories for the validator's registry (``validation.engine.register_rule_set`` and the
# ``icedamage.rule_sets`` entry points): each takes the run's options, which the catalog rules do
# not need; the schema folder comes from ICEDAMAGE_STAC_SCHEMAS (``validate --schemas`` sets it).


def stac_schema_rule_set(options: object = None) -> StacSchemaRules:
    """Factory of the ``stac-schema`` rule set."""
    return StacSchemaRules()


def catalog_consistency_rule_set(options: object = None) -> CatalogConsistencyRules:
    """Factory of the ``catalog-consistency`` rule set."""
    return CatalogConsistencyRules()


def release_metadata_rule_set(options: object = None) -> ReleaseMetadataRules:
    """Factory of the ``release-metadata`` rule set."""
    return ReleaseMetadataRules()


RULE_SET_FACTORIES = (stac_schema_rule_set, catalog_consistency_rule_set,
                      release_metadata_rule_set)


def register_catalog_rule_sets() -> None:
    """Add the catalog's rule sets to every default validation run."""
    from validation.engine import register_rule_set

    for factory in RULE_SET_FACTORIES:
        register_rule_set(factory)
