"""EnvironmentMembershipMetadata: one environment's backfill lifecycle and published pointer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from membership_pipeline.storage.tables import environment


class BackfillStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class EnvironmentMembershipMetadata:
    environment_key: str
    last_backfill_status: BackfillStatus | None  # None: never claimed
    last_backfill_started_at: datetime | None
    last_backfill_completed_at: datetime | None
    last_error: str | None  # summary of the last failure (cleared by a success)
    claim_owner: str | None  # who holds the running claim (e.g. a Dagster run id)
    claim_lease_expires_at: datetime | None
    published_version_id: int | None
    publication: int  # bumped by every flip (publish or rollback); readers never go back
    published_at: datetime | None
    published_as_of: datetime | None  # when the source data of the published version was read
    published_identity_count: int | None
    published_segment_count: int | None
    updated_at: datetime
    display_name: str | None = None  # "organisation / project / environment" (None: not planned)

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> EnvironmentMembershipMetadata:
        values = {name: getattr(row, name) for name in cls.__dataclass_fields__}
        status = values["last_backfill_status"]
        values["last_backfill_status"] = BackfillStatus(status) if status else None
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in self.__dict__.items()
        }


def read_metadata(
    conn: sa.Connection, environment_key: str
) -> EnvironmentMembershipMetadata | None:
    row = conn.execute(
        sa.select(environment).where(environment.c.environment_key == environment_key)
    ).one_or_none()
    return None if row is None else EnvironmentMembershipMetadata.from_row(row)


def read_all_metadata(conn: sa.Connection) -> list[EnvironmentMembershipMetadata]:
    rows = conn.execute(sa.select(environment).order_by(environment.c.environment_key))
    return [EnvironmentMembershipMetadata.from_row(row) for row in rows]


def read_metadata_many(
    conn: sa.Connection, environment_keys: list[str]
) -> dict[str, EnvironmentMembershipMetadata]:
    found = {}
    for start in range(0, len(environment_keys), 1000):
        rows = conn.execute(
            sa.select(environment).where(
                environment.c.environment_key.in_(environment_keys[start : start + 1000])
            )
        )
        found.update(
            (row.environment_key, EnvironmentMembershipMetadata.from_row(row)) for row in rows
        )
    return found
