"""One environment's identities and traits, validated and dictionary-encoded for evaluation.

Input frames follow Flagsmith's storage:

* identities: ``id`` (the bitmap ordinal, 0 ≤ id < 2**32, unique), ``identifier`` and optionally
  ``key`` (the percentage-split hash key; where missing or empty, flag-engine's composite
  ``"{environment key}_{identifier}"``);
* traits (``environments_trait``): ``identity_id``, ``trait_key``, ``value_type`` (``unicode``,
  ``int``, ``float`` or ``bool``) and the typed columns ``string_value``, ``integer_value``,
  ``float_value``, ``boolean_value``.

Everything here is vectorised per trait key and value type; Python only ever touches distinct
values, never one trait row at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from membership_pipeline.evaluation.context_values import (
    ContextValue,
    coerce_string,
    coerce_strings,
)
from membership_pipeline.evaluation.errors import InvalidEnvironmentInput
from membership_pipeline.evaluation.value_column import ValueColumn

TRAIT_COLUMNS = (
    "identity_id",
    "trait_key",
    "value_type",
    "string_value",
    "integer_value",
    "float_value",
    "boolean_value",
)
VALUE_COLUMN_BY_TYPE = {
    "unicode": "string_value",
    "int": "integer_value",
    "float": "float_value",
    "bool": "boolean_value",
}
MAX_IDENTITY_ID = 2**32 - 1


@dataclass(frozen=True, slots=True)
class EnvironmentRef:
    """The environment fields a condition can read (``$.environment.key`` / ``.name``)."""

    key: str
    name: str

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> EnvironmentRef:
        key, name = raw.get("key"), raw.get("name", "")
        if not isinstance(key, str) or not key:
            raise InvalidEnvironmentInput("the environment needs a non-empty string 'key'")
        return cls(key=key, name=str(name))


class EnvironmentData:
    """Identities sorted by id, with lazily built property columns."""

    def __init__(
        self, environment: EnvironmentRef, identities: pd.DataFrame, traits: pd.DataFrame
    ) -> None:
        self.environment = environment
        frame = _validated_identities(identities)
        self.ids: np.ndarray = frame["id"].to_numpy(dtype=np.uint32)
        self.identifiers: np.ndarray = frame["identifier"].to_numpy(dtype=object)
        self._explicit_keys = frame["key"].to_numpy(dtype=object) if "key" in frame else None
        self.trait_columns: dict[str, ValueColumn] = _trait_columns(traits, self)

    @property
    def size(self) -> int:
        return len(self.ids)

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of identity ids known to be in the environment."""
        dense = self._dense_positions
        if dense is None:
            return np.searchsorted(self.ids, ids)
        return dense[ids - self.ids[0]]

    def find_positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of any identity ids; ``-1`` for ids not in the environment."""
        if not self.size:
            return np.full(len(ids), -1, dtype=np.int64)
        ids = ids.astype(np.int64, copy=False)
        inside = (ids >= int(self.ids[0])) & (ids <= int(self.ids[-1]))
        positions = np.full(len(ids), -1, dtype=np.int64)
        candidates = self.positions_of(ids[inside].astype(np.uint32)).astype(np.int64)
        found = self.ids[candidates] == ids[inside]
        positions[np.flatnonzero(inside)[found]] = candidates[found]
        return positions

    @cached_property
    def _dense_positions(self) -> np.ndarray | None:
        # A direct lookup table when ids are dense enough that it stays small (≤ 16 × size).
        if not self.size or int(self.ids[-1]) - int(self.ids[0]) > 16 * self.size:
            return None
        table = np.zeros(int(self.ids[-1]) - int(self.ids[0]) + 1, dtype=np.int32)
        table[self.ids - self.ids[0]] = np.arange(self.size, dtype=np.int32)
        return table

    @cached_property
    def identity_keys(self) -> np.ndarray:
        """Raw percentage-split keys, as flag-engine enriches them: the given key, or where it
        is missing or empty, ``"{environment key}_{identifier}"``."""
        keys = np.empty(self.size, dtype=object)
        if self._explicit_keys is not None:
            keys[:] = pd.Series(self._explicit_keys).fillna("").astype(str).to_numpy(dtype=object)
            missing = np.flatnonzero(keys == "")
        else:
            missing = np.arange(self.size)
        prefix = f"{self.environment.key}_"
        keys[missing] = [prefix + str(identifier) for identifier in self.identifiers[missing]]
        return keys

    @cached_property
    def identity_key_raw_column(self) -> ValueColumn:
        return _distinct_column(self.identity_keys, coerce=False)

    @cached_property
    def identity_key_column(self) -> ValueColumn:
        return _distinct_column(self.identity_keys, coerce=True)

    @cached_property
    def identifier_column(self) -> ValueColumn:
        return _distinct_column(self.identifiers, coerce=True)

    def environment_constant(self, field: str) -> ValueColumn:
        raw = self.environment.key if field == "key" else self.environment.name
        return ValueColumn.constant(self.size, coerce_string(raw))

    def trait_column(self, trait_key: str) -> ValueColumn:
        column = self.trait_columns.get(trait_key)
        return column if column is not None else ValueColumn.constant(self.size, None)


def _validated_identities(identities: pd.DataFrame) -> pd.DataFrame:
    missing = {"id", "identifier"} - set(identities.columns)
    if missing:
        raise InvalidEnvironmentInput(f"identities lack the column(s) {sorted(missing)}")
    ids = identities["id"]
    if ids.isna().any():
        raise InvalidEnvironmentInput("identities have a null id")
    if not pd.api.types.is_integer_dtype(ids.dtype):
        raise InvalidEnvironmentInput(f"identity ids must be integers, got dtype {ids.dtype}")
    values = ids.to_numpy(dtype=np.int64)
    out_of_range = values[(values < 0) | (values > MAX_IDENTITY_ID)]
    if len(out_of_range):
        raise InvalidEnvironmentInput(
            f"{len(out_of_range)} identity id(s) outside 0..2**32-1, "
            f"e.g. {out_of_range[:5].tolist()}"
        )
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    duplicated = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(duplicated):
        raise InvalidEnvironmentInput(
            f"{len(duplicated)} duplicate identity id(s), e.g. {np.unique(duplicated)[:5].tolist()}"
        )
    if identities["identifier"].isna().any():
        raise InvalidEnvironmentInput("identities have a null identifier")
    return identities.iloc[order]


def _distinct_column(values: np.ndarray, *, coerce: bool) -> ValueColumn:
    """A column of (mostly) unique per-identity strings: no dictionary to build, since repeated
    values in ``ValueColumn.values`` are harmless."""
    listed: list[str] = values.tolist()
    return ValueColumn(
        np.arange(len(listed), dtype=np.int32), coerce_strings(listed) if coerce else listed
    )


def _trait_columns(traits: pd.DataFrame, environment: EnvironmentData) -> dict[str, ValueColumn]:
    missing = set(TRAIT_COLUMNS) - set(traits.columns)
    if missing:
        raise InvalidEnvironmentInput(f"traits lack the column(s) {sorted(missing)}")
    if traits.empty:
        return {}
    size = environment.size
    positions = environment.find_positions(traits["identity_id"].to_numpy(dtype=np.int64))
    if (positions < 0).any():
        unknown = traits["identity_id"].to_numpy()[positions < 0]
        raise InvalidEnvironmentInput(
            f"{len(unknown)} trait row(s) name identities that are not in the environment, "
            f"e.g. identity ids {np.unique(unknown)[:5].tolist()}"
        )
    key_codes, key_names = pd.factorize(traits["trait_key"].astype(object))
    if (key_codes < 0).any():
        raise InvalidEnvironmentInput("a trait row has a null trait_key")
    value_types = traits["value_type"].astype(object).to_numpy()
    unknown_types = set(pd.unique(value_types)) - set(VALUE_COLUMN_BY_TYPE)
    if unknown_types:
        raise InvalidEnvironmentInput(
            f"unknown trait value_type(s) {sorted(map(str, unknown_types))}; "
            f"expected one of {sorted(VALUE_COLUMN_BY_TYPE)}"
        )

    order = np.argsort(key_codes, kind="stable")
    bounds = np.searchsorted(key_codes[order], np.arange(len(key_names) + 1))
    columns: dict[str, ValueColumn] = {}
    for code, trait_key in enumerate(key_names):
        rows = order[bounds[code] : bounds[code + 1]]
        owners = positions[rows]
        repeated = np.flatnonzero(np.bincount(owners, minlength=size) > 1)
        if len(repeated):
            raise InvalidEnvironmentInput(
                f"identity {int(environment.ids[repeated[0]])} has trait {trait_key!r} "
                "more than once"
            )
        columns[str(trait_key)] = _one_trait_column(
            traits, rows, value_types[rows], positions, size
        )
    return columns


def _one_trait_column(
    traits: pd.DataFrame,
    rows: np.ndarray,
    value_types: np.ndarray,
    positions: np.ndarray,
    size: int,
) -> ValueColumn:
    codes = np.full(size, -1, dtype=np.int32)
    values: list[ContextValue] = []
    for value_type, column_name in VALUE_COLUMN_BY_TYPE.items():
        typed_rows = rows[value_types == value_type]
        if not len(typed_rows):
            continue
        raw = traits[column_name].iloc[typed_rows]
        if raw.isna().any():
            row = typed_rows[int(np.flatnonzero(raw.isna().to_numpy())[0])]
            raise InvalidEnvironmentInput(
                f"trait {traits['trait_key'].iloc[row]!r} of identity "
                f"{traits['identity_id'].iloc[row]} has value_type {value_type!r} "
                f"but no {column_name} (null or NaN)"
            )
        inverse, distinct = _encode_typed(value_type, raw)
        codes[positions[typed_rows]] = inverse + len(values)
        values.extend(distinct)
    return ValueColumn(codes, values)


def _encode_typed(value_type: str, raw: pd.Series) -> tuple[np.ndarray, list[ContextValue]]:
    if value_type == "unicode":
        inverse, uniques = pd.factorize(raw.astype(object))
        return inverse, coerce_strings(str(u) for u in uniques)
    if value_type == "bool":
        flags = raw.astype(bool).to_numpy()
        return flags.astype(np.int64), [False, True]
    if value_type == "int":
        try:
            numbers = raw.astype("Int64").to_numpy(dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise InvalidEnvironmentInput(f"integer_value holds a non-integer: {exc}") from None
        uniques, inverse = np.unique(numbers, return_inverse=True)
        return inverse, uniques.tolist()
    # Floats are told apart by bit pattern: -0.0 and 0.0 compare equal but print differently,
    # and REGEX and PERCENTAGE_SPLIT read the printed form.
    bits = raw.to_numpy(dtype=np.float64).view(np.int64)
    uniques, inverse = np.unique(bits, return_inverse=True)
    return inverse, uniques.view(np.float64).tolist()
