"""A synthetic Flagsmith environment at any size, deterministic by seed.

Shaped like production data: a handful of low-cardinality traits (plan, country, app version),
some numeric ones, a high-cardinality email, numeric strings that Flagsmith coerces, missing
traits; and a segment catalogue whose operator mix includes percentage splits, regexes, semver
comparisons and nested ALL / ANY / NONE rules. Built with numpy: a million identities take
seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from membership_pipeline.evaluation.environment_data import TRAIT_COLUMNS

PLANS = np.array(["free", "pro", "enterprise", "trial", "Pro"], dtype=object)
PLAN_WEIGHTS = [0.55, 0.25, 0.05, 0.13, 0.02]
_COUNTRY_CODES = "US GB DE FR ES IT NL SE NO DK FI PL PT IE BE AT CH CZ HU RO GR TR IN JP KR CN"
COUNTRIES = np.array([*_COUNTRY_CODES.split(" "), "BR", "MX", "CA", "AU"], dtype=object)
APP_VERSIONS = np.array(
    [f"{major}.{minor}.{patch}" for major in (1, 2, 3) for minor in range(5) for patch in (0, 1, 2)]
    + ["3.0.0-beta.1", "3.1.0-rc.2", "2.4.3+build.7"],
    dtype=object,
)
EMAIL_DOMAINS = np.array(["example.com", "example.org", "mail.test", "corp.test"], dtype=object)

# (trait key, share of identities that have it)
TRAIT_PRESENCE = {
    "plan": 0.8,
    "country": 0.5,
    "app_version": 0.4,
    "age": 0.3,
    "sessions": 0.3,
    "score": 0.2,
    "beta_opt_in": 0.2,
    "email": 0.2,
    "signup_day": 0.1,
}
# Keys of the traits no segment reads (``--unreferenced-traits``), and their string values.
UNREFERENCED_TRAIT_PREFIX = "attribute_"
_UNREFERENCED_STRINGS = np.array([f"value-{i}" for i in range(1000)], dtype=object)


@dataclass(frozen=True)
class SyntheticEnvironment:
    environment: dict[str, str]
    identities: pd.DataFrame
    traits: pd.DataFrame
    segments: list[dict[str, Any]]


def synthetic_environment(
    identities: int,
    segments: int,
    *,
    seed: int = 0,
    environment_key: str = "synthetic_env",
    unreferenced_traits: int = 0,
) -> SyntheticEnvironment:
    """``unreferenced_traits`` more traits on every identity, of keys no segment reads (as real
    Flagsmith identities carry): the referenced data stay the same for any such count."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(identities * 2, size=identities, replace=False)).astype(np.int64)
    frame = pd.DataFrame(
        {
            "id": ids,
            "identifier": np.char.add("user-", ids.astype(str)).astype(object),
            "key": ids.astype(str).astype(object),  # Flagsmith core identities hash str(id)
        }
    )
    return SyntheticEnvironment(
        environment={"key": environment_key, "name": f"Synthetic {environment_key}"},
        identities=frame,
        traits=_traits(rng, ids, unreferenced_traits, seed),
        segments=_segments(rng, segments),
    )


def synthetic_segments(
    count: int, *, seed: int = 0, distinct: bool = False
) -> list[dict[str, Any]]:
    """A segment catalogue alone (keys "1000", "1001", ...). ``distinct``: no two segments
    with the same rules (a definition drawn again is drawn anew), as a demo's catalogue should
    be; the benchmarks keep the plain weighted draw, duplicates and all, so their workload stays
    the one their figures were measured on."""
    return _segments(np.random.default_rng(seed), count, distinct=distinct)


# Draws of a segment whose rules were drawn before, before a distinct catalogue keeps one anyway
# (only a catalogue larger than every shape's variants runs out).
DISTINCT_ATTEMPTS = 50


def _segments(
    rng: np.random.Generator, count: int, *, distinct: bool = False
) -> list[dict[str, Any]]:
    # The first segments take each shape of the catalogue once, so that any catalogue of at
    # least that many segments uses every operator; the rest are drawn by weight.
    segments: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(count):
        segment = _segment(rng, 1000 + i, shape=i)
        for _ in range(DISTINCT_ATTEMPTS if distinct else 0):
            if _rules_of(segment) not in seen:
                break
            segment = _segment(rng, 1000 + i, shape=i)
        seen.add(_rules_of(segment))
        segments.append(segment)
    return _named_uniquely(segments)


def _rules_of(segment: dict[str, Any]) -> str:
    return json.dumps(segment["rules"], sort_keys=True)


def _named_uniquely(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A name drawn again gets the number of its drawing, as a dashboard user would name a
    second segment like the first ("no app version (2)"): one project's names are unique."""
    seen: dict[str, int] = {}
    taken = {segment["name"] for segment in segments}
    for segment in segments:
        name = segment["name"]
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            while f"{name} ({seen[name]})" in taken:
                seen[name] += 1
            segment["name"] = f"{name} ({seen[name]})"
            taken.add(segment["name"])
    return segments


def _traits(
    rng: np.random.Generator, ids: np.ndarray, unreferenced: int, seed: int
) -> pd.DataFrame:
    parts = []
    for key, share in TRAIT_PRESENCE.items():
        owners = ids[rng.random(len(ids)) < share]
        parts.append(_trait_rows(key, owners, _trait_values(rng, key, owners)))
    # A stream of its own, so the referenced traits do not depend on how many others there are.
    extra = np.random.default_rng([seed, 1])
    for index in range(unreferenced):
        key = f"{UNREFERENCED_TRAIT_PREFIX}{index:02d}"
        parts.append(_trait_rows(key, ids, _unreferenced_values(extra, index, len(ids))))
    return pd.concat(parts, ignore_index=True)


def _unreferenced_values(rng: np.random.Generator, index: int, n: int) -> np.ndarray:
    """Values of one unreferenced trait: strings, ints, floats and booleans in turn."""
    match index % 4:
        case 0:
            return rng.choice(_UNREFERENCED_STRINGS, size=n)
        case 1:
            return rng.integers(0, 1_000_000, size=n)
        case 2:
            return np.round(rng.random(n) * 1000, 3)
        case _:
            return rng.random(n) < 0.5


def _trait_values(rng: np.random.Generator, key: str, owners: np.ndarray) -> np.ndarray:
    n = len(owners)
    if n == 0:
        return np.empty(0, dtype=object)
    match key:
        case "plan":
            return rng.choice(PLANS, size=n, p=PLAN_WEIGHTS)
        case "country":
            return rng.choice(COUNTRIES, size=n)
        case "app_version":
            return rng.choice(APP_VERSIONS, size=n)
        case "age":
            return rng.integers(13, 91, size=n)
        case "sessions":
            return rng.integers(0, 10_000, size=n)
        case "score":
            return np.round(rng.random(n) * 100, 2)
        case "beta_opt_in":
            return rng.random(n) < 0.4
        case "email":
            domains = rng.choice(EMAIL_DOMAINS, size=n)
            return (
                np.char.add(np.char.add("user", owners.astype(str)), "@").astype(object) + domains
            )
        case "signup_day":  # a numeric string: Flagsmith coerces it to an int
            days = rng.integers(0, 1500, size=n).astype("timedelta64[D]")
            stamps = np.datetime64("2022-01-01") + days
            return np.char.replace(stamps.astype(str), "-", "").astype(object)
    raise ValueError(key)


def _trait_rows(key: str, owners: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    n = len(owners)
    kind = {np.dtype(bool): "bool", np.dtype(np.int64): "int", np.dtype(np.float64): "float"}.get(
        values.dtype, "unicode"
    )
    nothing = pd.array([None] * n, dtype=object)
    return pd.DataFrame(
        {
            "identity_id": owners,
            "trait_key": np.full(n, key, dtype=object),
            "value_type": np.full(n, kind, dtype=object),
            "string_value": values if kind == "unicode" else nothing,
            "integer_value": pd.array(values if kind == "int" else [None] * n, dtype="Int64"),
            "float_value": values if kind == "float" else np.full(n, np.nan),
            "boolean_value": pd.array(values if kind == "bool" else [None] * n, dtype="boolean"),
        },
        columns=list(TRAIT_COLUMNS),
    )


def _condition(prop: str | None, operator: str, value: str | list[str] | None) -> dict[str, Any]:
    return {"property": prop, "operator": operator, "value": value}


def _rule(rule_type: str, *conditions: dict[str, Any], **nested: Any) -> dict[str, Any]:
    return {"type": rule_type, "conditions": list(conditions), **nested}


def _segment(rng: np.random.Generator, key: int, shape: int) -> dict[str, Any]:
    """One segment from a weighted catalogue of the shapes Flagsmith customers build."""
    c = _condition
    plan = str(rng.choice(PLANS[:4]))
    countries = [str(x) for x in rng.choice(COUNTRIES, size=int(rng.integers(2, 8)), replace=False)]
    version = str(rng.choice(APP_VERSIONS[:-3]))
    age = int(rng.integers(16, 70))
    split = f"{rng.integers(1, 100)}"
    domain = str(rng.choice(EMAIL_DOMAINS))
    # Drawn in the order the catalogue below used to draw them, so each seed gives the rules it
    # always gave.
    nth = int(rng.integers(2, 10))
    score = f"{rng.random() * 100:.1f}"
    month = int(rng.integers(1, 13))
    shown = ", ".join(countries[:3]) + ("…" if len(countries) > 3 else "")
    catalogue: list[tuple[float, str, list[dict[str, Any]]]] = [
        (0.12, f"plan is {plan}", [_rule("ALL", c("plan", "EQUAL", plan))]),
        (0.12, f"in {shown}", [_rule("ALL", c("country", "IN", ",".join(countries)))]),
        (
            0.10,
            f"app ≥ {version}",
            [_rule("ALL", c("app_version", "GREATER_THAN_INCLUSIVE", f"{version}:semver"))],
        ),
        (
            0.08,
            f"age {age}-{age + 9}",
            [
                _rule(
                    "ALL",
                    c("age", "GREATER_THAN_INCLUSIVE", str(age)),
                    c("age", "LESS_THAN", str(age + 10)),
                )
            ],
        ),
        (0.06, f"{split}% rollout", [_rule("ALL", c(None, "PERCENTAGE_SPLIT", split))]),
        (
            0.07,
            f"{split}% of {plan}",
            [_rule("ALL", c("plan", "EQUAL", plan), c("", "PERCENTAGE_SPLIT", split))],
        ),
        (
            0.06,
            f"emails …7@{domain}",
            [
                _rule(
                    "ALL",
                    c("email", "REGEX", rf"^user[0-9]*7@{domain.replace('.', chr(92) + '.')}$"),
                )
            ],
        ),
        (0.05, f"@{domain}", [_rule("ALL", c("email", "CONTAINS", domain))]),
        (
            0.05,
            f"sessions divisible by {nth}",
            [_rule("ALL", c("sessions", "MODULO", f"{nth}|0"))],
        ),
        (
            0.05,
            "beta or enterprise",
            [_rule("ANY", c("beta_opt_in", "EQUAL", "true"), c("plan", "EQUAL", "enterprise"))],
        ),
        (0.04, "no plan", [_rule("NONE", c("plan", "IS_SET", None))]),
        (0.04, f"score above {score}", [_rule("ALL", c("score", "GREATER_THAN", score))]),
        (
            0.04,
            f"signed up after 2023-{month:02d}",
            [_rule("ALL", c("signup_day", "GREATER_THAN", f"2023{month:02d}01"))],
        ),
        (
            0.04,
            "identifier …00",
            [_rule("ALL", c("$.identity.identifier", "REGEX", r"^user-[0-9]*00$"))],
        ),
        (
            0.02,
            f"email not at {domain}",
            [_rule("ALL", c("email", "IS_SET", None), c("email", "NOT_CONTAINS", domain))],
        ),
        (0.02, f"age ≤ {age}", [_rule("ALL", c("age", "LESS_THAN_INCLUSIVE", str(age)))]),
        (0.02, "no app version", [_rule("ALL", c("app_version", "IS_NOT_SET", None))]),
        # Flagsmith's editor shape: an ALL rule holding ANY / NONE / ALL sub-rules.
        (
            0.08,
            f"{split}% of targeted adults in {shown}",
            [
                _rule(
                    "ALL",
                    rules=[
                        _rule("ANY", c("country", "IN", countries), c("plan", "NOT_EQUAL", "free")),
                        _rule(
                            "NONE",
                            c("app_version", "LESS_THAN", f"{version}:semver"),
                            c("age", "LESS_THAN", "18"),
                        ),
                        _rule("ALL", c("", "PERCENTAGE_SPLIT", split)),
                    ],
                )
            ],
        ),
    ]
    weights = np.array([weight for weight, _, _ in catalogue])
    choice = int(np.searchsorted(np.cumsum(weights), rng.random() * weights.sum(), side="right"))
    if shape < len(catalogue):
        choice = shape
    _, name, rules = catalogue[min(choice, len(catalogue) - 1)]
    return {"key": str(key), "name": name, "rules": rules}
