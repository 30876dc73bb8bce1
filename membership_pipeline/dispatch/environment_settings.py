"""The policy's settings from environment variables, shared by the Dagster resource and the CLI:
MEMBERSHIP_ORG_LAUNCHES_PER_MINUTE (10), MEMBERSHIP_ORG_CAPS ("12:0,7:50": organisation id →
launches per minute, 0 deny-lists), MEMBERSHIP_COALESCE_SECONDS (300),
MEMBERSHIP_DEDUP_TTL_SECONDS (600), MEMBERSHIP_MAX_REQUEST_AGE_SECONDS (86400),
MEMBERSHIP_MAX_ATTEMPTS (3)."""

from __future__ import annotations

import os
from typing import Any


def policy_settings_from_environment() -> dict[str, Any]:
    return {
        "launches_per_organisation_per_minute": int(
            os.environ.get("MEMBERSHIP_ORG_LAUNCHES_PER_MINUTE", 10)
        ),
        "organisation_caps": organisation_caps(os.environ.get("MEMBERSHIP_ORG_CAPS", "")),
        "coalesce_seconds": float(os.environ.get("MEMBERSHIP_COALESCE_SECONDS", 300)),
        "dedup_ttl_seconds": float(os.environ.get("MEMBERSHIP_DEDUP_TTL_SECONDS", 600)),
        "max_request_age_seconds": float(
            os.environ.get("MEMBERSHIP_MAX_REQUEST_AGE_SECONDS", 86400)
        ),
        "max_attempts": int(os.environ.get("MEMBERSHIP_MAX_ATTEMPTS", 3)),
    }


def organisation_caps(text: str) -> dict[str, int]:
    caps = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        organisation, _, cap = item.partition(":")
        if not cap.strip().isdigit():
            raise ValueError(f"MEMBERSHIP_ORG_CAPS: {item!r} is not organisation:cap")
        caps[organisation.strip()] = int(cap)
    return caps
