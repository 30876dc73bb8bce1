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

from membership_pipeline.model.errors import (
    DatabaseUnreachable,
    SegmentUnavailable,
    UnknownIdentity,
    UnknownSegment,
)
from membership_pipeline.serving.api_keys import ApiKey, KeyRing
from membership_pipeline.serving.cursor import Cursor, listing_of
from membership_pipeline.serving.errors import ApiError, api_error
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
    metrics_per_environment: bool = False  # /metrics is open: tenants' keys only when asked
    docs: bool = True  # /docs and /openapi.json (open: the API's shape, no tenant's data)


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
        self.metrics = ServiceMetrics(self.registry, settings.metrics_per_environment)

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
        listing = listing_of(environment_key, segment, search)
        version, after = self._listing_version(environment_key, listing, cursor)
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
        next_cursor = (
            None if next_after is None else Cursor(version.version_id, next_after, listing)
        )
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
        # One rule with segments-of: an identity the version does not hold is a 404 (a member
        # is one: a segment holds only identities of its version).
        if not member and not version.has_identity(wanted):
            raise UnknownIdentity(environment_key, wanted, version.version_id)
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

    # Batches: one version answers every item; an item that cannot be answered carries the
    # error (and status) its single request would have had.
    async def segments_of_batch(
        self,
        key: ApiKey,
        environment_key: str,
        identity_ids: list[int] | None,
        identifiers: list[str] | None,
    ) -> Answer:
        known, version = self._reading(key, environment_key)
        if (identity_ids is None) == (identifiers is None):
            raise ApiError(400, "give exactly one of identity_ids and identifiers")
        items: list[dict[str, Any]]
        if identity_ids is not None:
            items = [{"identity_id": i} for i in identity_ids]
        else:
            assert identifiers is not None
            resolved = await self._identities_of(known, version, identifiers)
            items = [
                {"identifier": name, "identity_id": resolved.get(name)} for name in identifiers
            ]
        found = version.segments_of_many(i["identity_id"] for i in items if i["identity_id"])
        for item in items:
            wanted = item["identity_id"]
            if wanted in found:
                item["segments"] = found[wanted]
            elif wanted is None:
                item.update(status=404, error=NO_SUCH_IDENTIFIER)
            else:
                item.update(_refusal(UnknownIdentity(environment_key, wanted, version.version_id)))
        return self._answer(
            known, version, {"identities": items, "unavailable": sorted(version.failed_segments)}
        )

    async def is_member_batch(
        self, key: ApiKey, environment_key: str, pairs: list[tuple[str, int | None, str | None]]
    ) -> Answer:
        """``pairs``: (segment, identity id, identifier), exactly one of the last two given."""
        known, version = self._reading(key, environment_key)
        if any((i is None) == (name is None) for _, i, name in pairs):
            raise ApiError(400, "pairs: give exactly one of identity_id and identifier in each")
        names = sorted({name for _, _, name in pairs if name is not None})
        resolved = await self._identities_of(known, version, names) if names else {}
        ids = [i if i is not None else resolved.get(name) for _, i, name in pairs]
        held = version.segments_of_many(i for i in ids if i is not None)
        answers = []
        for (segment, _, name), wanted in zip(pairs, ids, strict=True):
            item: dict[str, Any] = {"segment": segment}
            if name is not None:
                item["identifier"] = name
            item["identity_id"] = wanted
            try:
                if wanted is None:
                    raise ApiError(404, NO_SUCH_IDENTIFIER)
                if wanted not in held:
                    raise UnknownIdentity(environment_key, wanted, version.version_id)
                version.count(segment)  # the segment's refusal, if any: unknown, or failed
                item["member"] = segment in held[wanted]
            except (ApiError, UnknownIdentity, UnknownSegment, SegmentUnavailable) as error:
                item.update(_refusal(error))
            answers.append(item)
        return self._answer(known, version, {"answers": answers})

    # HTTP caching: the version an answer would be read from now, without reading it.
    def current(
        self,
        key: ApiKey,
        environment_key: str,
        listing: tuple[str, str | None, str | None] | None = None,
    ) -> tuple[KnownEnvironment, PublishedMembership, bool]:
        """The environment, the version a request would be answered from and whether that
        answer is stale. ``listing``: a members page's (segment, cursor, search)."""
        known = self._environment_for(key, environment_key)
        if listing is None or listing[1] is None:
            version = self.reader.published(environment_key)
        else:
            segment, cursor, search = listing
            version, _ = self._listing_version(
                environment_key, listing_of(environment_key, segment, search), cursor
            )
        return known, version, self._stale(version)

    def _listing_version(
        self, environment_key: str, listing: str, cursor: str | None
    ) -> tuple[PublishedMembership, int]:
        """A listing's version (its first page's, which the cursor names) and where it stands."""
        if cursor is None:
            return self.reader.published(environment_key), 0
        position = Cursor.decode(cursor, listing)
        return self.reader.at_version(environment_key, position.version_id), position.after_id

    def _stale(self, version: PublishedMembership) -> bool:
        return datetime.now(UTC) - version.as_of > self.settings.stale_after

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
        stale = self._stale(version)
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
        found = await self._identities_of(known, version, [identifier])
        if identifier not in found:
            raise ApiError(404, NO_SUCH_IDENTIFIER)
        return found[identifier]

    async def _identities_of(
        self, known: KnownEnvironment, version: PublishedMembership, identifiers: list[str]
    ) -> dict[str, int]:
        """Ids of those of ``identifiers`` that are the environment's identities: remembered,
        else found in one query of Flagsmith's database for all of them."""
        for identifier in identifiers:
            _check_identifier(identifier)
        found: dict[str, int] = {}
        for identifier in identifiers:
            remembered = self.identifiers.remembered(
                known.flagsmith_id, identifier, version.has_identity
            )
            if remembered is not None:
                found[identifier] = remembered
        missing = [name for name in identifiers if name not in found]
        self.metrics.identifier_resolved("remembered", len(found))
        if missing:
            self.metrics.identifier_resolved("queried", len(missing))
            # A query of Flagsmith's database: on a worker thread, the event loop keeps serving.
            queried = await run_in_threadpool(self.source.identity_ids, known.flagsmith_id, missing)
            for identifier, identity_id in queried.items():
                self.identifiers.remember(known.flagsmith_id, identifier, identity_id)
            found.update(queried)
        return found


NO_SUCH_IDENTIFIER = "no identity of this environment has that identifier"


def _check_identifier(identifier: str) -> None:
    if "\x00" in identifier:  # no Flagsmith identifier holds one (PostgreSQL text cannot)
        raise ApiError(400, "identifier: must not contain the NUL character (%00)")


def _refusal(error: Exception) -> dict[str, Any]:
    """A batch item's refusal: what its single request would have answered."""
    refused = api_error(error)
    return {"status": refused.status, "error": refused.message}


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
