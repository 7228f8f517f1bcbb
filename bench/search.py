"""Search latency on a 10,000-item catalog index (goal: <= 50 ms per query).

Builds a synthetic index from one real cataloged item per fixture shelf-year, cloned over the
registered shelves (geometry from each shelf's ROI) and summers 1999-2024 until there are 10,000
items, writes items.parquet with the catalog's own writer, then times ``search`` (DuckDB over the
parquet, exact geometry with shapely, results as pystac Items) for typical queries.

    PYTHONPATH=. python bench/search.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog.build import catalog_release  # noqa: E402
from catalog.geometry import geojson_and_bbox  # noqa: E402
from catalog.search import search, write_index  # noqa: E402
from catalog.uncertainty import PAPER_FACTORS  # noqa: E402
from producer.shelves import SHELVES, get_shelf, roi_polygon  # noqa: E402
from producer.spec import ITEMS_NDJSON, SENSORS  # noqa: E402
from tests.release_factory import build_release  # noqa: E402

N_ITEMS = 10_000
REPEATS = 15


def synthetic_items(template: dict, count: int) -> list[dict]:
    """``count`` item dicts: shelves x years x variants, plausible sensors, random fractions."""
    rng = np.random.default_rng(0)
    shapes = {s: geojson_and_bbox(roi_polygon(s).envelope) for s in SHELVES}
    items, variant = [], 0
    while len(items) < count:
        for shelf in SHELVES:
            for year in range(1999, 2025):
                if len(items) >= count:
                    break
                sensors = [t for t, s in SENSORS.items() if s.covers(year)][:2]
                restored = "DiffGF" if any(SENSORS[t].slc_off_in(year) for t in sensors) \
                    else None
                geometry, bbox = shapes[shelf]
                props = dict(template["properties"])
                props.update({"icedamage:shelf": shelf, "icedamage:year": year,
                              "icedamage:sensors": sensors, "icedamage:restoration": restored,
                              "icedamage:damage_fraction": float(rng.uniform(0, 0.3))})
                items.append({**template, "id": f"{get_shelf(shelf).slug}-{year}-v{variant}",
                              "geometry": geometry, "bbox": bbox, "properties": props})
        variant += 1
    return items


QUERIES = {
    "shelf + year": {"shelves": ["Thwaites"], "year": 2019},
    "shelf + year range + restored": {"shelves": ["Pine Island"], "year_from": 2003,
                                      "year_to": 2012, "restored": True},
    "sensor LC09 + min fraction 0.29": {"sensors": ["LC09"], "min_fraction": 0.29},
    "bbox lon/lat (Larsen B area)": {"bbox": [-63.0, -66.5, -59.0, -64.5], "year": 2010},
    "bbox EPSG:3031 + year": {"bbox": list(roi_polygon("Totten").bounds),
                              "bbox_crs": "EPSG:3031", "year": 2020},
    "intersects point + range": {"intersects": {"type": "Point", "coordinates": [-106.5, -75.0]},
                                 "year_from": 2015, "year_to": 2016},
    "one shelf, all years (1,000 items)": {"shelves": ["Totten"]},
}


def main() -> None:
    """Build the index, time the queries, print a markdown table."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, typos
    with tempfile.TemporaryDirectory() as tmp:
        release = build_release(Path(tmp) / "release")
        catalog_release(release, PAPER_FACTORS)
        template = json.loads((release / ITEMS_NDJSON).read_text().splitlines()[0])
        index_dir = Path(tmp) / "index"
        index_dir.mkdir()
        start = time.perf_counter()
        write_index(index_dir, synthetic_items(template, N_ITEMS))
        print(f"index of {N_ITEMS} items written in {time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        search(index_dir, year=1999)
        print(f"first search in the process (DuckDB start, metadata read): "
              f"{(time.perf_counter() - start) * 1000:.0f} ms")
        print("| query | results | median ms | p90 ms | median CPU ms |\n"
              "|---|---:|---:|---:|---:|")
        for label, query in QUERIES.items():
            times, cpu, results = [], [], 0
            for _ in range(REPEATS):
                start, start_cpu = time.perf_counter(), time.process_time()
                results = len(search(index_dir, **query))
                times.append((time.perf_counter() - start) * 1000)
                cpu.append((time.process_time() - start_cpu) * 1000)
            times.sort()
            print(f"| {label} | {results} | {statistics.median(times):.1f} | "
                  f"{times[int(0.9 * (len(times) - 1))]:.1f} | {statistics.median(cpu):.1f} |")


if __name__ == "__main__":
    main()
