"""Context values: what a trait or property looks like to Flagsmith's condition matchers.

flag-engine coerces every value it reads (``map_any_value_to_context_value``): a string that is an
integer literal becomes an ``int``, a decimal literal a ``float``; ``bool``, ``int`` and ``float``
stay as they are. Everything downstream compares these coerced values, so we coerce the same way —
once per distinct value, never per identity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ContextValue = None | bool | int | float | str

# flag-engine's patterns, ``-?[0-9]+`` (int) and ``-?[0-9]+\.[0-9]+`` (float), in one pass;
# ``[0-9]`` is ASCII only, so "٣" stays a string.
_NUMBER_LITERAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_NUMBER_LITERAL_ANCHORED = f"^{_NUMBER_LITERAL.pattern}$"


def coerce_string(value: str) -> ContextValue:
    literal = _NUMBER_LITERAL.fullmatch(value)
    if literal is None:
        return value
    return int(value) if literal.group(1) is None else float(value)


def coerce_strings(values: Iterable[str]) -> list[ContextValue]:
    match = _NUMBER_LITERAL.fullmatch
    return [value if match(value) is None else coerce_string(value) for value in values]


def coerce_string_array(strings: pa.Array) -> list[ContextValue]:
    """``coerce_strings`` of Arrow strings: RE2 finds the number literals (the same regular
    language, anchored at both ends), so Python only looks at those."""
    values: list[ContextValue] = strings.to_pylist()
    literal = pc.match_substring_regex(strings, _NUMBER_LITERAL_ANCHORED)
    for position in np.flatnonzero(literal.to_numpy(zero_copy_only=False)):
        values[position] = coerce_string(values[position])  # type: ignore[arg-type]
    return values
