"""Flagsmith's condition operators, decided once per distinct context value.

``decide(condition, column)`` returns one boolean per entry of ``column.values``. Each operator
has the exact semantics of flag-engine's matchers (coercion of the condition value to the type of
the context value, ``:semver`` values, IN parsing, MODULO's ``divisor|remainder``). Numbers and
plain strings are decided with numpy over a whole partition of the column; the rare remaining
cases (booleans, integers beyond int64, semver comparisons) go through the scalar matcher, which
mirrors flag-engine's code path step by step.

Where flag-engine raises instead of answering, we answer "no match": MODULO by zero
(ZeroDivisionError), IN and PERCENTAGE_SPLIT with a null value (AttributeError / TypeError).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import semver

from membership_pipeline.evaluation.context_values import ContextValue
from membership_pipeline.evaluation.re2_patterns import regex_matches
from membership_pipeline.evaluation.segment_model import Condition, ConditionValue, Operator
from membership_pipeline.evaluation.value_column import TypedValues, ValueColumn

_COMPARISONS: dict[Operator, Callable[[Any, Any], Any]] = {
    Operator.EQUAL: operator.eq,
    Operator.NOT_EQUAL: operator.ne,
    Operator.GREATER_THAN: operator.gt,
    Operator.GREATER_THAN_INCLUSIVE: operator.ge,
    Operator.LESS_THAN: operator.lt,
    Operator.LESS_THAN_INCLUSIVE: operator.le,
    Operator.CONTAINS: operator.contains,
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class PreparedCondition:
    """A condition with its value parsed once, the way flag-engine reads it per identity."""

    operator: Operator
    value: ConditionValue
    in_values: frozenset[str] | None = None
    pattern: re.Pattern[str] | None = None
    modulo: tuple[float, float] | None = None

    @classmethod
    def of(cls, condition: Condition) -> PreparedCondition:
        op, value = condition.operator, condition.value
        if op is Operator.IN:
            return cls(op, value, in_values=_in_values(value))
        if op is Operator.REGEX:
            return cls(op, value, pattern=re.compile(str(value)))
        if op is Operator.MODULO:
            return cls(op, value, modulo=_modulo_operands(value))
        return cls(op, value)

    @property
    def when_missing(self) -> bool:
        """The answer for an identity without the property (context value ``None``)."""
        return self.operator is Operator.IS_NOT_SET


def decide(condition: PreparedCondition, column: ValueColumn) -> np.ndarray:
    """One boolean per distinct value of ``column`` (PERCENTAGE_SPLIT is decided elsewhere)."""
    decided = np.zeros(len(column.values), dtype=bool)
    for kind, typed in column.by_type.items():
        vectorised = _VECTORISED.get(kind)
        result = vectorised(condition, typed) if vectorised else None
        if result is None:
            result = np.fromiter(
                (matches(condition, value) for value in typed.array.tolist()),
                dtype=bool,
                count=len(typed.array),
            )
        decided[typed.positions] = result
    return decided


def matches(condition: PreparedCondition, context_value: ContextValue) -> bool:
    """flag-engine's ``context_matches_condition`` for one non-null context value."""
    op = condition.operator
    if op is Operator.IS_SET:
        return True
    if op is Operator.IS_NOT_SET:
        return False
    if op is Operator.IN:
        if condition.in_values is None:
            return False
        if type(context_value) is int:
            context_value = str(context_value)
        return context_value in condition.in_values
    if op is Operator.NOT_CONTAINS:
        return isinstance(context_value, str) and str(condition.value) not in context_value
    if op is Operator.REGEX:
        assert condition.pattern is not None
        return condition.pattern.match(str(context_value)) is not None
    if op is Operator.MODULO:
        return _modulo_matches(condition.modulo, context_value)
    if op in _COMPARISONS:
        return _typed_comparison(_COMPARISONS[op], condition.value, context_value)
    raise ValueError(f"{op} is not decided per value")


def _typed_comparison(compare: Callable[[Any, Any], Any], value: ConditionValue, cv: Any) -> bool:
    # flag-engine's _context_value_typed: cast the condition value to the context value's type.
    try:
        if isinstance(cv, str) and _is_semver(value):
            cv = semver.Version.parse(cv)
        match = _cast_like(cv, value)
        if isinstance(cv, semver.Version) and compare is not operator.contains:
            # flag-engine compares the Version with the string, which semver parses: parsed
            # here (semver 3 deprecates comparing with strings); unparsable: no match.
            match = semver.Version.parse(match)
        return bool(compare(cv, match))
    except (TypeError, ValueError):
        return False


def _cast_like(context_value: Any, value: Any) -> Any:
    if type(context_value) is bool:
        return value not in ("False", "false")
    if type(context_value) is int:
        return int(value)
    if type(context_value) is float:
        return float(value)
    if isinstance(context_value, semver.Version):
        return str(value)[:-7]
    return str(value)


def _is_semver(value: ConditionValue) -> bool:
    return isinstance(value, str) and value[-7:] == ":semver"


def _in_values(value: ConditionValue) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        return frozenset(value)
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return frozenset(value.split(","))
        return frozenset(item if type(item) is str else str(item) for item in parsed)
    return frozenset(value.split(","))


def _modulo_operands(value: ConditionValue) -> tuple[float, float] | None:
    if not value or not isinstance(value, str):
        return None
    try:
        divisor, remainder = value.split("|")
        return float(divisor), float(remainder)
    except ValueError:
        return None


def _modulo_matches(operands: tuple[float, float] | None, context_value: Any) -> bool:
    if operands is None or not isinstance(context_value, int | float):
        return False
    divisor, remainder = operands
    try:
        return bool(context_value % divisor == remainder)
    except (ZeroDivisionError, OverflowError):
        return False


# Vectorised kernels: return None to fall back to the scalar matcher for that partition.


def _int_kernel(condition: PreparedCondition, typed: TypedValues) -> np.ndarray | None:
    values = typed.array
    op = condition.operator
    if op in (Operator.IS_SET,):
        return np.ones(len(values), dtype=bool)
    if op in (Operator.IS_NOT_SET, Operator.NOT_CONTAINS, Operator.CONTAINS):
        return np.zeros(len(values), dtype=bool)
    if op is Operator.IN:
        wanted = [
            int(item)
            for item in condition.in_values or ()
            if _CANONICAL_INT.fullmatch(item) and _INT64_MIN <= int(item) <= _INT64_MAX
        ]
        return np.isin(values, np.array(wanted, dtype=np.int64))
    if op is Operator.MODULO:
        return _modulo_kernel(condition.modulo, values.astype(np.float64))
    if op in _COMPARISONS:
        try:
            target = int(condition.value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return np.zeros(len(values), dtype=bool)
        if not _INT64_MIN <= target <= _INT64_MAX:
            # numpy cannot hold it; Python ints compare exactly.
            return _COMPARISONS[op](values.astype(object), target).astype(bool)
        return np.asarray(_COMPARISONS[op](values, np.int64(target)), dtype=bool)
    return None


def _float_kernel(condition: PreparedCondition, typed: TypedValues) -> np.ndarray | None:
    values = typed.array
    op = condition.operator
    if op is Operator.IS_SET:
        return np.ones(len(values), dtype=bool)
    if op in (Operator.IS_NOT_SET, Operator.NOT_CONTAINS, Operator.CONTAINS, Operator.IN):
        return np.zeros(len(values), dtype=bool)
    if op is Operator.MODULO:
        return _modulo_kernel(condition.modulo, values)
    if op in _COMPARISONS:
        try:
            target = float(condition.value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return np.zeros(len(values), dtype=bool)
        return np.asarray(_COMPARISONS[op](values, target), dtype=bool)
    return None


def _str_kernel(condition: PreparedCondition, typed: TypedValues) -> np.ndarray | None:
    values = typed.array
    op = condition.operator
    if op is Operator.IS_SET:
        return np.ones(len(values), dtype=bool)
    if op in (Operator.IS_NOT_SET, Operator.MODULO):
        return np.zeros(len(values), dtype=bool)
    if op in _COMPARISONS and _is_semver(condition.value):
        return None  # parses each value as semver: the scalar path
    text = str(condition.value)
    # Substring search is the same on UTF-8 bytes as on code points: Arrow decides it for every
    # value at once, as it decides REGEX where RE2 answers as Python does.
    if op is Operator.CONTAINS:
        return _arrow_bools(pc.match_substring(typed.arrow_texts, text))
    if op is Operator.NOT_CONTAINS:
        return ~_arrow_bools(pc.match_substring(typed.arrow_texts, text))
    if op is Operator.REGEX:
        decided = regex_matches(text, typed.re2_texts)
        if decided is not None:
            return decided
    # One comprehension per distinct value set: these are the high-cardinality string paths
    # (emails, identifiers), where the generic scalar dispatch would cost several times more.
    strings: list[str] = values.tolist()
    if op is Operator.REGEX:
        assert condition.pattern is not None
        match = condition.pattern.match
        return _bools([match(value) is not None for value in strings])
    if op is Operator.IN:
        wanted = condition.in_values or frozenset()
        return _bools([value in wanted for value in strings])
    if op in _COMPARISONS:
        return np.asarray(_COMPARISONS[op](values, text), dtype=bool)
    return None


def _bools(flags: list[bool]) -> np.ndarray:
    return np.array(flags, dtype=bool)


def _arrow_bools(flags: pa.Array) -> np.ndarray:
    return flags.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _modulo_kernel(operands: tuple[float, float] | None, values: np.ndarray) -> np.ndarray | None:
    if operands is None:
        return np.zeros(len(values), dtype=bool)
    divisor, remainder = operands
    if divisor == 0 or not math.isfinite(divisor):
        return None  # the scalar path has Python's exact inf / nan / zero behaviour
    # np.remainder follows Python's float % (sign of the divisor), value for value; an infinite
    # value gives nan in both, which numpy also warns about.
    with np.errstate(invalid="ignore"):
        return np.remainder(values, divisor) == remainder


_VECTORISED: dict[str, Callable[[PreparedCondition, TypedValues], np.ndarray | None]] = {
    "int": _int_kernel,
    "float": _float_kernel,
    "str": _str_kernel,
}
