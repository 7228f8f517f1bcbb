"""Landsat Collection 2 facts shared by the scene sources: QA_PIXEL bits, UInt8 scaling, clouds.

The ``gee`` source expresses these rules as Earth Engine expressions, the ``local`` source applies
them with numpy to files on disk (EarthExplorer Level-1 products, several files of one day); both
take the bit numbers, the scale and the daily cloud rule from here so they cannot drift apart.

QA_PIXEL (Collection 2 Level-1 pixel quality band, 16 bits): bit 0 = fill (no data), bit 3 =
cloud, bit 4 = cloud shadow. The paper masks bits 3 and 4 to rank daily composites (2.1.3).

UInt8 scaling: the authors export TOA reflectance as ``image.multiply(255).toByte()``. Earth
Engine's ``toByte`` clamps to 0..255 and drops the fraction (``ee.Number(1.7).toByte()`` loses
its decimals, unlike ``ee.Array.byte``, which rounds), so the numpy twin is
``floor(clip(reflectance, 0, 1) × 255)``.

Daily cloud rule: a daily scene is the per-pixel, per-band UNMASKED median of the images (files)
that have data there. Where more than half of them are clear, the median lies between clear
values; where at least half are cloud or shadow, it can be (or average with) a cloudy value. So a
pixel of the daily scene is cloudy where at least ``CLOUDY_SHARE`` (one half) of the images with
data there flag cloud or shadow: ``mean(flags) >= 0.5`` over those images. One image: its flag.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

#: The Collection 2 pixel-quality band and the bits we read.
QA_BAND = "QA_PIXEL"
QA_FILL_BIT = 0
QA_CLOUD_BIT = 3
QA_SHADOW_BIT = 4
#: Bits that make a pixel unusable: cloud (3) or cloud shadow (4).
QA_CLOUD_BITS: tuple[int, ...] = (QA_CLOUD_BIT, QA_SHADOW_BIT)
#: TOA reflectance [0, 1] is exported as UInt8 × this (the authors' ``multiply(255)``).
EXPORT_SCALE = 255
#: Share of a day's images (with data at a pixel) flagging cloud/shadow that makes it cloudy.
CLOUDY_SHARE = 0.5


def qa_cloud(qa: NDArray[np.integer]) -> NDArray[np.bool_]:
    """Where QA_PIXEL flags cloud (bit 3) or cloud shadow (bit 4)."""
    bits = sum(1 << b for b in QA_CLOUD_BITS)
    return (np.asarray(qa).astype(np.uint16) & bits) != 0


def qa_fill(qa: NDArray[np.integer]) -> NDArray[np.bool_]:
    """Where QA_PIXEL marks fill (bit 0): outside the footprint, SLC-off gaps."""
    return (np.asarray(qa).astype(np.uint16) & (1 << QA_FILL_BIT)) != 0


def reflectance_to_uint8(reflectance: NDArray[np.floating]) -> NDArray[np.uint8]:
    """TOA reflectance as the authors export it: ``floor(clip(r, 0, 1) × 255)`` (EE toByte)."""
    scaled = np.clip(np.asarray(reflectance, np.float64), 0.0, 1.0) * EXPORT_SCALE
    return np.floor(scaled).astype(np.uint8)


def daily_cloud(present: Sequence[NDArray[np.bool_]],
                flags: Sequence[NDArray[np.bool_] | None]) -> NDArray[np.bool_]:
    """The daily scene's cloud mask from each image's data mask and cloud flags.

    ``flags[i]`` None means image i carries no cloud information (counted clear). A pixel is
    cloudy where at least ``CLOUDY_SHARE`` of the images with data there flag it; pixels no image
    has data for are not cloudy (they are no data).
    """
    if len(present) != len(flags) or not present:
        raise ValueError(f"{len(present)} data masks for {len(flags)} cloud masks")
    count = np.zeros(np.shape(present[0]), np.int32)
    cloudy = np.zeros_like(count)
    for has_data, flag in zip(present, flags, strict=True):
        count += has_data
        if flag is not None:
            cloudy += has_data & (np.asarray(flag) != 0)
    return (count > 0) & (cloudy >= CLOUDY_SHARE * count)
