"""Splitting a bitmap into id-range chunks of bounded serialized size, and back.

A chunk is a serialized Roaring bitmap of the ids in ``[min_id, max_id]``. Small bitmaps are one
chunk; a large one is cut at rank boundaries into about ``ceil(size / chunk_bytes)`` pieces, so
no row grows with the environment and a reader can fetch only the chunk that holds an id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyroaring import BitMap, FrozenBitMap

DEFAULT_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Chunk:
    index: int
    min_id: int
    max_id: int
    cardinality: int
    payload: bytes


def split_bitmap(
    bitmap: BitMap | FrozenBitMap, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[Chunk]:
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    if not bitmap:
        return []
    whole = bitmap.serialize()
    pieces = math.ceil(len(whole) / chunk_bytes)
    if pieces <= 1:
        return [Chunk(0, bitmap.min(), bitmap.max(), len(bitmap), whole)]
    cardinality = len(bitmap)
    # The first id of each piece: ids at evenly spaced ranks.
    starts = sorted({bitmap[cardinality * i // pieces] for i in range(pieces)})
    ends = [*(start - 1 for start in starts[1:]), bitmap.max()]
    chunks = []
    for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
        window = BitMap()
        window.add_range(start, end + 1)
        piece = bitmap & window
        chunks.append(Chunk(index, piece.min(), piece.max(), len(piece), piece.serialize()))
    return chunks


def load_chunk(payload: bytes) -> FrozenBitMap:
    return FrozenBitMap.deserialize(payload)
