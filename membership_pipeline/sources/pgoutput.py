"""PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1), decoded.

``pgoutput`` is the output plugin built into PostgreSQL (10+): no server extension to install on
a production primary, unlike wal2json or decoderbufs. Its format is documented ("Logical
Replication Message Formats"); only what a change consumer needs is decoded here: transaction
boundaries, relations (a table's columns, sent before its first change in each decoding
session), and row inserts, updates, deletes and truncates, with column values in their text
form. Any other message type is skipped by its documented shape; a message that does not parse
raises ``UndecodableMessage`` naming the position, so the consumer stops without confirming it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Literal

from membership_pipeline.model.errors import UndecodableMessage

Values = dict[str, str | None]  # column → text value (None: null; unchanged TOAST: absent)


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class RowChange:
    kind: Literal["insert", "update", "delete"]
    table: str
    new: Values | None  # inserts and updates
    old: Values | None  # deletes (and updates of key columns): the replica identity's columns


@dataclass(frozen=True)
class Truncate:
    tables: tuple[str, ...]


@dataclass
class Transaction:
    """One committed transaction's changes; ``end`` is the position after its commit (what a
    consumer confirms once it has recorded them)."""

    changes: list[RowChange | Truncate] = field(default_factory=list)
    end: int = 0


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise ValueError(f"message ends at byte {len(self.data)}, wanted {self.at + size}")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def int8(self) -> int:
        return self.take(1)[0]

    def int16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack(">q", self.take(8))[0])

    def string(self) -> str:
        end = self.data.index(b"\x00", self.at)
        text = self.data[self.at : end].decode("utf-8")
        self.at = end + 1
        return text

    def tuple_data(self, relation: Relation) -> Values:
        count = self.int16()
        if count != len(relation.columns):
            raise ValueError(
                f"{relation.name}: {count} columns in the row, {len(relation.columns)} known"
            )
        values: Values = {}
        for column in relation.columns:
            kind = self.take(1)
            if kind == b"n":
                values[column] = None
            elif kind == b"t":
                values[column] = self.take(self.int32()).decode("utf-8")
            elif kind == b"u":
                continue  # an unchanged TOASTed value: not sent
            else:
                raise ValueError(f"{relation.name}.{column}: unknown value kind {kind!r}")
        return values


class PgOutputDecoder:
    """Decodes one decoding session's messages in order (relations are remembered from their
    ``R`` message to the changes that follow it), grouping them into committed transactions."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self._open: Transaction | None = None

    def feed(self, position: int, data: bytes) -> Transaction | None:
        """One message at ``position``; the transaction it completes (on its commit), if any."""
        try:
            return self._feed(_Reader(bytes(data)))
        except (ValueError, KeyError, UnicodeDecodeError, struct.error) as error:
            kind = bytes(data[:1]).decode("ascii", "replace") or "?"
            raise UndecodableMessage(
                f"change capture cannot decode the {kind!r} message at {format_lsn(position)}: "
                f"{error}; nothing after the last recorded transaction was confirmed"
            ) from error

    def _feed(self, message: _Reader) -> Transaction | None:
        kind = message.take(1)
        if kind == b"B":
            self._open = Transaction()
        elif kind == b"C":
            message.int8()  # flags
            message.int64()  # the commit's position
            end = message.int64()
            message.int64()  # the commit's timestamp
            done, self._open = self._open, None
            if done is None:
                raise ValueError("a commit without its begin")
            done.end = end
            return done
        elif kind == b"R":
            oid = message.int32()
            namespace, name = message.string(), message.string()
            message.int8()  # replica identity setting
            columns = []
            for _ in range(message.int16()):
                message.int8()  # flags (part of the key)
                columns.append(message.string())
                message.int32()  # type oid
                message.int32()  # type modifier
            self.relations[oid] = Relation(oid, namespace, name, tuple(columns))
        elif kind in (b"I", b"U", b"D"):
            relation = self.relations[message.int32()]
            old = new = None
            marker = message.take(1)
            if marker in (b"K", b"O"):
                old = message.tuple_data(relation)
                if kind == b"U":
                    marker = message.take(1)
            if marker == b"N":
                new = message.tuple_data(relation)
            elif kind != b"D" or old is None:
                raise ValueError(f"unexpected tuple marker {marker!r}")
            change_kind = {b"I": "insert", b"U": "update", b"D": "delete"}[kind]
            self._current().changes.append(RowChange(change_kind, relation.name, new, old))  # type: ignore[arg-type]
        elif kind == b"T":
            count = message.int32()
            message.int8()  # options (cascade, restart identity)
            oids = [message.int32() for _ in range(count)]
            self._current().changes.append(
                Truncate(tuple(self.relations[o].name for o in oids if o in self.relations))
            )
        elif kind in (b"Y", b"O", b"M"):
            pass  # types, origins, logical messages: nothing a change consumer needs
        else:
            raise ValueError(f"unknown message type {kind!r}")
        return None

    def _current(self) -> Transaction:
        if self._open is None:
            raise ValueError("a change outside a transaction")
        return self._open
