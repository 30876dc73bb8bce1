"""Conversions between numpy arrays of identity ids and pyroaring bitmaps.

A segment's bitmap is built from the environment's sorted ids and a per-identity boolean mask.
Selecting the ids (``ids[mask]``) and inserting them into a ``BitMap`` cost about 8 ms per
million identities; writing Roaring's portable serialization straight from the ids and the mask
in one compiled pass, then ``BitMap.deserialize`` (a copy in C), costs a fraction of that.
"""

from __future__ import annotations

import numba
import numpy as np
from pyroaring import BitMap

# Roaring's portable format without run containers (what ``BitMap.serialize`` writes before
# ``run_optimize``): cookie, container count, (key, cardinality - 1) and an offset per container,
# then each container: sorted uint16 values when it holds at most 4096, else a 65536-bit bitset.
_SERIAL_COOKIE_NO_RUNCONTAINER = 12346
_ARRAY_LIMIT = 4096
_BITSET_BYTES = 8192


def bitmap_of(ids: np.ndarray) -> BitMap:
    """A bitmap of sorted, distinct uint32 ids."""
    return bitmap_where(ids, np.ones(len(ids), dtype=bool))


def bitmap_where(ids: np.ndarray, mask: np.ndarray) -> BitMap:
    """The bitmap of ``ids[mask]``; ``ids`` sorted ascending and distinct."""
    codes = np.ascontiguousarray(mask, dtype=np.bool_).view(np.uint8)
    return _bitmap(ids, codes, _MASK_LOOKUP)


def bitmap_of_codes(
    ids: np.ndarray, codes: np.ndarray, decided: np.ndarray, missing: bool
) -> BitMap:
    """The bitmap of the ids whose code is decided true: ``decided[codes[i]]``, or ``missing``
    where ``codes[i]`` is -1 (a dictionary-encoded column and one answer per distinct value,
    without materialising the per-identity booleans)."""
    lookup = np.concatenate([[missing], np.asarray(decided, dtype=np.bool_)]).astype(np.uint8)
    return _bitmap(ids, np.ascontiguousarray(codes, dtype=np.int32), lookup, shift=1)


_MASK_LOOKUP = np.array([0, 1], dtype=np.uint8)


def bitmaps_by_code(ids: np.ndarray, codes: np.ndarray, values: int) -> list[BitMap]:
    """The bitmap of every code of a dictionary-encoded column: position 0 for the ids whose
    code is -1 (no value), then one per value ``0 .. values - 1``. A condition on a column of
    few distinct values is then the union of the bitmaps of the values it accepts, instead of
    one more pass over every identity."""
    order, bounds = _partition_by_code(np.ascontiguousarray(codes, dtype=np.int32), values)
    grouped = np.ascontiguousarray(ids, dtype=np.uint32)[order]  # stable: each group sorted
    return [bitmap_of(grouped[bounds[i] : bounds[i + 1]]) for i in range(values + 1)]


@numba.njit(cache=True, nogil=True)
def _partition_by_code(
    codes: np.ndarray, values: int
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    # A counting sort of positions by code (-1 first), stable.
    bounds = np.zeros(values + 2, dtype=np.int64)
    for code in codes:
        bounds[code + 2] += 1
    for i in range(1, values + 2):
        bounds[i] += bounds[i - 1]
    cursor = bounds[:-1].copy()
    order = np.empty(len(codes), dtype=np.int64)
    for position in range(len(codes)):
        slot = codes[position] + 1
        order[cursor[slot]] = position
        cursor[slot] += 1
    return order, bounds


def _bitmap(ids: np.ndarray, codes: np.ndarray, lookup: np.ndarray, shift: int = 0) -> BitMap:
    ids = np.ascontiguousarray(ids, dtype=np.uint32)
    return BitMap.deserialize(_serialized(ids, codes, lookup, shift).tobytes())


@numba.njit(cache=True, nogil=True)
def _serialized(
    ids: np.ndarray, codes: np.ndarray, lookup: np.ndarray, shift: int
) -> np.ndarray:  # pragma: no cover - compiled
    # Id i is selected when lookup[codes[i] + shift] is 1.
    # The ids' groups by key (ids >> 16; sorted ids make them runs) and how many selected ids
    # each holds. Branch-free on the mask: a random mask would mispredict every other branch.
    group_starts = np.empty(min(len(ids), 65536) + 1, dtype=np.int64)
    cards = np.zeros(min(len(ids), 65536) + 1, dtype=np.int64)
    groups = 0
    key = -1
    selected = 0  # in a register: a read-modify-write of cards per id would be 20× slower
    for i in range(len(ids)):
        if (ids[i] >> 16) != key:
            if groups:
                cards[groups - 1] = selected
            key, selected = ids[i] >> 16, 0
            group_starts[groups] = i
            groups += 1
        selected += lookup[codes[i] + shift]
    if groups:
        cards[groups - 1] = selected
    group_starts[groups] = len(ids)
    containers = 0
    for g in range(groups):
        containers += cards[g] > 0
    # Every field and container is a whole number of uint16s: write uint16 words.
    out_size = 4 + 4 * containers
    for g in range(groups):
        if cards[g] > 0:
            out_size += cards[g] if cards[g] <= _ARRAY_LIMIT else _BITSET_BYTES // 2
    out = np.zeros(out_size, dtype=np.uint16)
    _put32(out, 0, _SERIAL_COOKIE_NO_RUNCONTAINER)
    _put32(out, 2, containers)
    scratch = np.empty(_ARRAY_LIMIT + 1, dtype=np.uint16)
    at = 4 + 4 * containers
    c = 0
    for g in range(groups):
        card = cards[g]
        if card == 0:
            continue
        first, last = group_starts[g], group_starts[g + 1]
        out[4 + 2 * c] = ids[first] >> 16
        out[5 + 2 * c] = card - 1
        _put32(out, 4 + 2 * containers + 2 * c, 2 * at)  # offsets are in bytes
        if card <= _ARRAY_LIMIT:
            n = 0
            for i in range(first, last):  # write always, advance when selected
                scratch[n] = ids[i] & 0xFFFF
                n += lookup[codes[i] + shift]
            out[at : at + card] = scratch[:card]
            at += card
        else:
            # 64 bits at a time in a register (sorted ids fill one word after another).
            bits = out[at : at + _BITSET_BYTES // 2].view(np.uint64)
            word, held = -1, np.uint64(0)
            for i in range(first, last):
                low = ids[i] & 0xFFFF
                if (low >> 6) != word:
                    if word >= 0:
                        bits[word] = held
                    word, held = low >> 6, np.uint64(0)
                held |= np.uint64(lookup[codes[i] + shift]) << np.uint64(low & 63)
            bits[word] = held
            at += _BITSET_BYTES // 2
        c += 1
    return out.view(np.uint8)


@numba.njit(inline="always")
def _put32(out: np.ndarray, at: int, value: int) -> None:  # pragma: no cover - compiled
    out[at] = np.uint16(value & 0xFFFF)
    out[at + 1] = np.uint16((value >> 16) & 0xFFFF)


def membership_matrix(ids: np.ndarray, columns: list[BitMap | None]) -> np.ndarray:
    """Identity-major answers: row ``i`` holds one bit per column (little-endian within each
    byte) for ``ids[i]``, set where the column's bitmap holds it. ``ids`` sorted ascending and
    distinct; a bitmap's ids outside ``ids`` are ignored, a None column is all clear.

    Each column is tested straight from its portable serialization (a bitset container is one
    lookup per id), into a column-major matrix whose byte rows are contiguous, transposed once
    at the end: about 1 ns per (identity, column)."""
    ids = np.ascontiguousarray(ids, dtype=np.uint32)
    width = max((len(columns) + 7) // 8, 1)
    by_column = np.zeros((width, len(ids)), dtype=np.uint8)
    for column, members in enumerate(columns):
        if members:
            serialized = np.frombuffer(members.serialize(), dtype=np.uint8)
            _mark_column(ids, serialized, by_column[column >> 3], column & 7)
    return np.ascontiguousarray(by_column.T)


# _SPREAD[b][byte]: eight bytes, byte k holding bit b where bit k of ``byte`` is set.
_SPREAD = (
    (
        np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")[None]
        << np.arange(8, dtype=np.uint8)[:, None, None]
    )
    .view(np.uint64)[:, :, 0]
    .copy()
)
_SERIAL_COOKIE = 12347  # with run containers: the container count is in the cookie's high half
_NO_OFFSET_THRESHOLD = 4  # fewer containers (with runs): no offset table


@numba.njit(cache=True, nogil=True)
def _u16(data: np.ndarray, at: int) -> int:  # pragma: no cover - compiled
    return np.int64(data[at]) | (np.int64(data[at + 1]) << 8)


@numba.njit(cache=True, nogil=True)
def _u32(data: np.ndarray, at: int) -> int:  # pragma: no cover - compiled
    return _u16(data, at) | (_u16(data, at + 2) << 16)


@numba.njit(cache=True, nogil=True)
def _mark_column(
    ids: np.ndarray, data: np.ndarray, out: np.ndarray, bit_index: int
) -> None:  # pragma: no cover - compiled
    # Roaring's portable format: a header (cookie; with runs, a bitset of which containers are
    # runs), (key, cardinality - 1) per container, offsets (unless few containers with runs),
    # then the containers: sorted uint16s, a 65536-bit bitset, or (start, length - 1) runs.
    bit = np.uint8(1 << bit_index)
    cookie = _u32(data, 0)
    if (cookie & 0xFFFF) == _SERIAL_COOKIE:
        count = (cookie >> 16) + 1
        runs_at = 4
        at = 4 + (count + 7) // 8
        offsets = count >= _NO_OFFSET_THRESHOLD
    else:
        count = _u32(data, 4)
        runs_at = -1
        at = 8
        offsets = True
    headers = at
    expanded = np.empty(65536, dtype=np.uint8)
    wide = expanded.view(np.uint64)
    spread = _SPREAD[bit_index]
    start = at + 4 * count + (4 * count if offsets else 0)
    for c in range(count):
        key = _u16(data, headers + 4 * c)
        cardinality = _u16(data, headers + 4 * c + 2) + 1
        is_run = runs_at >= 0 and (data[runs_at + (c >> 3)] >> (c & 7)) & 1
        if offsets:
            start = _u32(data, headers + 4 * count + 4 * c)
        if is_run:
            size = 2 + 4 * _u16(data, start)
        elif cardinality > 4096:
            size = 8192
        else:
            size = 2 * cardinality
        position = np.searchsorted(ids, np.uint32(key << 16))
        end = np.searchsorted(ids, np.uint32(((key + 1) << 16) - 1), side="right")
        if is_run:
            runs, r = _u16(data, start), 0
            first, last = -1, -1
            for i in range(position, end):
                low = np.int64(ids[i] & 0xFFFF)
                while r < runs and low > last:
                    first = _u16(data, start + 2 + 4 * r)
                    last = first + _u16(data, start + 4 + 4 * r)
                    r += 1
                if first <= low <= last:
                    out[i] |= bit
        elif cardinality > 4096 and end > position:
            for j in range(8192):  # one byte per id: branch-free lookups (random bits)
                wide[j] = spread[data[start + j]]
            for i in range(position, end):
                out[i] |= expanded[ids[i] & 0xFFFF]
        else:
            v = 0
            for i in range(position, end):
                low = np.int64(ids[i] & 0xFFFF)
                while v < cardinality and _u16(data, start + 2 * v) < low:
                    v += 1
                if v < cardinality and _u16(data, start + 2 * v) == low:
                    out[i] |= bit
        start += size
