"""Building the Flagsmith-shaped traits frame from Python values (tests, demos, small inputs).

Production sources produce the frame straight from the database; this helper infers
``value_type`` the way Flagsmith does when a trait is set through its API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from membership_pipeline.evaluation.environment_data import TRAIT_COLUMNS
from membership_pipeline.evaluation.errors import InvalidEnvironmentInput

TraitValue = bool | int | float | str


def traits_frame(traits_by_identity: Mapping[int, Mapping[str, TraitValue]]) -> pd.DataFrame:
    """``{identity id: {trait key: value}}`` → a frame with :data:`TRAIT_COLUMNS`."""
    return traits_frame_from_rows(
        (identity_id, key, value)
        for identity_id, traits in traits_by_identity.items()
        for key, value in traits.items()
    )


def traits_frame_from_rows(rows: Iterable[tuple[int, str, TraitValue]]) -> pd.DataFrame:
    records: list[tuple[object, ...]] = []
    for identity_id, key, value in rows:
        # bool before int: True is an int in Python, but a "bool" trait in Flagsmith.
        if isinstance(value, bool):
            records.append((identity_id, key, "bool", None, None, None, value))
        elif isinstance(value, int):
            records.append((identity_id, key, "int", None, value, None, None))
        elif isinstance(value, float):
            records.append((identity_id, key, "float", None, None, value, None))
        elif isinstance(value, str):
            records.append((identity_id, key, "unicode", value, None, None, None))
        else:
            raise InvalidEnvironmentInput(
                f"trait {key!r} of identity {identity_id}: unsupported value type "
                f"{type(value).__name__}"
            )
    columns = list(zip(*records, strict=True)) if records else [()] * len(TRAIT_COLUMNS)
    # Column by column with explicit dtypes: going through a float column would round
    # integers beyond 2**53.
    dtypes = ("int64", object, object, object, "Int64", "float64", "boolean")
    return pd.DataFrame(
        {
            name: pd.array(list(values), dtype=dtype)
            for name, values, dtype in zip(TRAIT_COLUMNS, columns, dtypes, strict=True)
        }
    )
