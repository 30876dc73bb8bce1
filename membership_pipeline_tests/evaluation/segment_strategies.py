"""Hypothesis strategies for environments and Flagsmith segment trees over every operator.

Values are drawn from pools that sit on the coercion boundaries flag-engine cares about: numeric
strings (int / float literals, leading zeros, exponent forms that stay strings), semver strings,
booleans and their spellings, unicode, empty strings, and floats including -0.0, inf and nan.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from hypothesis import strategies as st

TRAIT_KEYS = ["plan", "age", "version", "score", "ключ", "$.identity.identifier"]

STRING_POOL = [
    "",
    "pro",
    "free",
    "Pro",
    "pro-trial",
    "42",
    "-7",
    "007",
    "0",
    "-0",
    "3.14",
    "-2.50",
    "1e5",
    " 5",
    "1_000",
    "True",
    "false",
    "1.2.3",
    "1.2.3-beta",
    "2.0.0+build.1",
    "1.10.0",
    "1.2",
    "v1.2.3",
    "café",
    "日本",
    "a,b",
    "[1, 2]",
    "None",
    "٣",
]
NUMBER_POOL = [0, 1, -1, 2, 3, 7, 10, 17, 18, 42, 100, 2**31, 2**63 - 1, -(2**63)]
FLOAT_POOL = [0.0, -0.0, 0.5, 1.5, 2.5, -3.25, 3.14, 42.0, 1e300, float("inf"), float("-inf")]

trait_values = st.one_of(
    st.booleans(),
    st.sampled_from(NUMBER_POOL),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from(FLOAT_POOL),
    st.floats(allow_nan=False, allow_infinity=True, width=64),
    st.sampled_from(STRING_POOL),
    st.sampled_from(["99999999999999999999999", "-123456789012345678901234567890"]),
    st.text(max_size=6),
)

SCALAR_VALUES = [
    *STRING_POOL,
    None,
    "1.2.3:semver",
    "1.2.0:semver",
    "2.0.0-rc.1:semver",
    "bad:semver",
    "beta:semver",
    "1.10.0:semver",
    "18",
    "17.5",
    "inf",
    "nan",
    "-inf",
    "1e300",
    "2**63",
    "9223372036854775808",
    "-9223372036854775809",
]
comparison_values = st.one_of(st.sampled_from(SCALAR_VALUES), st.text(max_size=4))

in_values = st.one_of(
    st.lists(
        st.one_of(
            st.sampled_from(STRING_POOL), st.integers(-3, 50), st.booleans(), st.floats(-2, 2)
        ),
        max_size=5,
    ),
    st.sampled_from(
        ["pro,free", "42,7,-7", '["pro", 42, true]', "[1, 2", "[]", "", "True,1.5", "[1.0, 2]"]
    ),
)
modulo_values = st.sampled_from(
    [
        "2|0",
        "2|1",
        "3|1",
        "2.5|0.5",
        "1.5|0",
        "-2|-1",
        "inf|5",
        "nan|0",
        "2|x",
        "2",
        "3|1|2",
        "",
        None,
    ]
)
split_values = st.sampled_from(
    ["0", "10", "33.3", "50", "99.99", "100", " 50 ", "abc", "nan", "-1"]
)
regex_values = st.sampled_from(
    ["^p", "pro$", "[0-9]+", ".*", "1\\.2", "True", "(?i)PRO", "^-?\\d+$", "", "None", "日"]
)
properties = st.sampled_from(
    [
        *TRAIT_KEYS,
        "missing",
        "",
        "$.identity.identifier",
        "$.identity.key",
        "$.environment.name",
        "$.environment.key",
        "$.identity.traits.plan",
        "$.identity.traits['ключ']",
        "$.identity.traits",
        "$.identity",
        "$.nothing.here",
        "$.not a path",
    ]
)

COMPARISON_OPERATORS = [
    "EQUAL",
    "NOT_EQUAL",
    "GREATER_THAN",
    "GREATER_THAN_INCLUSIVE",
    "LESS_THAN",
    "LESS_THAN_INCLUSIVE",
    "CONTAINS",
    "NOT_CONTAINS",
]


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    operator = draw(
        st.sampled_from(
            [
                *COMPARISON_OPERATORS,
                "REGEX",
                "IN",
                "IS_SET",
                "IS_NOT_SET",
                "MODULO",
                "PERCENTAGE_SPLIT",
            ]
        )
    )
    prop = draw(properties)
    if operator == "PERCENTAGE_SPLIT":
        return {
            "operator": operator,
            "property": draw(st.sampled_from(["", None, "plan", "age", "$.identity.identifier"])),
            "value": draw(split_values),
        }
    value_strategy = {
        "REGEX": regex_values,
        "IN": in_values,
        "MODULO": modulo_values,
        "IS_SET": st.sampled_from([None, ""]),
        "IS_NOT_SET": st.sampled_from([None, ""]),
    }.get(operator, comparison_values)
    return {"operator": operator, "property": prop, "value": draw(value_strategy)}


rule_types = st.sampled_from(["ALL", "ANY", "NONE"])


def rules(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    optional: dict[str, st.SearchStrategy[Any]] = {
        "conditions": st.one_of(st.none(), st.lists(conditions(), max_size=3))
    }
    if depth > 0:
        optional["rules"] = st.one_of(st.none(), st.lists(rules(depth - 1), max_size=2))
    return st.fixed_dictionaries({"type": rule_types}, optional=optional)


@st.composite
def segments(draw: st.DrawFn, count: int = 6) -> list[dict[str, Any]]:
    keys = draw(st.lists(st.integers(1, 10_000), min_size=1, max_size=count, unique=True))
    return [
        {"key": str(key), "name": f"segment {key}", "rules": draw(st.lists(rules(), max_size=3))}
        for key in keys
    ]


IDENTIFIER_POOL = ["alice", "bob@example.com", "123", "1.5", "007", "Zoë", "user_9", "", "True"]


@st.composite
def environments(draw: st.DrawFn) -> tuple[dict[str, str], pd.DataFrame, dict[int, dict[str, Any]]]:
    environment = {
        "key": draw(st.sampled_from(["env_abc", "123", "ÉnvKey"])),
        "name": draw(st.sampled_from(["Production", "42", "1.2.3", ""])),
    }
    ids = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=25, unique=True))
    identifiers = [
        draw(st.one_of(st.sampled_from(IDENTIFIER_POOL), st.text(max_size=8))) for _ in ids
    ]
    keys = [
        draw(st.sampled_from([None, "", str(identity_id), f"k-{identity_id}"]))
        for identity_id in ids
    ]
    frame = pd.DataFrame({"id": ids, "identifier": identifiers, "key": keys})
    traits = {
        identity_id: draw(st.dictionaries(st.sampled_from(TRAIT_KEYS), trait_values, max_size=5))
        for identity_id in ids
    }
    return environment, frame, traits
