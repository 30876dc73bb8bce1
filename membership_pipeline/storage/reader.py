"""The read API: count, is_member, members (paged), sample, segments_of — against the published
version only.

``MembershipReader.published(env)`` reads the pointer and the version's directory (keys,
cardinalities, chunk id ranges) in one snapshot and returns a ``PublishedMembership`` pinned to
that version: every query on it answers from that version, whatever is published meanwhile.
Chunks are fetched on first use and kept in an LRU cache bounded in bytes, keyed by the version
that wrote them (chunks never change once written, so a cached chunk is never stale; a bitmap an
incremental version shares with an earlier one is cached once for both). The reader remembers
the newest publication it has seen per environment and never answers from an older one.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import sqlalchemy as sa
from cachetools import LRUCache
from pyroaring import BitMap, FrozenBitMap

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.database.key_probes import key_arrays, probed_rows
from membership_pipeline.model.errors import (
    NotYetPublished,
    SegmentUnavailable,
    UnknownEnvironment,
    UnknownIdentity,
    UnknownSegment,
    VersionCollected,
)
from membership_pipeline.storage.chunking import load_chunk
from membership_pipeline.storage.tables import (
    bitmap,
    bitmap_chunk,
    chunks_of_bitmap,
    content_index,
    content_version,
    environment,
    version,
)
from membership_pipeline.storage.versions import UNIVERSE_KEY

DEFAULT_CACHE_BYTES = 256 << 20
MAX_PAGE = 100_000
MAX_PINNED_VERSIONS = 64  # earlier versions at_version keeps open (their directories only)
MAX_IDENTITY_ID = 2**32 - 1
T = TypeVar("T")
ChunkKey = tuple[int, str, str, int]  # version, kind, key, chunk index


@dataclass(frozen=True)
class ChunkRef:
    index: int
    min_id: int
    max_id: int
    cardinality: int
    # The row holding its content: the owning version and its index there (a delta version's
    # link names an earlier version's chunk; a patched link is its own content).
    owner: int
    owner_index: int

    def cache_key(self, kind: str, key: str) -> ChunkKey:
        return (self.owner, kind, key, self.owner_index)


@dataclass(frozen=True)
class BitmapEntry:
    kind: str
    key: str
    name: str | None
    cardinality: int
    error_code: str | None
    error_message: str | None
    chunks: tuple[ChunkRef, ...]
    evaluated_as_of: datetime | None  # the source read it was computed from

    @functools.cached_property
    def _chunk_starts(self) -> list[int]:
        return [c.min_id for c in self.chunks]

    def chunk_holding(self, identity_id: int) -> ChunkRef | None:
        position = bisect.bisect_right(self._chunk_starts, identity_id) - 1
        if position < 0 or self.chunks[position].max_id < identity_id:
            return None
        return self.chunks[position]


@dataclass(frozen=True)
class MembersPage:
    ids: list[int]
    next_after: int | None  # pass as ``after`` for the next page; None on the last page


@dataclass(frozen=True)
class IdentitySegments:
    identity_id: int
    segments: list[str]  # keys of the segments the identity is in
    unavailable: list[str]  # segments that failed to evaluate in this version: unknown


class ChunkCache:
    """Deserialized chunks, LRU, bounded by their serialized size; shared by a reader's threads."""

    def __init__(
        self, database: StoreDatabase, max_bytes: int, *, sharing: ChunkCache | None = None
    ) -> None:
        """``sharing``: hold the same chunks as that cache (and its bound)."""
        self._database = database
        self._cache: LRUCache[ChunkKey, tuple[FrozenBitMap, int]]
        if sharing is not None:
            self._cache, self._lock = sharing._cache, sharing._lock
            return
        self._cache = LRUCache(maxsize=max_bytes, getsizeof=lambda entry: entry[1])
        self._lock = threading.Lock()

    def get(self, wanted: Iterable[ChunkKey]) -> dict[ChunkKey, FrozenBitMap]:
        """Chunks by (owning version, kind, key, index)."""
        found: dict[ChunkKey, FrozenBitMap] = {}
        missing: list[ChunkKey] = []
        with self._lock:
            for chunk_key in wanted:
                entry = self._cache.get(chunk_key)
                if entry is None:
                    missing.append(chunk_key)
                else:
                    found[chunk_key] = entry[0]
        if missing:
            found.update(self._fetch(missing))
        return found

    def _fetch(self, missing: list[ChunkKey]) -> dict[ChunkKey, FrozenBitMap]:
        rows = {_row_key(row): row for row in self._rows(missing)}
        if len(rows) < len(missing):
            versions = sorted({m[0] for m in missing})
            raise VersionCollected(
                f"chunks of version(s) {versions} were garbage-collected while being read"
            )
        # A patched link shows its source's payload (cached like any chunk) with its patch.
        sources = {
            row_key: (row.source_version_id, row.kind, row.key, row.source_chunk_index)
            for row_key, row in rows.items()
            if row.payload is None
        }
        payloads = self.get(sources.values()) if sources else {}
        loaded = {}
        for row_key, row in rows.items():
            if row.payload is None:
                chunk = FrozenBitMap(
                    (payloads[sources[row_key]] - BitMap.deserialize(row.patch_removed))
                    | BitMap.deserialize(row.patch_added)
                )
                size = _memory_bytes(chunk)
            else:
                chunk, size = load_chunk(row.payload), len(row.payload)
            loaded[row_key] = chunk
            if size <= self._cache.maxsize:
                with self._lock:
                    self._cache[row_key] = (chunk, size)
        return loaded

    def _rows(self, missing: list[ChunkKey]) -> list[sa.Row]:
        with self._database.reader.connect() as conn:
            if conn.dialect.name == "postgresql":
                return _probed_chunk_rows(conn, missing)
            wanted = sa.tuple_(
                bitmap_chunk.c.version_id,
                bitmap_chunk.c.kind,
                bitmap_chunk.c.key,
                bitmap_chunk.c.chunk_index,
            )
            return conn.execute(
                sa.select(*_CHUNK_ROW).where(
                    bitmap_chunk.c.version_id.in_(sorted({m[0] for m in missing})),
                    wanted.in_(missing),
                )
            ).all()

    def load(self, wanted: list[ChunkKey]) -> dict[ChunkKey, FrozenBitMap]:
        """Payload chunks by key, from the cache or fetched without caching them (a pass over
        more chunks than the cache holds would only evict what readers use)."""
        found = {}
        with self._lock:
            for chunk_key in wanted:
                entry = self._cache.get(chunk_key)
                if entry is not None:
                    found[chunk_key] = entry[0]
        missing = [k for k in wanted if k not in found]
        rows = self._rows(missing) if missing else []
        if len(rows) < len(missing) or any(row.payload is None for row in rows):
            raise VersionCollected(f"payload chunks {missing[:3]}... are not readable")
        return found | {_row_key(row): load_chunk(row.payload) for row in rows}

    def patches(self, wanted: list[ChunkKey]) -> dict[ChunkKey, tuple[BitMap, BitMap]]:
        """Patched links' patches by key: (ids removed from the payload, ids added)."""
        rows = self._rows(wanted) if wanted else []
        if len(rows) < len(wanted) or any(row.patch_added is None for row in rows):
            raise VersionCollected(f"patched chunks {wanted[:3]}... are not readable")
        return {
            _row_key(row): (
                BitMap.deserialize(row.patch_removed),
                BitMap.deserialize(row.patch_added),
            )
            for row in rows
        }

    @property
    def max_bytes(self) -> int:
        return int(self._cache.maxsize)

    def using(self, database: StoreDatabase) -> ChunkCache:
        """The same cached chunks, fetched through ``database`` (an open store's)."""
        return ChunkCache(database, 0, sharing=self)

    def put(self, chunk_key: ChunkKey, chunk: FrozenBitMap, size: int) -> None:
        """A chunk this process just wrote (chunks never change: it is never stale)."""
        if size <= self._cache.maxsize:
            with self._lock:
                self._cache[chunk_key] = (chunk, size)

    @property
    def bytes_cached(self) -> int:
        return int(self._cache.currsize)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


class PublishedMembership:
    """One published version of one environment: every answer comes from this version."""

    def __init__(
        self,
        environment_key: str,
        row: sa.Row,  # the environment's pointer columns
        entries: dict[tuple[str, str], BitmapEntry],
        chunks: ChunkCache,
    ) -> None:
        self.environment_key = environment_key
        self.version_id: int = row.published_version_id
        self.publication: int = row.publication
        self.published_at: datetime = row.published_at
        self.as_of: datetime = row.published_as_of
        self.identity_count: int = row.published_identity_count
        self._entries = entries
        self._chunks = chunks

    @property
    def segment_keys(self) -> list[str]:
        return sorted(key for kind, key in self._entries if kind == "segment")

    @property
    def failed_segments(self) -> dict[str, str]:
        return {
            entry.key: f"{entry.error_code}: {entry.error_message}"
            for entry in self._segments()
            if entry.error_code is not None
        }

    def segment_name(self, segment_key: str) -> str | None:
        return self._entry(segment_key, allow_failed=True).name

    def evaluated_as_of(self, segment_key: str) -> datetime:
        """When this segment's bitmap was computed from the source (an incremental version
        keeps the time of the version it shares the bitmap with)."""
        return self._entry(segment_key, allow_failed=True).evaluated_as_of or self.as_of

    def segment_freshness(self) -> dict[str, datetime]:
        """``evaluated_as_of`` of every segment, failed ones included."""
        return {e.key: e.evaluated_as_of or self.as_of for e in self._segments()}

    def segment_counts(self) -> dict[str, int]:
        return {e.key: e.cardinality for e in self._segments() if e.error_code is None}

    def count(self, segment_key: str) -> int:
        return self._entry(segment_key).cardinality

    def is_member(self, segment_key: str, identity_id: int) -> bool:
        entry = self._entry(segment_key)
        chunk = entry.chunk_holding(_identity(identity_id))
        if chunk is None:
            return False
        return identity_id in self._load(entry, [chunk])[0]

    def members(self, segment_key: str, after: int | None = None, limit: int = 1000) -> MembersPage:
        """Members in id order, from the first id greater than ``after``."""
        entry = self._entry(segment_key)
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        start = 0 if after is None else _identity(after) + 1
        ids: list[int] = []
        for chunk in (c for c in entry.chunks if c.max_id >= start):
            members = self._load(entry, [chunk])[0]
            ids.extend(itertools.islice(members.iter_equal_or_larger(start), limit + 1 - len(ids)))
            if len(ids) > limit:
                return MembersPage(ids[:limit], ids[limit - 1])
        return MembersPage(ids, None)

    def sample(self, segment_key: str, n: int, seed: int = 0) -> list[int]:
        """Up to ``n`` distinct members, uniformly at random; the same for the same version and
        seed. Returned in id order."""
        entry = self._entry(segment_key)
        if n < 0:
            raise ValueError(f"sample size must be 0 or more, got {n}")
        ranks = sorted(
            random.Random(seed).sample(range(entry.cardinality), min(n, entry.cardinality))
        )
        firsts = list(itertools.accumulate((c.cardinality for c in entry.chunks), initial=0))
        by_chunk: dict[int, list[int]] = {}
        for rank in ranks:
            position = bisect.bisect_right(firsts, rank) - 1
            by_chunk.setdefault(position, []).append(rank - firsts[position])
        needed = [entry.chunks[position] for position in by_chunk]
        loaded = dict(zip(by_chunk, self._load(entry, needed), strict=True))
        return [loaded[p][local] for p, locals_ in by_chunk.items() for local in locals_]

    def has_identity(self, identity_id: int) -> bool:
        """Whether the identity is one of this version's (its universe holds it)."""
        return self._contains(self._entries[("universe", UNIVERSE_KEY)], _identity(identity_id))

    def segments_of(self, identity_id: int) -> IdentitySegments:
        if not self.has_identity(identity_id):
            raise UnknownIdentity(self.environment_key, identity_id, self.version_id)
        evaluated = [e for e in self._segments() if e.error_code is None]
        holding = [(e, c) for e in evaluated if (c := e.chunk_holding(identity_id)) is not None]
        loaded = self._chunks.get([c.cache_key("segment", e.key) for e, c in holding])
        return IdentitySegments(
            identity_id,
            sorted(
                e.key for e, c in holding if identity_id in loaded[c.cache_key("segment", e.key)]
            ),
            sorted(self.failed_segments),
        )

    def segments_of_many(self, identity_ids: Iterable[int]) -> dict[int, list[str]]:
        """The segments each of ``identity_ids`` is in, in segment order, for those this
        version holds (the others are left out): each segment's chunks that hold any of them
        are loaded once, in one batch, and intersected with them (a batch of 1,000 identities
        costs about one chunk pass per segment, not 1,000 probes)."""
        wanted = BitMap(_identity(i) for i in identity_ids)
        universe = self._entries[("universe", UNIVERSE_KEY)]
        held = self._members_among([universe], wanted)[0]
        found: dict[int, list[str]] = {i: [] for i in held}
        evaluated = sorted(
            (e for e in self._segments() if e.error_code is None),
            key=lambda e: segment_order(e.key),
        )
        for entry, members in zip(evaluated, self._members_among(evaluated, held), strict=True):
            for identity_id in members:
                found[identity_id].append(entry.key)
        return found

    def _members_among(self, entries: list[BitmapEntry], wanted: BitMap) -> list[BitMap]:
        """``entries``' members among ``wanted``, one bitmap per entry, their chunks loaded in
        one batch."""

        def below(identity_id: int) -> int:  # how many of ``wanted`` are below it
            return wanted.rank(identity_id - 1) if identity_id else 0

        touching = [
            [c for c in entry.chunks if wanted.rank(c.max_id) > below(c.min_id)]
            for entry in entries
        ]
        keys = [
            c.cache_key(e.kind, e.key) for e, cs in zip(entries, touching, strict=True) for c in cs
        ]
        loaded = self._chunks.get(keys)
        return [
            BitMap.union(BitMap(), *(loaded[c.cache_key(e.kind, e.key)] & wanted for c in cs))
            for e, cs in zip(entries, touching, strict=True)
        ]

    def bitmap(self, segment_key: str) -> FrozenBitMap:
        """The whole segment as one bitmap."""
        entry = self._entry(segment_key)
        return FrozenBitMap(BitMap.union(BitMap(), *self._load(entry, list(entry.chunks))))

    def universe(self) -> FrozenBitMap:
        entry = self._entries[("universe", UNIVERSE_KEY)]
        return FrozenBitMap(BitMap.union(BitMap(), *self._load(entry, list(entry.chunks))))

    def _contains(self, entry: BitmapEntry, identity_id: int) -> bool:
        chunk = entry.chunk_holding(identity_id)
        return chunk is not None and identity_id in self._load(entry, [chunk])[0]

    def _segments(self) -> list[BitmapEntry]:
        return [entry for (kind, _), entry in self._entries.items() if kind == "segment"]

    def _entry(self, segment_key: str, allow_failed: bool = False) -> BitmapEntry:
        entry = self._entries.get(("segment", segment_key))
        if entry is None:
            raise UnknownSegment(self.environment_key, segment_key, self.version_id)
        if entry.error_code is not None and not allow_failed:
            raise SegmentUnavailable(
                self.environment_key, segment_key, entry.error_code, entry.error_message or ""
            )
        return entry

    def _load(self, entry: BitmapEntry, chunks: list[ChunkRef]) -> list[FrozenBitMap]:
        wanted = [c.cache_key(entry.kind, entry.key) for c in chunks]
        loaded = self._chunks.get(wanted)
        return [loaded[k] for k in wanted]


class MembershipReader:
    """Reads published membership. ``pointer_ttl`` (seconds) lets repeated reads skip the
    pointer lookup for that long: 0 checks the pointer on every call (each answer is from the
    version published at that moment); a small value makes warm reads pure in-memory work at
    the price of seeing a new publication up to that late."""

    def __init__(
        self,
        database: StoreDatabase,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        pointer_ttl: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self.chunks = ChunkCache(database, cache_bytes)
        self.pointer_ttl = pointer_ttl
        self._monotonic = monotonic
        self._latest: dict[str, tuple[PublishedMembership, float]] = {}
        self._pinned: dict[tuple[str, int], PublishedMembership] = {}  # at_version's, oldest first
        self._expired: dict[str, float] = {}  # when a publication was announced (``expire``)
        self._all_expired = -math.inf
        self._lock = threading.Lock()

    def published(self, environment_key: str) -> PublishedMembership:
        latest = self._latest.get(environment_key)
        checked = self._monotonic()
        expired = max(self._expired.get(environment_key, -math.inf), self._all_expired)
        if latest is not None and checked - latest[1] < self.pointer_ttl and latest[1] > expired:
            return latest[0]
        with self._database.probe.connect() as conn:
            row = conn.execute(_pointer(environment_key)).one_or_none()
        if row is None:
            raise UnknownEnvironment(environment_key)
        if row.published_version_id is None:
            raise NotYetPublished(environment_key, row.last_backfill_status)
        snapshot = None  # what we hold is as new (or newer: never go back)
        if latest is None or row.publication > latest[0].publication:
            # A new publication: its pointer and directory, read in one snapshot.
            with self._database.reader.connect() as conn, conn.begin():
                row = conn.execute(_pointer(environment_key)).one()
                entries = _directory(conn, row.published_version_id)
            snapshot = PublishedMembership(environment_key, row, entries, self.chunks)
        with self._lock:
            held = self._latest.get(environment_key)
            if snapshot is None or (
                held is not None and held[0].publication >= snapshot.publication
            ):
                assert held is not None
                snapshot = held[0]
            self._latest[environment_key] = (snapshot, checked)
        return snapshot

    def expire(self, environment_key: str | None) -> None:
        """Check the pointer of ``environment_key`` (every environment: None) on the next read,
        whatever the TTL: a publication was announced. A pointer read that started before this
        call does not count as checked after it."""
        stamp = self._monotonic()
        with self._lock:
            if environment_key is None:
                self._all_expired = stamp
            else:
                self._expired[environment_key] = stamp

    def at_version(self, environment_key: str, version_id: int) -> PublishedMembership:
        """A version this environment published, current or retired (a paged listing reads the
        version of its first page); ``VersionCollected`` once it has been collected."""
        current = self.published(environment_key)
        if current.version_id == version_id:
            return current
        pointer = _version_pointer(environment_key, version_id)
        with self._lock:
            held = self._pinned.get((environment_key, version_id))
        if held is not None:
            # Still readable? (What it cached must not outlive its collection.)
            with self._database.probe.connect() as conn:
                if conn.execute(pointer).one_or_none() is not None:
                    return held
            with self._lock:
                self._pinned.pop((environment_key, version_id), None)
        with self._database.reader.connect() as conn, conn.begin():
            row = conn.execute(pointer).one_or_none()
            if row is None:
                raise VersionCollected(
                    f"version {version_id} of {environment_key!r} is not readable (collected, "
                    "or never published)"
                )
            entries = _directory(conn, version_id)
        pinned = PublishedMembership(environment_key, row, entries, self.chunks)
        with self._lock:
            if len(self._pinned) >= MAX_PINNED_VERSIONS:
                self._pinned.pop(next(iter(self._pinned)))
            self._pinned[(environment_key, version_id)] = pinned
        return pinned

    # One-call conveniences: each reads the current publication, and retries once if the
    # version it found is collected under it.
    def count(self, environment_key: str, segment_key: str) -> int:
        return self._retrying(environment_key, lambda p: p.count(segment_key))

    def is_member(self, environment_key: str, segment_key: str, identity_id: int) -> bool:
        return self._retrying(environment_key, lambda p: p.is_member(segment_key, identity_id))

    def members(
        self, environment_key: str, segment_key: str, after: int | None = None, limit: int = 1000
    ) -> MembersPage:
        return self._retrying(environment_key, lambda p: p.members(segment_key, after, limit))

    def sample(self, environment_key: str, segment_key: str, n: int, seed: int = 0) -> list[int]:
        return self._retrying(environment_key, lambda p: p.sample(segment_key, n, seed))

    def segments_of(self, environment_key: str, identity_id: int) -> IdentitySegments:
        return self._retrying(environment_key, lambda p: p.segments_of(identity_id))

    def _retrying(self, environment_key: str, query: Callable[[PublishedMembership], T]) -> T:
        try:
            return query(self.published(environment_key))
        except VersionCollected:
            with self._lock:
                self._latest.pop(environment_key, None)
            return query(self.published(environment_key))


def segment_order(segment_key: str) -> tuple[int, str]:
    """Sort key for segment keys, which are Flagsmith's integer ids: "9" before "10"."""
    return (len(segment_key), segment_key) if segment_key.isdigit() else (1 << 30, segment_key)


def _pointer(environment_key: str) -> sa.Select:
    return sa.select(
        environment.c.last_backfill_status,
        environment.c.published_version_id,
        environment.c.publication,
        environment.c.published_at,
        environment.c.published_as_of,
        environment.c.published_identity_count,
    ).where(environment.c.environment_key == environment_key)


def _version_pointer(environment_key: str, version_id: int) -> sa.Select:
    """A published or retired version's row, shaped as the environment's pointer columns."""
    return sa.select(
        version.c.state.label("last_backfill_status"),
        version.c.version_id.label("published_version_id"),
        sa.literal(0).label("publication"),
        version.c.published_at,
        version.c.as_of.label("published_as_of"),
        version.c.identity_count.label("published_identity_count"),
    ).where(
        version.c.environment_key == environment_key,
        version.c.version_id == version_id,
        version.c.state.in_(("published", "retired")),
    )


def _directory(conn: sa.Connection, version_id: int) -> dict[tuple[str, str], BitmapEntry]:
    rows = conn.execute(
        sa.select(
            bitmap.c.kind,
            bitmap.c.key,
            bitmap.c.name,
            bitmap.c.cardinality,
            bitmap.c.error_code,
            bitmap.c.error_message,
            bitmap.c.evaluated_as_of,
            bitmap_chunk.c.chunk_index,
            content_version().label("owner"),
            content_index().label("owner_index"),
            bitmap_chunk.c.min_id,
            bitmap_chunk.c.max_id,
            bitmap_chunk.c.cardinality.label("chunk_cardinality"),
        )
        .select_from(bitmap.outerjoin(bitmap_chunk, chunks_of_bitmap()))
        .where(bitmap.c.version_id == version_id, bitmap.c.kind != "atom")
        .order_by(bitmap.c.kind, bitmap.c.key, bitmap_chunk.c.chunk_index)
    ).all()
    if not rows:
        raise VersionCollected(f"version {version_id} has no bitmaps (collected?)")
    entries = {}
    for (kind, key), group in itertools.groupby(rows, key=lambda r: (r.kind, r.key)):
        group_rows = list(group)
        first = group_rows[0]
        chunks = tuple(
            ChunkRef(r.chunk_index, r.min_id, r.max_id, r.chunk_cardinality, r.owner, r.owner_index)
            for r in group_rows
            if r.chunk_index is not None
        )
        entries[(kind, key)] = BitmapEntry(
            kind,
            key,
            first.name,
            first.cardinality,
            first.error_code,
            first.error_message,
            chunks,
            first.evaluated_as_of,
        )
    return entries


def _row_key(row: sa.Row) -> ChunkKey:
    return (row.version_id, row.kind, row.key, row.chunk_index)


def _memory_bytes(chunk: FrozenBitMap) -> int:
    """About what a deserialized chunk holds in memory (its containers' bytes)."""
    stats = chunk.get_statistics()
    return int(
        stats["n_bytes_array_containers"]
        + stats["n_bytes_run_containers"]
        + stats["n_bytes_bitset_containers"]
    )


def _identity(identity_id: int) -> int:
    if isinstance(identity_id, bool) or not isinstance(identity_id, int):
        raise TypeError(f"identity ids are integers, got {identity_id!r}")
    if not 0 <= identity_id <= MAX_IDENTITY_ID:
        raise ValueError(f"identity id {identity_id} is outside 0..{MAX_IDENTITY_ID}")
    return identity_id


_CHUNK_ROW = (
    bitmap_chunk.c.version_id,
    bitmap_chunk.c.kind,
    bitmap_chunk.c.key,
    bitmap_chunk.c.chunk_index,
    bitmap_chunk.c.payload,
    bitmap_chunk.c.source_version_id,
    bitmap_chunk.c.source_chunk_index,
    bitmap_chunk.c.patch_removed,
    bitmap_chunk.c.patch_added,
)


_CHUNK_KEY = ["version_id", "kind", "key", "chunk_index"]


def _probed_chunk_rows(conn: sa.Connection, wanted: list[ChunkKey]) -> list[sa.Row]:
    """PostgreSQL: the chunk rows by key, one primary-key probe each (see key_probes)."""
    names = [column.name for column in _CHUNK_ROW]
    return list(
        conn.execute(
            sa.text(f"SELECT r.* FROM {probed_rows(bitmap_chunk, _CHUNK_KEY, names)}").columns(
                *(sa.column(column.name, column.type) for column in _CHUNK_ROW)
            ),
            key_arrays(_CHUNK_KEY, wanted),
        )
    )
