"""A property of every identity of an environment, dictionary-encoded.

``codes[i]`` is the index into ``values`` of identity ``i``'s context value, or ``-1`` when the
identity has no value (flag-engine's ``None``). Conditions are decided once per distinct value and
broadcast to identities through ``codes``, so the cost of a condition follows the number of
distinct values, and the per-identity part is a single numpy gather.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pyarrow as pa

from membership_pipeline.evaluation.context_values import ContextValue
from membership_pipeline.evaluation.re2_patterns import re2_texts

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class TypedValues:
    """The positions in ``ValueColumn.values`` holding one Python type, and those values."""

    def __init__(self, positions: np.ndarray, array: np.ndarray) -> None:
        self.positions = positions
        self.array = array

    @cached_property
    def arrow_texts(self) -> pa.Array:
        """The values (strings) as Arrow text, once for every condition on the column."""
        return pa.array(self.array.tolist(), pa.string())

    @cached_property
    def re2_texts(self) -> pa.Array | None:
        """``arrow_texts`` when RE2 may decide REGEX on them (see ``re2_patterns``)."""
        return re2_texts(self.arrow_texts)


class ValueColumn:
    def __init__(self, codes: np.ndarray, values: list[ContextValue]) -> None:
        self.codes = codes
        self.values = values

    @classmethod
    def constant(cls, size: int, value: ContextValue) -> ValueColumn:
        """The same value for every identity (``$.environment.*`` properties)."""
        if value is None:
            return cls(np.full(size, -1, dtype=np.int32), [])
        return cls(np.zeros(size, dtype=np.int32), [value])

    @cached_property
    def by_type(self) -> dict[str, TypedValues]:
        """``values`` split into bool / int (int64 range) / bigint / float / str partitions."""
        values = _objects(self.values)
        # One C-level pass: the type of each value, looked up to a small code.
        kinds = np.fromiter(
            map(_KIND_CODES.__getitem__, map(type, self.values)), dtype=np.int8, count=len(values)
        )
        partitions: dict[str, TypedValues] = {}
        for code, (name, dtype) in enumerate(_KINDS):
            positions = np.flatnonzero(kinds == code)
            if not len(positions):
                continue
            picked = values[positions]
            try:
                array = picked.astype(dtype)
            except OverflowError:  # integers beyond int64: keep them apart, as Python ints
                fits = (picked >= _INT64_MIN) & (picked <= _INT64_MAX)
                partitions["bigint"] = TypedValues(positions[~fits], picked[~fits])
                positions, array = positions[fits], picked[fits].astype(np.int64)
            if len(positions):
                partitions[name] = TypedValues(positions, array)
        return partitions


_KINDS: list[tuple[str, type]] = [
    ("bool", object),
    ("int", np.int64),
    ("float", np.float64),
    ("str", object),
]
_KIND_CODES = {bool: 0, int: 1, float: 2, str: 3}


def _objects(values: list) -> np.ndarray:
    """A 1-d object array, without numpy's per-element shape discovery."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
