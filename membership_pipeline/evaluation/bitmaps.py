"""Conversions between numpy arrays of identity ids and pyroaring bitmaps."""

from __future__ import annotations

import array

import numpy as np
from pyroaring import BitMap


def bitmap_of(ids: np.ndarray) -> BitMap:
    """A bitmap of uint32 ids; through ``array.array`` because pyroaring reads its buffer in one
    call (measured 4× faster than from a numpy array, which it iterates)."""
    return BitMap(array.array("I", np.ascontiguousarray(ids, dtype=np.uint32).tobytes()))


def bitmap_where(ids: np.ndarray, mask: np.ndarray) -> BitMap:
    return bitmap_of(ids[mask])
