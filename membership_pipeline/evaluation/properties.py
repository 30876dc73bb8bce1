"""Which column a condition's ``property`` reads: a trait, or a JSONPath into the context.

flag-engine reads ``property`` as a trait key unless it starts with ``$.`` and compiles as an
RFC 9535 JSONPath; even then a trait with that literal key wins when the identity has one. The
paths are resolved against the evaluation context's shape (``$.environment.key|name``,
``$.identity.identifier|key``, ``$.identity.traits.<key>``); anything that lands on an object, or
on nothing, reads as ``None``. Paths into ``$.flags``, ``$.features`` or ``$.segments`` depend on
flag evaluation, which a membership bitmap cannot express, and are refused.
"""

from __future__ import annotations

import jsonpath_rfc9535
import numpy as np
from jsonpath_rfc9535.selectors import NameSelector

from membership_pipeline.evaluation.environment_data import EnvironmentData
from membership_pipeline.evaluation.value_column import ValueColumn

_UNSUPPORTED_ROOTS = frozenset({"flags", "features", "segments"})


class PropertyNotSupported(ValueError):
    """The property can be parsed but not evaluated as a per-identity column."""


def resolve_property(prop: str, environment: EnvironmentData) -> ValueColumn:
    names = context_path(prop)
    if names is None:
        return environment.trait_column(prop)
    column = _context_column(names, environment)
    if prop in environment.trait_columns:
        return _coalesce(environment.trait_columns[prop], column)
    return column


def trait_keys_read_by(prop: str) -> set[str]:
    """The trait keys a property can read: the key itself, or for a JSONPath the literal key
    (which wins where an identity has it) and ``$.identity.traits.<key>``. A property that
    cannot be evaluated reads nothing (its segment fails from the definition alone)."""
    try:
        names = context_path(prop)
    except PropertyNotSupported:
        return set()
    if names is None:
        return {prop}
    if len(names) == 3 and names[:2] == ["identity", "traits"] and isinstance(names[2], str):
        return {prop, names[2]}
    return {prop}


def context_path(prop: str) -> list[str | None] | None:
    """The names a JSONPath property selects (None: the property is a trait key). Raises
    ``PropertyNotSupported`` from the property alone, whatever the data, so a segment fails the
    same way on any subset of identities (a shard of a backfill, or all of them)."""
    if not prop.startswith("$."):
        return None
    try:
        query = jsonpath_rfc9535.compile(prop)
    except jsonpath_rfc9535.JSONPathSyntaxError:
        return None
    except jsonpath_rfc9535.JSONPathError as exc:
        raise PropertyNotSupported(f"JSONPath {prop!r} cannot be used: {exc}") from None
    if not query.singular_query():
        raise PropertyNotSupported(
            f"JSONPath {prop!r} can select several values; use a path to one value"
        )
    names = [
        selector.name if isinstance(selector, NameSelector) else None
        for segment in query.segments
        for selector in segment.selectors
    ]
    if names and names[0] in _UNSUPPORTED_ROOTS:
        raise PropertyNotSupported(
            f"JSONPath {prop!r} reads ${names[0]}, which depends on flag evaluation, "
            "not on the identity alone"
        )
    return names


def _context_column(names: list[str | None], environment: EnvironmentData) -> ValueColumn:
    match names:
        case ["environment", ("key" | "name") as field]:
            return environment.environment_constant(field)
        case ["identity", "identifier"]:
            return environment.identifier_column
        case ["identity", "key"]:
            return environment.identity_key_column
        case ["identity", "traits", str(trait_key)]:
            return environment.trait_column(trait_key)
        case _:
            # An object, an index into an object, or a missing member: not a context value.
            return ValueColumn.constant(environment.size, None)


def _coalesce(first: ValueColumn, second: ValueColumn) -> ValueColumn:
    """``first`` where it has a value, otherwise ``second``."""
    shifted = np.where(second.codes >= 0, second.codes + len(first.values), -1)
    codes = np.where(first.codes >= 0, first.codes, shifted).astype(np.int32)
    return ValueColumn(codes, [*first.values, *second.values])
