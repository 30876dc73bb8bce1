"""A synthetic Flagsmith environment at any size, deterministic by seed.

Shaped like production data: a handful of low-cardinality traits (plan, country, app version),
some numeric ones, a high-cardinality email, numeric strings that Flagsmith coerces, missing
traits; and a segment catalogue whose operator mix includes percentage splits, regexes, semver
comparisons and nested ALL / ANY / NONE rules. Built with numpy: a million identities take
seconds.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class SyntheticEnvironment:
    environment: dict[str, str]
    identities: pd.DataFrame
    traits: pd.DataFrame
    segments: list[dict[str, Any]]


def synthetic_environment(
    identities: int, segments: int, *, seed: int = 0, environment_key: str = "synthetic_env"
) -> SyntheticEnvironment:
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
        traits=_traits(rng, ids),
        segments=[_segment(rng, 1000 + i) for i in range(segments)],
    )


def _traits(rng: np.random.Generator, ids: np.ndarray) -> pd.DataFrame:
    parts = []
    for key, share in TRAIT_PRESENCE.items():
        owners = ids[rng.random(len(ids)) < share]
        parts.append(_trait_rows(key, owners, _trait_values(rng, key, owners)))
    return pd.concat(parts, ignore_index=True)


def _trait_values(rng: np.random.Generator, key: str, owners: np.ndarray) -> np.ndarray:
    n = len(owners)
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


def _segment(rng: np.random.Generator, key: int) -> dict[str, Any]:
    """One segment from a weighted catalogue of the shapes Flagsmith customers build."""
    pick = rng.random()
    plan = str(rng.choice(PLANS[:4]))
    countries = [str(c) for c in rng.choice(COUNTRIES, size=int(rng.integers(2, 8)), replace=False)]
    version = str(rng.choice(APP_VERSIONS[:-3]))
    age = int(rng.integers(16, 70))
    split = f"{rng.integers(1, 100)}"
    c = _condition
    if pick < 0.12:
        rules = [{"type": "ALL", "conditions": [c("plan", "EQUAL", plan)]}]
    elif pick < 0.24:
        rules = [{"type": "ALL", "conditions": [c("country", "IN", ",".join(countries))]}]
    elif pick < 0.34:
        rules = [
            {
                "type": "ALL",
                "conditions": [c("app_version", "GREATER_THAN_INCLUSIVE", f"{version}:semver")],
            }
        ]
    elif pick < 0.42:
        rules = [
            {
                "type": "ALL",
                "conditions": [
                    c("age", "GREATER_THAN_INCLUSIVE", str(age)),
                    c("age", "LESS_THAN", str(age + 10)),
                ],
            }
        ]
    elif pick < 0.48:
        rules = [{"type": "ALL", "conditions": [c(None, "PERCENTAGE_SPLIT", split)]}]
    elif pick < 0.55:
        rules = [
            {
                "type": "ALL",
                "conditions": [c("plan", "EQUAL", plan), c("", "PERCENTAGE_SPLIT", split)],
            }
        ]
    elif pick < 0.61:
        domain = str(rng.choice(EMAIL_DOMAINS)).replace(".", r"\.")
        rules = [{"type": "ALL", "conditions": [c("email", "REGEX", rf"^user[0-9]*7@{domain}$")]}]
    elif pick < 0.66:
        rules = [
            {"type": "ALL", "conditions": [c("email", "CONTAINS", str(rng.choice(EMAIL_DOMAINS)))]}
        ]
    elif pick < 0.71:
        rules = [
            {"type": "ALL", "conditions": [c("sessions", "MODULO", f"{rng.integers(2, 10)}|0")]}
        ]
    elif pick < 0.76:
        rules = [
            {
                "type": "ANY",
                "conditions": [c("beta_opt_in", "EQUAL", "true"), c("plan", "EQUAL", "enterprise")],
            }
        ]
    elif pick < 0.80:
        rules = [{"type": "NONE", "conditions": [c("plan", "IS_SET", None)]}]
    elif pick < 0.84:
        rules = [
            {"type": "ALL", "conditions": [c("score", "GREATER_THAN", f"{rng.random() * 100:.1f}")]}
        ]
    elif pick < 0.88:
        rules = [
            {
                "type": "ALL",
                "conditions": [c("signup_day", "GREATER_THAN", f"2023{rng.integers(1, 13):02d}01")],
            }
        ]
    elif pick < 0.92:
        rules = [
            {"type": "ALL", "conditions": [c("$.identity.identifier", "REGEX", r"^user-[0-9]*00$")]}
        ]
    else:
        # Flagsmith's editor shape: an ALL rule holding ANY / NONE sub-rules.
        rules = [
            {
                "type": "ALL",
                "rules": [
                    {
                        "type": "ANY",
                        "conditions": [
                            c("country", "IN", countries),
                            c("plan", "NOT_EQUAL", "free"),
                        ],
                    },
                    {
                        "type": "NONE",
                        "conditions": [
                            c("app_version", "LESS_THAN", f"{version}:semver"),
                            c("age", "LESS_THAN", "18"),
                        ],
                    },
                    {"type": "ALL", "conditions": [c("", "PERCENTAGE_SPLIT", split)]},
                ],
            }
        ]
    return {"key": str(key), "name": f"segment-{key}", "rules": rules}
