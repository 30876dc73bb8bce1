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

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from membership_pipeline.evaluation.context_values import (
    ContextValue,
    coerce_string,
    coerce_string_array,
)
from membership_pipeline.evaluation.errors import InvalidEnvironmentInput
from membership_pipeline.evaluation.hash_texts import HashTexts
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
        self,
        environment: EnvironmentRef,
        identities: pd.DataFrame,
        traits: pd.DataFrame,
        trait_keys: Collection[str] | None = None,
    ) -> None:
        """``trait_keys``: the only trait keys to read (None: all); rows of other keys can
        change no answer, so they are neither validated nor encoded."""
        self.environment = environment
        frame = _validated_identities(identities)
        self.ids: np.ndarray = frame["id"].to_numpy(dtype=np.uint32)
        # Strings stay as given (Arrow-backed from the source) until a condition needs them.
        self._identifiers = frame["identifier"]
        self._explicit_keys = frame.get("key")
        self.trait_columns: dict[str, ValueColumn] = _trait_columns(
            _only_keys(traits, trait_keys), self
        )

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
    def _identifier_strings(self) -> pa.Array:
        return _arrow_strings(self._identifiers)

    @cached_property
    def identity_key_strings(self) -> pa.Array:
        """Raw percentage-split keys, as flag-engine enriches them: the given key, or where it
        is missing or empty, ``"{environment key}_{identifier}"``."""
        composite = pc.binary_join_element_wise(
            f"{self.environment.key}_", self._identifier_strings, ""
        )
        if self._explicit_keys is None:
            return composite
        given = pc.fill_null(_arrow_strings(self._explicit_keys), "")
        return pc.if_else(pc.equal(given, ""), composite, given)

    @cached_property
    def identity_key_texts(self) -> HashTexts:
        if self._explicit_keys is None:  # every key is composite: hash the shared part once
            return HashTexts.from_strings(
                self._identifier_strings, shared_prefix=f"{self.environment.key}_"
            )
        return HashTexts.from_strings(self.identity_key_strings)

    @cached_property
    def identity_key_column(self) -> ValueColumn:
        return ValueColumn(
            np.arange(self.size, dtype=np.int32), coerce_string_array(self.identity_key_strings)
        )

    @cached_property
    def identifier_column(self) -> ValueColumn:
        return ValueColumn(
            np.arange(self.size, dtype=np.int32),
            coerce_string_array(self._identifier_strings),
        )

    def environment_constant(self, field: str) -> ValueColumn:
        raw = self.environment.key if field == "key" else self.environment.name
        return ValueColumn.constant(self.size, coerce_string(raw))

    def trait_column(self, trait_key: str) -> ValueColumn:
        column = self.trait_columns.get(trait_key)
        return column if column is not None else ValueColumn.constant(self.size, None)


def _only_keys(traits: pd.DataFrame, trait_keys: Collection[str] | None) -> pd.DataFrame:
    if trait_keys is None or "trait_key" not in traits.columns:
        return traits
    wanted = traits["trait_key"].isin(list(trait_keys)).to_numpy()
    return traits if wanted.all() else traits[wanted]


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


def _arrow_strings(values: pd.Series) -> pa.Array:
    """A column as Arrow strings: zero-copy when it is Arrow-backed already; other values are
    turned into text by Python's ``str``, as flag-engine would."""
    array = pa.array(values.array if values.dtype == "str" else values.astype(str), pa.string())
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


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
    # factorize works on the codes of categoricals and in Arrow for Arrow strings: no Python
    # string per row.
    key_codes, key_names = pd.factorize(traits["trait_key"])
    if (key_codes < 0).any():
        raise InvalidEnvironmentInput("a trait row has a null trait_key")
    type_codes, type_names = pd.factorize(traits["value_type"])
    unknown_types = set(type_names) - set(VALUE_COLUMN_BY_TYPE)
    if (type_codes < 0).any():
        unknown_types.add(None)
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
            traits, rows, type_codes[rows], list(type_names), positions, size
        )
    return columns


def _one_trait_column(
    traits: pd.DataFrame,
    rows: np.ndarray,
    type_codes: np.ndarray,
    type_names: list[str],
    positions: np.ndarray,
    size: int,
) -> ValueColumn:
    codes = np.full(size, -1, dtype=np.int32)
    values: list[ContextValue] = []
    for value_type, column_name in VALUE_COLUMN_BY_TYPE.items():
        if value_type not in type_names:
            continue
        typed_rows = rows[type_codes == type_names.index(value_type)]
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
        inverse, uniques = pd.factorize(raw)
        return inverse, coerce_string_array(_arrow_strings(pd.Series(uniques)))
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
