"""Training data: the authors' tile layout, reproducible splits, and demo tiles on the fly.

Layout (the authors' code): ``ROOT/images/NAME.tif`` (3-band UInt8 RGB), ``ROOT/labels/
NAME_mask.tif`` (1-band, 0/255 or 0/1; pixels equal to the file's nodata value are ignored by
the loss and the metrics) and text files ``ROOT/train.txt``, ``ROOT/test.txt`` (and
optionally ``ROOT/val.txt``) listing one NAME a line. Samples are ``(image, target)`` with the
image as float (3, H, W) in [0, 1] (RGB / 255, no mean/std, as the authors) and the target as
float (H, W) 0/1 (``IGNORE_TARGET`` at label nodata). Augmentation draws come from a generator
seeded by (seed, epoch, index), so an epoch's samples do not depend on worker processes or on
where a run was resumed. An optional random square crop (same generator) trains on parts of
tiles, which is cheaper per step.
"""

from __future__ import annotations

import hashlib
import random
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from torch.utils.data import Dataset

from producer.training.augment import Augmentation
from producer.writer import atomic_path

IMAGES_DIR = "images"
LABELS_DIR = "labels"
SPLITS = ("train", "val", "test")
#: A renderer of demo tiles: (seed, size) -> (RGB uint8 (H, W, 3), damage label (H, W)).
TileRenderer = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def image_path(root: Path, name: str) -> Path:
    """``ROOT/images/NAME.tif``."""
    return Path(root) / IMAGES_DIR / f"{name}.tif"


def label_path(root: Path, name: str) -> Path:
    """``ROOT/labels/NAME_mask.tif``."""
    return Path(root) / LABELS_DIR / f"{name}_mask.tif"


def list_names(root: Path) -> list[str]:
    """Names of every image in ``ROOT/images`` that has a label, sorted."""
    images = sorted(p.stem for p in (Path(root) / IMAGES_DIR).glob("*.tif"))
    if not images:
        raise FileNotFoundError(f"{root}/{IMAGES_DIR}: no *.tif images (authors' layout)")
    missing = [n for n in images if not label_path(root, n).exists()]
    if missing:
        raise FileNotFoundError(f"{label_path(root, missing[0])}: label missing for image "
                                f"{missing[0]!r} ({len(missing)} images without labels)")
    return images


#: The authors' tile names: ``<SENSOR>_<Shelf>_composite_<YYYY-MM-DD>_uint8_tiles_<i>_<j>``
#: (``crop_landsat_image_to_geotiff`` on the exported composites); group 1 is the shelf.
AUTHORS_REGION = r"^L[CET]0\d_(.+?)_composite_"
#: ``write_split``'s default grouping: by ``AUTHORS_REGION`` when every name follows it.
AUTO_GROUPS = "auto"


def write_split(root: Path, seed: int = 0, test_fraction: float = 0.2,
                val_fraction: float = 0.0, force: bool = False,
                group_by: str | None = AUTO_GROUPS) -> dict[str, list[str]]:
    """Write ``train.txt`` / ``test.txt`` (and ``val.txt``) with a seeded random split.

    The names are sorted before a ``random.Random(seed)`` shuffle, so the same folder and seed
    always give the same split (the paper: 80 % train, 20 % test). The paper allocates the
    images *of each region* randomly (2.3.3), so with ``group_by`` (a regular expression whose
    first group names an image's region) every region is split in the same proportions;
    ``AUTO_GROUPS`` (the default) uses the authors' tile naming when every name follows it,
    and None splits all names together. Existing split files are kept unless ``force``.
    """
    root = Path(root)
    existing = [root / f"{s}.txt" for s in SPLITS if (root / f"{s}.txt").exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]}: split exists (use --force to rewrite it)")
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1 - test_fraction:
        raise ValueError("fractions must satisfy 0 < test, 0 <= val, test + val < 1")
    names = list_names(root)
    split = _stratified_split(split_groups(names, group_by), seed, test_fraction, val_fraction)
    if not split["train"]:
        raise ValueError(f"{root}: {len(names)} images leave none for training")
    for key in SPLITS:
        path = root / f"{key}.txt"
        if key == "val" and not split[key]:
            path.unlink(missing_ok=True)
            continue
        with atomic_path(path) as tmp:
            Path(tmp).write_text("".join(f"{n}\n" for n in split[key]))
    return split


def split_groups(names: Sequence[str], group_by: str | None) -> dict[str, list[str]]:
    """The groups ``write_split`` splits alike: by ``group_by`` (``AUTO_GROUPS``: the authors'
    tile naming when every name follows it; None: one group)."""
    if group_by == AUTO_GROUPS:
        return region_groups(names, AUTHORS_REGION, required=False)
    return region_groups(names, group_by)


def region_groups(names: Sequence[str], pattern: str | None,
                  required: bool = True) -> dict[str, list[str]]:
    """Names grouped by region: the first group of ``pattern`` searched in each name.

    One group of all names when ``pattern`` is None, or when it is not ``required`` (the
    default naming) and some name does not follow it; a name an explicit pattern does not
    match is an error naming it.
    """
    if pattern is None:
        return {"": sorted(names)}
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--group-by {pattern!r}: not a regular expression ({exc})") from None
    if regex.groups < 1:
        raise ValueError(f"--group-by {pattern!r}: needs a group naming the region, e.g. "
                         "'^([^_]+)_'")
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        found = regex.search(name)
        if found is None or found.group(1) is None:
            if not required:
                return {"": sorted(names)}
            raise ValueError(f"image {name!r}: --group-by {pattern!r} does not match it (its "
                             "first group must name the region of every image)")
        groups.setdefault(found.group(1), []).append(name)
    return groups


def _stratified_split(groups: dict[str, list[str]], seed: int, test_fraction: float,
                      val_fraction: float) -> dict[str, list[str]]:
    """Test, val and train names: each group shuffled (one seeded generator, groups in sorted
    order) and cut by counts apportioned to the groups in proportion to their sizes. One group
    gives the unstratified split of earlier versions exactly."""
    total = sum(len(g) for g in groups.values())
    sizes = {key: len(names) for key, names in groups.items()}
    n_test = _apportion(sizes, max(1, round(total * test_fraction)), sizes)
    room = {key: sizes[key] - n_test[key] for key in sizes}
    n_val = _apportion(sizes, round(total * val_fraction), room)
    rng = random.Random(seed)
    split: dict[str, list[str]] = {"test": [], "val": [], "train": []}
    for key in sorted(groups):
        names = list(groups[key])
        rng.shuffle(names)
        t, v = n_test[key], n_val[key]
        split["test"] += names[:t]
        split["val"] += names[t:t + v]
        split["train"] += names[t + v:]
    return {key: sorted(names) for key, names in split.items()}


def _apportion(sizes: dict[str, int], count: int, room: dict[str, int]) -> dict[str, int]:
    """``count`` items shared among groups in proportion to ``sizes`` (largest remainders,
    ties by name), none given more than its ``room``."""
    total = sum(sizes.values())
    quota = {key: count * size / total for key, size in sizes.items()}
    share = {key: min(int(quota[key]), room[key]) for key in sizes}
    order = sorted(sizes, key=lambda key: (-(quota[key] - int(quota[key])), key))
    while sum(share.values()) < count and any(share[k] < room[k] for k in order):
        for key in order:
            if sum(share.values()) < count and share[key] < room[key]:
                share[key] += 1
    return share


def read_split(root: Path, split: str) -> list[str]:
    """Names listed in ``ROOT/<split>.txt`` (blank lines and '#' comments ignored); a name
    listed twice is an error naming it (it would count twice in training and evaluation)."""
    path = Path(root) / f"{split}.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: split file missing (write one with "
                                "`icedamage split-data`)")
    names = [ln.strip() for ln in path.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        raise ValueError(f"{path}: {_listing(twice)} listed more than once; each image must "
                         "appear once")
    return names


def check_disjoint_splits(root: Path) -> None:
    """Refuse split files of ``root`` that share images (train/val/test must be disjoint: an
    image in two of them leaks into the selection or the test metrics)."""
    present = {s: set(read_split(root, s)) for s in SPLITS if (Path(root) / f"{s}.txt").exists()}
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            if first in present and second in present:
                shared = sorted(present[first] & present[second])
                if shared:
                    raise ValueError(
                        f"{Path(root) / f'{first}.txt'} and {second}.txt share "
                        f"{_listing(shared)}: the splits must be disjoint (rewrite them with "
                        "`icedamage split-data --force`)")


def _listing(names: Sequence[str], shown: int = 5) -> str:
    """``'a', 'b' … (N images)`` for error messages."""
    text = ", ".join(repr(n) for n in names[:shown])
    return text + (f" … ({len(names)} images)" if len(names) > shown else "")


def read_image(path: Path) -> np.ndarray:
    """A 3-band UInt8 GeoTIFF as (H, W, 3) uint8."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain training tiles
        src = rasterio.open(path)
    with src:
        if src.count < 3 or src.dtypes[0] != "uint8":
            raise ValueError(f"{path}: expected 3-band uint8 RGB, got {src.count} band(s) "
                             f"of {src.dtypes[0]}")
        return np.moveaxis(src.read([1, 2, 3]), 0, -1)


#: Label encodings accepted (values other than the file's nodata): the authors' 0/255 masks and
#: 0/1 masks (the product's type-1 maps, 0/1 with nodata 255).
LABEL_ENCODINGS = ((0, 1), (0, 255))
#: The target value of pixels excluded from the loss and the metrics (label nodata).
IGNORE_TARGET = -1.0


def read_label(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A 1-band label mask as (damage (H, W) bool, valid (H, W) bool or None).

    Pixels equal to the file's nodata value are not valid (None: every pixel is); the other
    values must be one of ``LABEL_ENCODINGS`` (0/255 or 0/1), anything else is an error
    naming the file and the values found.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain training tiles
        with rasterio.open(path) as src:
            pixels, nodata = src.read(1), src.nodata
    valid = None
    if nodata is not None:
        valid = ~np.isnan(pixels) if np.isnan(nodata) else pixels != nodata
    values = set(np.unique(pixels if valid is None else pixels[valid]).tolist())
    # with a nodata tag only 0/1 (the type 1 maps' encoding) is unambiguous: a 0/255 mask
    # tagged nodata 0 or 255 would lose its background or its damage to the ignore mask
    accepted = [(0, 1)] if nodata is not None else list(LABEL_ENCODINGS)
    if not any(values <= set(enc) for enc in accepted):
        shown = ", ".join(f"{v:g}" for v in sorted(values)[:10]) + \
            (" …" if len(values) > 10 else "")
        tag = ("" if nodata is None else f"; this file is tagged nodata {nodata:g}, and a 0/255 "
               "mask must not be: remove the tag with `gdal_edit.py -unsetnodata`")
        raise ValueError(f"{path}: label values {shown} are not an accepted encoding (damage "
                         f"masks 0/255 or 0/1 without a nodata tag, or 0/1 with one{tag})")
    damage = pixels > 0 if valid is None else (pixels > 0) & valid
    return damage, valid


def check_label_encoding(paths: Sequence[Path]) -> None:
    """Refuse a set of labels that looks like the authors' 0/255 masks carrying a stray nodata
    tag of 255: tagged 255, holding that value, yet no label holds damage as 1. Each such
    tile alone reads as a 0/1 map without damage, and its damage would be ignored."""
    tagged, holds_one = [], False
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.nodata != 255:
                    continue
                pixels = src.read(1)
        holds_one = holds_one or bool((pixels == 1).any())
        if (pixels == 255).any():
            tagged.append(path)
    if tagged and not holds_one:
        raise ValueError(
            f"{tagged[0]} (and {len(tagged) - 1} more): labels tagged nodata 255 hold 255 but "
            "none holds damage as 1 — 0/255 masks with a stray nodata tag, whose damage would "
            "all be ignored; remove the tag (`gdal_edit.py -unsetnodata`)")


def check_same_shape(first: Path, first_shape: tuple[int, ...], second: Path,
                     second_shape: tuple[int, ...]) -> None:
    """Refuse a pair of rasters (image/label, prediction/label) of different sizes."""
    if tuple(first_shape) != tuple(second_shape):
        raise ValueError(f"{first} is {first_shape[0]}×{first_shape[1]} but {second} is "
                         f"{second_shape[0]}×{second_shape[1]} (rows × columns): the pair must "
                         "have the same size")


def raster_shape(path: Path) -> tuple[int, int]:
    """(rows, columns) of a raster, from its header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.height, src.width


def write_tile(root: Path, name: str, rgb: np.ndarray, label: np.ndarray) -> None:
    """Write one image/label pair in the authors' layout (label as 0/255)."""
    for path, pixels in ((image_path(root, name), np.moveaxis(rgb, -1, 0)),
                         (label_path(root, name), (np.asarray(label) > 0)[None] * 255)):
        path.parent.mkdir(parents=True, exist_ok=True)
        profile = {"driver": "GTiff", "width": pixels.shape[2], "height": pixels.shape[1],
                   "count": pixels.shape[0], "dtype": "uint8", "compress": "lzw"}
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(pixels.astype(np.uint8))


def data_hash(root: Path, names: Sequence[str]) -> str:
    """SHA-256 over names and bytes of the listed images and labels (kept in checkpoints)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        for path in (image_path(root, name), label_path(root, name)):
            digest.update(f"{path.parent.name}/{path.name}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def to_sample(rgb: np.ndarray, label: np.ndarray,
              valid: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 and (H, W) mask as float (3, H, W) / 255 and float (H, W) 0/1, with
    ``IGNORE_TARGET`` where ``valid`` (optional) is False."""
    image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(rgb, -1, 0))).float() / 255.0
    target = torch.from_numpy(np.asarray(label) > 0).float()
    if valid is not None:
        target[~torch.from_numpy(np.ascontiguousarray(valid, dtype=bool))] = IGNORE_TARGET
    return image, target


class _Augmented(Dataset):
    """Shared epoch/seed bookkeeping: augmentation reproducible per (seed, epoch, index)."""

    def __init__(self, augment: Augmentation | None, seed: int, crop: int | None = None) -> None:
        self.augment = augment
        self.seed = seed
        self.crop = crop
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch``."""
        self.epoch = epoch

    def _finish(self, index: int, rgb: np.ndarray, label: np.ndarray,
                valid: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
        h, w = label.shape
        if self.crop is not None and (self.crop < h or self.crop < w):
            c = self.crop
            top = int(torch.randint(0, max(h - c, 0) + 1, (1,), generator=gen))
            left = int(torch.randint(0, max(w - c, 0) + 1, (1,), generator=gen))
            rgb, label = rgb[top:top + c, left:left + c], label[top:top + c, left:left + c]
            valid = None if valid is None else valid[top:top + c, left:left + c]
        image, target = to_sample(rgb, label, valid)
        if self.augment is not None:
            image, target = self.augment(image, target, gen)
        return image, target


class TileDataset(_Augmented):
    """The tiles of one split of a folder in the authors' layout."""

    def __init__(self, root: Path, split: str, augment: Augmentation | None = None,
                 seed: int = 0, names: Sequence[str] | None = None,
                 crop: int | None = None) -> None:
        super().__init__(augment, seed, crop)
        self.root = Path(root)
        self.names = list(names) if names is not None else read_split(self.root, split)
        if not self.names:
            raise ValueError(f"{self.root}/{split}.txt lists no images")
        for name in self.names:
            for path in (image_path(self.root, name), label_path(self.root, name)):
                if not path.exists():
                    raise FileNotFoundError(f"{path}: listed in {split}.txt but missing")
            image, label = image_path(self.root, name), label_path(self.root, name)
            check_same_shape(image, raster_shape(image), label, raster_shape(label))
        check_label_encoding([label_path(self.root, name) for name in self.names])

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        return self._finish(index, read_image(image_path(self.root, name)),
                            *read_label(label_path(self.root, name)))

    def fingerprint(self) -> str:
        """Hash of this split's files."""
        return data_hash(self.root, self.names)


def demo_renderer() -> TileRenderer:
    """The demo scene renderer's training-tile function (``producer.sources.demo``)."""
    from producer.sources.demo import render_training_tile

    return render_training_tile


class DemoTileDataset(_Augmented):
    """Demo tiles rendered on the fly; tile ``i`` is ``render(first_seed + i, size)``.

    Disjoint seed ranges give disjoint training and held-out sets.
    """

    def __init__(self, count: int, size: int, first_seed: int = 0,
                 augment: Augmentation | None = None, seed: int = 0,
                 render: TileRenderer | None = None, cache: bool = True,
                 crop: int | None = None) -> None:
        super().__init__(augment, seed, crop)
        if count < 1 or size < 32:
            raise ValueError("demo tiles: count must be >= 1 and size >= 32")
        self.count, self.size, self.first_seed = count, size, first_seed
        self.render = render or demo_renderer()
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.count

    def tile(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The rendered (RGB, label) of tile ``index`` (cached: rendering is deterministic)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        rgb, label = self.render(self.first_seed + index, self.size)
        rgb, label = np.asarray(rgb, dtype=np.uint8), np.asarray(label) > 0
        if rgb.shape != (self.size, self.size, 3) or label.shape != (self.size, self.size):
            raise ValueError(f"demo renderer returned {rgb.shape}/{label.shape} for size "
                             f"{self.size}")
        if self._cache is not None:
            self._cache[index] = (rgb, label)
        return rgb, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self._finish(index, *self.tile(index))

    def fingerprint(self) -> str:
        """Hash of the rendered tiles (changes when the renderer changes)."""
        digest = hashlib.sha256(f"demo:{self.first_seed}:{self.count}:{self.size}".encode())
        for i in range(self.count):
            rgb, label = self.tile(i)
            digest.update(rgb.tobytes())
            digest.update(np.packbits(label).tobytes())
        return digest.hexdigest()


def export_demo_tiles(out: Path, count: int, size: int, first_seed: int = 0,
                      seed: int = 0, render: TileRenderer | None = None,
                      force: bool = False) -> dict[str, list[str]]:
    """Write ``count`` demo tiles in the authors' layout with a seeded 80/20 split.

    Existing tiles and an existing split are kept unless ``force`` (as ``write_split``); the
    split returned is then the one on disk.
    """
    out = Path(out)
    dataset = DemoTileDataset(count, size, first_seed, render=render, cache=False)
    for i in range(count):
        name = f"demo_{first_seed + i:06d}"
        if force or not (image_path(out, name).exists() and label_path(out, name).exists()):
            write_tile(out, name, *dataset.tile(i))
    if not force and any((out / f"{s}.txt").exists() for s in SPLITS):
        return {s: read_split(out, s) if (out / f"{s}.txt").exists() else [] for s in SPLITS}
    return write_split(out, seed=seed, force=force)
