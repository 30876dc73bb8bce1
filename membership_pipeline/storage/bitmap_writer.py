"""Buffered writing of bitmaps into a version: each bitmap becomes a directory row and its chunk
rows, written in batches of about ``FLUSH_BYTES``, each batch in a transaction that first checks
that the writer may still write (its claim, or its shard attempt, still holds).

Two writers share this: ``ShadowVersion`` (a whole version, written by one process) and
``ShardWriter`` (one shard's part of a version, written by one Dagster step).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import sqlalchemy as sa
from pyroaring import BitMap, FrozenBitMap

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.model.errors import InvalidVersion
from membership_pipeline.storage.binary_copy import copy_rows
from membership_pipeline.storage.chunking import split_bitmap
from membership_pipeline.storage.identity_answers import answer_rows
from membership_pipeline.storage.tables import bitmap_chunk, identity_answers

BitmapKind = Literal["universe", "segment", "atom"]
UNIVERSE_KEY = ""
FLUSH_BYTES = 8 << 20
KEY_CHARS = 255


class BitmapWriter:
    """Subclasses name the directory table (and its extra columns) and the write guard."""

    directory: sa.Table
    environment_key: str

    def __init__(
        self,
        database: StoreDatabase,
        version_id: int,
        *,
        chunk_bytes: int,
        first_chunk_index: int = 0,
        chunk_index_limit: int = 2**31 - 1,
    ) -> None:
        self._database = database
        self.version_id = version_id
        self.chunk_bytes = chunk_bytes
        self._first_chunk_index = first_chunk_index
        self._chunk_index_limit = chunk_index_limit
        self._bitmap_rows: list[dict[str, Any]] = []
        self._chunk_rows: list[dict[str, Any]] = []
        self._answer_rows: list[dict[str, Any]] = []
        self.answer_keys: list[str] | None = None
        self.answer_bytes = 0
        self._buffered_bytes = 0
        self._keys: set[tuple[str, str]] = set()
        self.totals = {"segment": 0, "failed": 0, "atom": 0, "chunks": 0, "bytes": 0}
        self.identity_count: int | None = None
        self.closed = False

    def add_universe(self, identities: BitMap | FrozenBitMap) -> None:
        self.identity_count = len(identities)
        self._add("universe", UNIVERSE_KEY, None, identities)

    def add_segment(self, key: str, name: str | None, members: BitMap | FrozenBitMap) -> None:
        self._add("segment", key, name, members)
        self.totals["segment"] += 1

    def add_failed_segment(self, key: str, name: str | None, code: str, message: str) -> None:
        self._check_key("segment", key)
        self._bitmap_rows.append(
            self._directory_row("segment", key, name, 0, 0, 0)
            | {"error_code": code[:64], "error_message": message}
        )
        self.totals["failed"] += 1

    def add_atom(self, key: str, label: str | None, members: BitMap | FrozenBitMap) -> None:
        self._add("atom", key, label, members)
        self.totals["atom"] += 1

    def add_answers(self, ids: np.ndarray, matrix: np.ndarray, keys: list[str]) -> None:
        """The answers by identity (``storage.identity_answers``) of ``ids`` (the universe,
        ascending), a row of packed bits per id, columns in ``keys`` order: what a later delta
        reads instead of chunks."""
        if self.answer_keys is not None:
            raise InvalidVersion(f"answers added twice to version {self.version_id}")
        self.answer_keys = list(keys)
        rows = answer_rows(self.environment_key, self.version_id, ids, matrix, len(keys))
        self._answer_rows.extend(rows)
        self.answer_bytes = sum(len(row["bits"]) + len(row["ids"]) for row in rows)
        self._buffered_bytes += self.answer_bytes
        if self._buffered_bytes >= FLUSH_BYTES:
            self._flush()

    @property
    def byte_size(self) -> int:
        return self.totals["bytes"]

    def _require_writable(self, conn: sa.Connection) -> None:
        """Raise ``ClaimLost`` (in the write transaction) when this writer may no longer write."""
        raise NotImplementedError

    def _directory_row(
        self, kind: str, key: str, name: str | None, cardinality: int, size: int, chunks: int
    ) -> dict[str, Any]:
        return {
            "version_id": self.version_id,
            "kind": kind,
            "key": key,
            "name": name,
            "cardinality": cardinality,
            "byte_size": size,
            "chunk_count": chunks,
            "error_code": None,
            "error_message": None,
        }

    def _add(
        self, kind: BitmapKind, key: str, name: str | None, members: BitMap | FrozenBitMap
    ) -> None:
        self._check_key(kind, key)
        if self.closed:
            raise InvalidVersion(f"version {self.version_id} is sealed; it cannot change")
        chunks = split_bitmap(members, self.chunk_bytes)
        size = sum(len(chunk.payload) for chunk in chunks)
        self._bitmap_rows.append(
            self._directory_row(kind, key, name, len(members), size, len(chunks))
        )
        for chunk in chunks:
            index = self._first_chunk_index + chunk.index
            if index > self._chunk_index_limit:
                room = self._chunk_index_limit - self._first_chunk_index + 1
                raise InvalidVersion(
                    f"{kind} {key!r} needs more than {room} chunks in this shard: "
                    "use smaller shards or larger chunks"
                )
            self._chunk_rows.append(
                {
                    "version_id": self.version_id,
                    "kind": kind,
                    "key": key,
                    "chunk_index": index,
                    "min_id": chunk.min_id,
                    "max_id": chunk.max_id,
                    "cardinality": chunk.cardinality,
                    "payload": chunk.payload,
                }
            )
        self.totals["chunks"] += len(chunks)
        self.totals["bytes"] += size
        self._buffered_bytes += size
        if self._buffered_bytes >= FLUSH_BYTES:
            self._flush()

    def _check_key(self, kind: str, key: str) -> None:
        if not isinstance(key, str) or len(key) > KEY_CHARS or (kind != "universe" and not key):
            raise InvalidVersion(f"invalid {kind} key {key!r}: a string of 1-{KEY_CHARS} chars")
        if (kind, key) in self._keys:
            raise InvalidVersion(f"{kind} {key!r} added twice to version {self.version_id}")
        self._keys.add((kind, key))

    def _flush(self) -> None:
        if self._bitmap_rows or self._answer_rows:
            with self._database.writer.begin() as conn:
                self._require_writable(conn)
                self._write_buffer(conn)

    def _write_buffer(self, conn: sa.Connection) -> None:
        if self._bitmap_rows:
            conn.execute(self.directory.insert(), self._bitmap_rows)
        if self._chunk_rows:
            if conn.dialect.name == "postgresql":  # payloads as raw bytes, not hex text
                copy_rows(conn, bitmap_chunk, self._chunk_rows)
            else:
                conn.execute(bitmap_chunk.insert(), self._chunk_rows)
        if self._answer_rows:
            if conn.dialect.name == "postgresql":
                copy_rows(conn, identity_answers, self._answer_rows)
            else:
                conn.execute(identity_answers.insert(), self._answer_rows)
        self._bitmap_rows, self._chunk_rows, self._answer_rows = [], [], []
        self._buffered_bytes = 0
