"""MD5 of many short messages at once, vectorised across messages with numpy.

PERCENTAGE_SPLIT hashes ``"{segment key},{identity key}"`` with MD5 for every identity; hashlib
does one message per call (~0.9 µs each here), which makes a split over a million identities cost
about a second. Running MD5's 64 steps as numpy operations over columns of messages computes the
same digests several times faster. Equality with hashlib is a property test.

Layout: texts are kept transposed (byte position × text), so that each 32-bit message word of
every message is assembled from four contiguous byte rows, whatever the prefix length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from membership_pipeline.evaluation.md5_kernel import (
    CHUNK,
    compress,
    hash_template,
    shared_words,
    store,
)
from membership_pipeline.evaluation.md5_workers import (
    SharedWords,
    hash_with_worker,
    workers_available,
)

# Share of a text set hashed at once from which a cached message template is built.
_TEMPLATE_SHARE = 0.1


@dataclass(frozen=True)
class EncodedTexts:
    """UTF-8 texts, kept both as bytes objects and as a transposed zero-padded byte matrix."""

    raw: Sequence[bytes]
    lengths: np.ndarray

    @classmethod
    def from_strings(cls, texts: Sequence[str]) -> EncodedTexts:
        raw = [text.encode("utf-8") for text in texts]
        return cls(raw=raw, lengths=np.fromiter(map(len, raw), dtype=np.int64, count=len(raw)))

    def template(self, prefix_length: int) -> SharedWords | None:
        """Padded message words of every text behind a zeroed prefix of ``prefix_length`` bytes,
        when all of them fit the same number of MD5 blocks (else ``None``).

        Percentage splits hash every identity key behind ``"{segment key},"``; segment keys
        mostly share a length, so one template serves many splits. The two most recent are kept
        (64 MB per million single-block texts each), in shared memory for the MD5 worker."""
        if prefix_length not in self._templates:
            count = len(self.lengths)
            shortest, longest = int(self.lengths.min(initial=0)), int(self.lengths.max(initial=0))
            block_count = (prefix_length + longest + 8) // 64 + 1
            if count == 0 or (prefix_length + shortest + 8) // 64 + 1 != block_count:
                return None
            built = SharedWords((16 * block_count, count))
            for start in range(0, count, CHUNK):
                chunk = slice(start, start + CHUNK)
                built.array[:, chunk] = _message_words(prefix_length, self, chunk, block_count)
            self._templates[prefix_length] = built
        self._templates[prefix_length] = self._templates.pop(prefix_length)  # most recent last
        while len(self._templates) > 2:
            self._templates.pop(next(iter(self._templates)))
        return self._templates[prefix_length]

    def has_template(self, prefix_length: int) -> bool:
        return prefix_length in self._templates

    @cached_property
    def _templates(self) -> dict[int, SharedWords]:
        return {}

    @cached_property
    def columns(self) -> np.ndarray:
        """``(max length, n)`` uint8: row ``k`` holds byte ``k`` of every text (0 past its end)."""
        width = max(int(self.lengths.max(initial=0)), 1)
        # numpy's bytes dtype pads with NUL, which is exactly MD5's zero padding.
        matrix = np.array(self.raw, dtype=f"S{width}").view(np.uint8).reshape(len(self.raw), width)
        return np.ascontiguousarray(matrix.T)


def md5_words(
    prefix: bytes,
    texts: EncodedTexts,
    rows: np.ndarray | None = None,
    vectorise_from: int = 512,
    worker_from: int | None = 200_000,
) -> np.ndarray:
    """MD5 of ``prefix + text`` per text (or per ``texts[rows]``): ``(n, 4)`` uint32, the
    digest's big-endian words.

    Below ``vectorise_from`` messages hashlib's per-call cost is smaller than numpy's
    per-operation cost, so it hashes one message at a time; from ``worker_from`` messages (None:
    never) a second process hashes half of them."""
    selected = np.arange(len(texts.lengths)) if rows is None else rows
    count = len(selected)
    if count < vectorise_from:
        digests = b"".join(hashlib.md5(prefix + texts.raw[row]).digest() for row in selected)
        return np.frombuffer(digests, dtype=">u4").reshape(count, 4).astype(np.uint32)
    out = np.empty((count, 4), dtype=np.uint32)
    # The padded messages only differ from a cached template in the words holding the prefix;
    # building the template pays off once a good share of the texts is hashed.
    template = (
        texts.template(len(prefix))
        if count >= _TEMPLATE_SHARE * len(texts.lengths) or texts.has_template(len(prefix))
        else None
    )
    if template is not None:
        columns: slice | np.ndarray = slice(0, count) if rows is None else rows
        if worker_from is not None and count >= worker_from and workers_available():
            hash_with_worker(template, prefix, columns, out)
        else:
            hash_template(template.array, prefix, columns, out)
        return out
    blocks = (len(prefix) + texts.lengths[selected] + 8) // 64 + 1
    for block_count in range(int(blocks.min()), int(blocks.max()) + 1):
        positions = np.flatnonzero(blocks == block_count)
        for start in range(0, len(positions), CHUNK):
            chunk = positions[start : start + CHUNK]
            words = _message_words(prefix, texts, selected[chunk], block_count)
            store(out, chunk, compress(shared_words(words), len(chunk)))
    return out


def _message_words(
    prefix: bytes | int, texts: EncodedTexts, rows: slice | np.ndarray, block_count: int
) -> np.ndarray:
    """The MD5-padded messages ``prefix + text``: ``(16 * block_count, n)`` little-endian words.

    ``prefix`` may be given as its length only, leaving its bytes zero (a template)."""
    columns = texts.columns[:, rows]
    lengths = texts.lengths[rows]
    count = columns.shape[1]
    start = prefix if isinstance(prefix, int) else len(prefix)
    size = 64 * block_count
    # Byte position × message; 0x80 after the text, the bit length in the last 8 bytes.
    message = np.zeros((size, count), dtype=np.uint8)
    if not isinstance(prefix, int):
        message[:start] = np.frombuffer(prefix, dtype=np.uint8)[:, None]
    copied = min(columns.shape[0], size - 9 - start)
    message[start : start + copied] = columns[:copied]
    message[start + lengths, np.arange(count)] = 0x80
    bit_lengths = ((start + lengths) * 8).astype("<u8")
    message[size - 8 :] = bit_lengths.view(np.uint8).reshape(count, 8).T
    quads = message.reshape(16 * block_count, 4, count).astype(np.uint32)
    return quads[:, 0] | (quads[:, 1] << 8) | (quads[:, 2] << 16) | (quads[:, 3] << 24)
