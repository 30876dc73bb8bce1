"""The read API's answers, without HTTP: ``MembershipService`` checks a key's scope, reads the
published version (or the version a cursor names) and stamps every answer with the version and
``as_of`` it came from. Store errors pass through; ``errors.STATUS_OF`` says what a client sees.

Answers from the published version are in-memory work (the reader caches directories and
chunks); what queries Flagsmith's database (an identifier's id) is awaited on a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from membership_pipeline.model.errors import DatabaseUnreachable
from membership_pipeline.serving.api_keys import ApiKey, KeyRing
from membership_pipeline.serving.cursor import Cursor
from membership_pipeline.serving.errors import ApiError
from membership_pipeline.serving.identifier_cache import IdentifierCache
from membership_pipeline.serving.metrics import ServiceMetrics
from membership_pipeline.serving.places import EnvironmentPlaces, KnownEnvironment
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore
from membership_pipeline.storage.publications import PublicationListener
from membership_pipeline.storage.reader import MembersPage, PublishedMembership, segment_order
from membership_pipeline.storage.tables import environment

SEARCH_SCAN_IDS = 50_000  # ids a searching page looks at before it returns what it found
SEARCH_BATCH = 5_000

Answer = dict[str, Any]


@dataclass
class ServiceSettings:
    store_url: str
    source_url: str
    keys: KeyRing
    stale_after: timedelta = timedelta(hours=1)
    pointer_ttl: float = 1.0  # a new publication is served at most this late (unannounced)


class MembershipService:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.store = MembershipStore(settings.store_url)
        self.reader = self.store.reader(pointer_ttl=settings.pointer_ttl)
        # A flip is served at once where the store announces it (PostgreSQL); the TTL is the
        # fallback.
        self.listener = (
            PublicationListener(self.store.database.writer, self.reader.expire).start()
            if self.store.database.dialect == "postgresql"
            else None
        )
        try:
            self.source = FlagsmithSource(settings.source_url).require_reachable()
        except DatabaseUnreachable:
            self.close_store()
            raise
        self.places = EnvironmentPlaces(self.source.environments)
        self.identifiers = IdentifierCache()
        self.registry = CollectorRegistry()
        self.metrics = ServiceMetrics(self.registry)

    def close(self) -> None:
        self.close_store()
        self.source.close()

    def close_store(self) -> None:
        if self.listener is not None:
            self.listener.close()
        self.store.close()

    # Operations
    def unhealthy(self) -> str | None:
        """Why the membership store does not answer from its tables (None: it does)."""
        try:
            with self.store.database.probe.connect() as conn:
                conn.execute(sa.select(sa.func.count()).select_from(environment))
        except sa.exc.SQLAlchemyError as error:
            return str(error).splitlines()[0]
        return None

    def metrics_page(self) -> bytes:
        return generate_latest(self.registry)

    # Membership
    def summary(self, key: ApiKey, environment_key: str) -> Answer:
        known, version = self._reading(key, environment_key)
        counts = version.segment_counts()
        return self._answer(
            known,
            version,
            {
                "identities": version.identity_count,
                "segments": [
                    {"key": segment, "name": version.segment_name(segment), "count": count}
                    for segment, count in sorted(
                        counts.items(), key=lambda item: segment_order(item[0])
                    )
                ],
                "failed_segments": version.failed_segments,
            },
        )

    def count(self, key: ApiKey, environment_key: str, segment: str) -> Answer:
        known, version = self._reading(key, environment_key)
        members = version.count(segment)
        return self._answer(
            known,
            version,
            {"segment": segment, "name": version.segment_name(segment), "count": members},
        )

    def members(
        self,
        key: ApiKey,
        environment_key: str,
        segment: str,
        limit: int,
        cursor: str | None,
        search: str | None,
    ) -> Answer:
        """A page of members in id order, on the version of the listing's first page."""
        known = self._environment_for(key, environment_key)
        if cursor is None:
            version, after = self.reader.published(environment_key), 0
        else:
            position = Cursor.decode(cursor)
            version = self.reader.at_version(environment_key, position.version_id)
            after = position.after_id
        if search is None:
            page = version.members(segment, after or None, limit)
            ids, next_after = page.ids, page.next_after
            names = self.source.identifiers(known.flagsmith_id, ids)
        else:
            ids, names, next_after = _search(
                lambda start, n: version.members(segment, start or None, n),
                lambda batch: self.source.identifiers(known.flagsmith_id, batch),
                after,
                limit,
                search,
            )
        next_cursor = None if next_after is None else Cursor(version.version_id, next_after)
        return self._answer(
            known,
            version,
            {
                "segment": segment,
                "members": [{"id": i, "identifier": names.get(i)} for i in ids],
                "next_cursor": next_cursor.encode() if next_cursor else None,
            },
        )

    def sample(self, key: ApiKey, environment_key: str, segment: str, n: int, seed: int) -> Answer:
        known, version = self._reading(key, environment_key)
        ids = version.sample(segment, n, seed)
        names = self.source.identifiers(known.flagsmith_id, ids)
        return self._answer(
            known,
            version,
            {"segment": segment, "members": [{"id": i, "identifier": names.get(i)} for i in ids]},
        )

    async def is_member(
        self,
        key: ApiKey,
        environment_key: str,
        segment: str,
        identity_id: int | None,
        identifier: str | None,
    ) -> Answer:
        known, version = self._reading(key, environment_key)
        wanted = await self._identity_of(known, version, identity_id, identifier)
        member = version.is_member(segment, wanted)
        return self._answer(
            known, version, {"segment": segment, "identity_id": wanted, "member": member}
        )

    async def segments_of(
        self, key: ApiKey, environment_key: str, identity_id: int | None, identifier: str | None
    ) -> Answer:
        known, version = self._reading(key, environment_key)
        wanted = await self._identity_of(known, version, identity_id, identifier)
        found = version.segments_of(wanted)
        return self._answer(
            known,
            version,
            {
                "identity_id": wanted,
                "segments": sorted(found.segments, key=segment_order),
                "unavailable": found.unavailable,
            },
        )

    def _environment_for(self, key: ApiKey, environment_key: str) -> KnownEnvironment:
        known = self.places.get(environment_key)
        if not key.allows(known.place if known else None):
            # The same answer whether or not the environment exists.
            raise ApiError(403, f"this API key may not read environment {environment_key!r}")
        assert known is not None
        return known

    def _reading(
        self, key: ApiKey, environment_key: str
    ) -> tuple[KnownEnvironment, PublishedMembership]:
        """The environment, if the key may read it, and its published version."""
        known = self._environment_for(key, environment_key)
        return known, self.reader.published(environment_key)

    def _answer(
        self, known: KnownEnvironment, version: PublishedMembership, fields: Answer
    ) -> Answer:
        """The answer, stamped with its version."""
        stale = datetime.now(UTC) - version.as_of > self.settings.stale_after
        self.metrics.served(known.place.environment_key, version.version_id)
        return {
            "environment": known.place.environment_key,
            "environment_name": known.display_name,
            "version": version.version_id,
            "as_of": version.as_of.isoformat(),
            "stale": stale,
            **fields,
        }

    async def _identity_of(
        self,
        known: KnownEnvironment,
        version: PublishedMembership,
        identity_id: int | None,
        identifier: str | None,
    ) -> int:
        if (identity_id is None) == (identifier is None):
            raise ApiError(400, "give exactly one of identity_id and identifier")
        if identity_id is not None:
            return identity_id
        assert identifier is not None
        remembered = self.identifiers.remembered(
            known.flagsmith_id, identifier, version.has_identity
        )
        if remembered is not None:
            self.metrics.identifier_resolved("remembered")
            return remembered
        self.metrics.identifier_resolved("queried")
        # A query of Flagsmith's database: on a worker thread, the event loop keeps serving.
        found = await run_in_threadpool(self.source.identity_id, known.flagsmith_id, identifier)
        if found is None:
            raise ApiError(404, "no identity of this environment has that identifier")
        self.identifiers.remember(known.flagsmith_id, identifier, found)
        return found


def _search(
    page_of: Callable[[int, int], MembersPage],
    identifiers: Callable[[list[int]], dict[int, str]],
    after: int,
    limit: int,
    search: str,
) -> tuple[list[int], dict[int, str], int | None]:
    """Members after ``after`` whose identifiers contain ``search``: up to ``limit`` of them,
    looking at no more than SEARCH_SCAN_IDS members; and where the next page starts."""
    matched: list[int] = []
    names: dict[int, str] = {}
    position = after
    for _ in range(SEARCH_SCAN_IDS // SEARCH_BATCH):
        page = page_of(position, SEARCH_BATCH)
        batch = identifiers(page.ids)
        for identity_id in page.ids:
            position = identity_id
            if search in batch.get(identity_id, ""):
                matched.append(identity_id)
                names[identity_id] = batch[identity_id]
                if len(matched) == limit:
                    last = identity_id == page.ids[-1] and page.next_after is None
                    return matched, names, None if last else identity_id
        if page.next_after is None:
            return matched, names, None
    return matched, names, position
