"""Splitting a bitmap into id-range chunks of bounded serialized size, and back.

A chunk is a serialized Roaring bitmap of the ids in ``[min_id, max_id]``. A small bitmap is one
chunk; a large one is halved at its median id until every piece serializes to at most
``chunk_bytes``, so no row grows with the environment and a reader fetches only the chunk that
holds an id.
"""

from __future__ import annotations

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
    whole = BitMap(bitmap)
    whole.run_optimize()  # runs of consecutive ids (common for identity ids) store compactly
    pieces: list[tuple[BitMap, bytes]] = []
    pending = [(whole, whole.serialize())]
    while pending:  # halve by rank until each piece fits (a single id always does)
        piece, payload = pending.pop()
        if len(payload) <= chunk_bytes or len(piece) == 1:
            pieces.append((piece, payload))
            continue
        middle = piece[len(piece) // 2]
        upper = piece & _id_range(middle, piece.max() + 1)
        lower = piece & _id_range(piece.min(), middle)
        for half in (upper, lower):  # popped lower first: pieces come out in id order
            half.run_optimize()
            pending.append((half, half.serialize()))
    return [
        Chunk(index, piece.min(), piece.max(), len(piece), payload)
        for index, (piece, payload) in enumerate(pieces)
    ]


def _id_range(start: int, stop: int) -> BitMap:
    ids = BitMap()
    ids.add_range(start, stop)
    return ids


def load_chunk(payload: bytes) -> FrozenBitMap:
    return FrozenBitMap.deserialize(payload)
