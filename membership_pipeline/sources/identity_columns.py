"""Identity and trait rows as Arrow tables → the engine's frames, by Flagsmith's rules.

Both databases' reads end here as Arrow tables, so the rules are applied once, column-wise:

* a trait row whose ``value_type`` is unknown or whose value column is null has no value
  (Flagsmith's ``Trait.trait_value``): it is dropped and counted;
* ``environments_identity.system_traits`` (a JSON object) overrides user traits of the same key;
* only the trait keys the segments read are kept, when the caller names them.

The frames keep strings in Arrow (pandas' ``str`` dtype) and keys and types as categoricals, so
no Python object is made per row.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from membership_pipeline.evaluation.environment_data import TRAIT_COLUMNS, VALUE_COLUMN_BY_TYPE
from membership_pipeline.evaluation.trait_frames import traits_frame_from_rows
from membership_pipeline.sources.range_readers import TRAIT_SCHEMA

_PANDAS_TYPES = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


@dataclass
class IdentityRange:
    """The identities of one environment (or of one id range of it), and their traits."""

    identities: pd.DataFrame
    traits: pd.DataFrame
    unreadable_traits: int = 0
    overridden_by_system_traits: int = 0
    # When the identity rows were not read (known ids): the range's count, largest and sum of
    # ids, as the source has them.
    checksum: tuple[int, int, int] | None = None


def identity_range(
    identities: pa.Table,
    traits: pa.Table,
    *,
    composite_hash_key: bool,
    trait_keys: Collection[str] | None,
) -> IdentityRange:
    """``identities`` (``id``, ``identifier``[, ``system_traits`` JSON]) ordered by id, and
    ``traits`` in :data:`TRAIT_SCHEMA`."""
    readable = _readable(traits)
    unreadable = len(traits) - int(pc.sum(readable).as_py() or 0)
    if unreadable:  # a filter copies every column: only when it drops something
        traits = traits.filter(readable)
    overriding = _system_traits(identities, trait_keys)
    overridden = 0
    if len(overriding):
        keep = _not_overridden(traits, overriding)
        overridden = len(traits) - int(np.count_nonzero(keep))
        traits = pa.concat_tables([traits.filter(pa.array(keep)), overriding])
    return IdentityRange(
        identities=_identity_frame(identities, composite_hash_key),
        traits=_trait_frame(traits),
        unreadable_traits=unreadable,
        overridden_by_system_traits=overridden,
    )


def _readable(traits: pa.Table) -> pa.ChunkedArray:
    readable = pa.chunked_array([pa.array(np.zeros(len(traits), dtype=bool))])
    for value_type, column in VALUE_COLUMN_BY_TYPE.items():
        typed = pc.and_(pc.equal(traits["value_type"], value_type), pc.is_valid(traits[column]))
        readable = pc.or_(readable, pc.fill_null(typed, False))
    return readable


def _system_traits(identities: pa.Table, trait_keys: Collection[str] | None) -> pa.Table:
    """System traits as trait rows, typed as Flagsmith types a value set through its API."""
    if "system_traits" not in identities.column_names:
        return TRAIT_SCHEMA.empty_table()
    present = identities.filter(pc.is_valid(identities["system_traits"]))
    rows: list[tuple[int, str, Any]] = []
    for identity_id, raw in zip(
        present["id"].to_pylist(), present["system_traits"].to_pylist(), strict=True
    ):
        values = json.loads(raw) if isinstance(raw, str) else raw
        if isinstance(values, dict):
            rows.extend(
                (identity_id, str(key), value)
                for key, value in values.items()
                if value is not None and (trait_keys is None or str(key) in trait_keys)
            )
    if not rows:
        return TRAIT_SCHEMA.empty_table()
    frame = traits_frame_from_rows(rows)
    return pa.Table.from_pandas(frame, preserve_index=False).cast(TRAIT_SCHEMA)


def _not_overridden(traits: pa.Table, overriding: pa.Table) -> np.ndarray:
    """Per trait row: True unless a system trait of its identity has its key. Only the rows of
    identities that have system traits (a few) are looked at one by one."""
    keep = np.ones(len(traits), dtype=bool)
    candidates = np.flatnonzero(
        pc.is_in(traits["identity_id"], value_set=overriding["identity_id"].combine_chunks())
        .to_numpy(zero_copy_only=False)
        .astype(bool)
    )
    if not len(candidates):
        return keep
    pairs = set(
        zip(overriding["identity_id"].to_pylist(), overriding["trait_key"].to_pylist(), strict=True)
    )
    subset = traits.take(pa.array(candidates))
    hit = [
        pair in pairs
        for pair in zip(
            subset["identity_id"].to_pylist(), subset["trait_key"].to_pylist(), strict=True
        )
    ]
    keep[candidates[np.array(hit, dtype=bool)]] = False
    return keep


def _identity_frame(identities: pa.Table, composite_hash_key: bool) -> pd.DataFrame:
    ids = identities["id"].to_numpy().astype(np.int64, copy=False)
    frame = pd.DataFrame({"id": ids, "identifier": _strings(identities["identifier"])}, copy=False)
    if not composite_hash_key:  # Flagsmith core identities hash str(id)
        frame["key"] = _strings(pc.cast(identities["id"], pa.string()))
    return frame


def _trait_frame(traits: pa.Table) -> pd.DataFrame:
    columns: dict[str, Any] = {
        "identity_id": traits["identity_id"].to_numpy().astype(np.int64, copy=False),
        "trait_key": _categorical(traits["trait_key"]),
        "value_type": _categorical(traits["value_type"]),
        "string_value": _strings(traits["string_value"]),
        "integer_value": traits["integer_value"].to_pandas(types_mapper=_PANDAS_TYPES.get),
        "float_value": traits["float_value"].to_numpy().astype(np.float64, copy=False),
        "boolean_value": traits["boolean_value"].to_pandas(types_mapper=_PANDAS_TYPES.get),
    }
    return pd.DataFrame(
        {name: pd.Series(values).reset_index(drop=True) for name, values in columns.items()},
        columns=list(TRAIT_COLUMNS),
    )


def _strings(column: pa.ChunkedArray) -> pd.Series:
    """Arrow strings as pandas' Arrow-backed ``str`` dtype: no Python object per value."""
    return pd.Series(pd.array(column.combine_chunks(), dtype=pd.StringDtype("pyarrow", np.nan)))


def _categorical(column: pa.ChunkedArray) -> pd.Categorical:
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    # One dictionary for every chunk (each key query brings its own), then the codes as is.
    unified = column.unify_dictionaries()
    if not unified.num_chunks:
        return pd.Categorical([])
    codes = np.concatenate(
        [c.indices.fill_null(-1).to_numpy(zero_copy_only=False) for c in unified.chunks]
    )
    return pd.Categorical.from_codes(
        codes.astype(np.int32, copy=False),
        categories=pd.Index(unified.chunk(0).dictionary.to_pylist(), dtype=object),
    )
