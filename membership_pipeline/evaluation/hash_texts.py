"""UTF-8 texts as one byte buffer with offsets (Arrow's layout): what the MD5 kernel hashes.

Apart from the kernel (:mod:`.md5_buckets`) so that building them needs no compiler."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class HashTexts:
    """UTF-8 texts as one byte buffer: text ``i`` is ``shared_prefix`` followed by
    ``data[offsets[i]:offsets[i + 1]]``. A prefix every text shares (an environment's composite
    keys all start with ``"{environment key}_"``) is kept once, so the kernel copies only what
    differs from text to text."""

    data: np.ndarray
    offsets: np.ndarray
    shared_prefix: bytes = b""

    @classmethod
    def from_strings(
        cls, texts: Sequence[str] | pa.Array | pa.ChunkedArray, shared_prefix: str = ""
    ) -> HashTexts:
        """``texts``, each read behind ``shared_prefix``."""
        array = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        array = array.cast(pa.large_string())
        if array.null_count:
            raise ValueError("hash texts cannot be null")
        _, offsets, data = array.buffers()
        offsets_view = np.frombuffer(offsets, dtype=np.int64)[
            array.offset : array.offset + len(array) + 1
        ]
        data_view = (
            np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        )
        return cls(data=data_view, offsets=offsets_view, shared_prefix=shared_prefix.encode())

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def text(self, row: int) -> str:
        own = bytes(self.data[self.offsets[row] : self.offsets[row + 1]])
        return (self.shared_prefix + own).decode("utf-8")
