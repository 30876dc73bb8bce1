"""Which environments a Flagsmith database holds (live ones of live projects, with their project
and organisation), and its identities' ids by identifier and identifiers by id."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.model.errors import EnvironmentNotFound
from membership_pipeline.sources import flagsmith_tables as tables

IDENTIFIER_BATCH = 5_000  # ids per identifier lookup (bound parameters per statement)

_LIVE_ENVIRONMENTS = sa.text(
    """
    SELECT e.id, e.api_key, e.name, e.project_id, p.name AS project_name,
           p.organisation_id, o.name AS organisation_name, e.use_mv_v2_evaluation
    FROM environments_environment e
    JOIN projects_project p ON p.id = e.project_id
    JOIN organisations_organisation o ON o.id = p.organisation_id
    WHERE e.deleted_at IS NULL AND p.deleted_at IS NULL
    ORDER BY e.id
    """
)


class EnvironmentCatalogue:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def environments(self) -> list[EnvironmentInfo]:
        """Live environments of live projects, with their organisation."""
        with self.engine.connect() as conn:
            return [
                EnvironmentInfo(
                    id=row.id,
                    api_key=row.api_key,
                    name=row.name,
                    project_id=row.project_id,
                    organisation_id=row.organisation_id,
                    organisation_name=row.organisation_name,
                    use_composite_hash_key=bool(row.use_mv_v2_evaluation),
                    project_name=row.project_name,
                )
                for row in conn.execute(_LIVE_ENVIRONMENTS)
            ]

    def environment(self, api_key: str) -> EnvironmentInfo:
        for info in self.environments():
            if info.api_key == api_key:
                return info
        raise EnvironmentNotFound(f"no live environment has the api key {api_key!r}")

    def identity_ids(self, environment_id: int, identifiers: Sequence[str]) -> dict[str, int]:
        """Id by identifier, for those of ``identifiers`` that are the environment's identities
        (probes of Flagsmith's unique (environment, identifier) index, in batches)."""
        found: dict[str, int] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(identifiers), IDENTIFIER_BATCH):
                query = sa.select(tables.identities.c.identifier, tables.identities.c.id).where(
                    tables.identities.c.environment_id == environment_id,
                    tables.identities.c.identifier.in_(
                        identifiers[start : start + IDENTIFIER_BATCH]
                    ),
                )
                found.update(conn.execute(query).tuples().all())
        return found

    def identifiers(self, environment_id: int, ids: Sequence[int]) -> dict[int, str]:
        """Identifier by id, for those of ``ids`` that are the environment's identities (primary
        key probes, in batches)."""
        found: dict[int, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), IDENTIFIER_BATCH):
                query = sa.select(tables.identities.c.id, tables.identities.c.identifier).where(
                    tables.identities.c.id.in_(ids[start : start + IDENTIFIER_BATCH]),
                    tables.identities.c.environment_id == environment_id,
                )
                found.update(conn.execute(query).tuples().all())
        return found
