"""The dispatcher's settings, in one table: each field in its flat, seconds-based form, with its
default, the environment variable a deployment sets it by, and what it does. The Dagster
resource (``DispatchPolicyResource``) takes its fields from here and binds the variables; the
CLI's ``enqueue`` reads the same variables through ``policy_values_from_environment``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from membership_pipeline.dispatch.policy import PolicySettings
from membership_pipeline.model.errors import InvalidSetting


@dataclass(frozen=True)
class Setting:
    variable: str
    default: int | str
    description: str


POLICY_SETTINGS: dict[str, Setting] = {
    "coalesce_seconds": Setting(
        "MEMBERSHIP_COALESCE_SECONDS",
        300,
        "Requests of one environment whose windows overlap or lie within this many seconds of "
        "each other merge into one backfill.",
    ),
    "dedup_ttl_seconds": Setting(
        "MEMBERSHIP_DEDUP_TTL_SECONDS",
        600,
        "A launched request's dedup key suppresses the same request for this many seconds.",
    ),
    "launches_per_organisation_per_minute": Setting(
        "MEMBERSHIP_ORG_LAUNCHES_PER_MINUTE",
        10,
        "Backfills launched per organisation in any rolling minute (the rest wait).",
    ),
    "delta_launches_per_organisation_per_minute": Setting(
        "MEMBERSHIP_ORG_DELTA_LAUNCHES_PER_MINUTE",
        60,
        "Delta backfills launched per organisation in any rolling minute, counted apart from the "
        "cap above (a deny-listed organisation launches none).",
    ),
    "organisation_caps": Setting(
        "MEMBERSHIP_ORG_CAPS",
        "",
        "Organisations' own caps, 'organisation id:launches per minute' separated by commas "
        "(e.g. '12:0,7:50'; 0 deny-lists the organisation).",
    ),
    "max_request_age_seconds": Setting(
        "MEMBERSHIP_MAX_REQUEST_AGE_SECONDS",
        86_400,
        "A request still queued after this many seconds is dropped (reported).",
    ),
    "max_attempts": Setting(
        "MEMBERSHIP_MAX_ATTEMPTS",
        3,
        "A failed dispatched backfill is retried until this many attempts, then dropped.",
    ),
}


def policy_values_from_environment(environ: Mapping[str, str]) -> dict[str, int | str]:
    """The settings as a deployment's variables set them (each one unset: its default)."""
    values: dict[str, int | str] = {}
    for name, setting in POLICY_SETTINGS.items():
        raw = environ.get(setting.variable)
        if raw is None:
            values[name] = setting.default
        elif isinstance(setting.default, int):
            values[name] = whole_number(setting.variable, raw)
        else:
            values[name] = raw
    return values


def policy_settings(values: Mapping[str, Any]) -> PolicySettings:
    """From the flat, seconds-based form (the resource's fields, or the variables' values)."""
    return PolicySettings(
        coalesce_window=timedelta(seconds=values["coalesce_seconds"]),
        dedup_ttl=timedelta(seconds=values["dedup_ttl_seconds"]),
        launches_per_organisation_per_minute=values["launches_per_organisation_per_minute"],
        organisation_caps=organisation_caps(values["organisation_caps"]),
        delta_launches_per_organisation_per_minute=values[
            "delta_launches_per_organisation_per_minute"
        ],
        max_age=timedelta(seconds=values["max_request_age_seconds"]),
        incremental_max_share=values.get("incremental_max_share", 0.5),
    )


def organisation_caps(text: str) -> dict[str, int]:
    """``"12:0,7:50"`` → ``{"12": 0, "7": 50}``."""
    caps = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        organisation, _, cap = item.partition(":")
        if not cap.strip().isdigit():
            raise InvalidSetting(
                f"{POLICY_SETTINGS['organisation_caps'].variable}: {item!r} is not "
                "organisation:cap (e.g. 12:0,7:50)"
            )
        caps[organisation.strip()] = int(cap)
    return caps


def whole_number(name: str, raw: str) -> int:
    """A setting's text as a whole number of at least 0; else one line naming the setting."""
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidSetting(f"{name} must be a whole number of at least 0, got {raw!r}")
    return value
