"""The MD5 compression function, vectorised across messages with numpy.

Pure functions of message words, shared by the calling process and the hashing worker
(:mod:`membership_pipeline.evaluation.md5_workers`).
"""

from __future__ import annotations

import math

import numpy as np

SHIFTS = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
SINES = [np.uint32(int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF) for i in range(64)]
WORD_INDEX = [
    i if i < 16 else (5 * i + 1) % 16 if i < 32 else (3 * i + 5) % 16 if i < 48 else (7 * i) % 16
    for i in range(64)
]
INITIAL = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
# Messages per numpy pass: keeps the working arrays within the CPU caches.
CHUNK = 16_384


def store(out: np.ndarray, where: slice | np.ndarray, state: list[np.ndarray]) -> None:
    for i, word in enumerate(state):
        out[where, i] = word.byteswap()  # digest bytes are little-endian words


Word = np.ndarray | int  # a row of message words, or one word shared by every message


def with_prefix(template: np.ndarray, prefix: bytes) -> list[Word]:
    """Message word rows: the template's, with the prefix bytes OR-ed into the first words."""
    padded = prefix + b"\0" * (-len(prefix) % 4)
    rows = shared_words(template)
    for index, word in enumerate(np.frombuffer(padded, dtype="<u4").tolist()):
        held = rows[index]
        rows[index] = held | word if isinstance(held, int) else held | np.uint32(word)
    return rows


def shared_words(words: np.ndarray) -> list[Word]:
    """Rows of ``words``, with all-zero rows (most of a short message) as the int 0, so that
    MD5's steps add them as a constant."""
    empty = ~words.any(axis=1)
    return [0 if empty[i] else words[i] for i in range(len(words))]


def hash_template(
    template: np.ndarray, prefix: bytes, columns: slice | np.ndarray, out: np.ndarray
) -> None:
    """Digest words (big-endian) of ``prefix`` + the template's messages ``columns``, into
    ``out``."""
    count = len(out)
    for start in range(0, count, CHUNK):
        if isinstance(columns, slice):
            first = (columns.start or 0) + start
            source: slice | np.ndarray = slice(first, min(first + CHUNK, first + count - start))
        else:
            source = columns[start : start + CHUNK]
        words = with_prefix(template[:, source], prefix)
        store(out, slice(start, start + CHUNK), compress(words, min(CHUNK, count - start)))


def compress(words: list[Word], count: int) -> list[np.ndarray]:
    """MD5 state after the message words (rows of ``16 * blocks`` words, ``count`` messages)."""
    state = [np.full(count, value, dtype=np.uint32) for value in INITIAL]
    f = np.empty(count, dtype=np.uint32)
    t = np.empty(count, dtype=np.uint32)
    for block in range(len(words) // 16):
        m = words[16 * block : 16 * block + 16]
        a, b, c, d = (s.copy() for s in state)
        for step in range(64):
            if step < 16:
                np.bitwise_xor(c, d, out=f)
                np.bitwise_and(f, b, out=f)
                np.bitwise_xor(f, d, out=f)
            elif step < 32:
                np.bitwise_xor(b, c, out=f)
                np.bitwise_and(f, d, out=f)
                np.bitwise_xor(f, c, out=f)
            elif step < 48:
                np.bitwise_xor(b, c, out=f)
                np.bitwise_xor(f, d, out=f)
            else:
                np.invert(d, out=t)
                np.bitwise_or(b, t, out=t)
                np.bitwise_xor(c, t, out=f)
            np.add(f, a, out=f)
            word = m[WORD_INDEX[step]]
            if isinstance(word, int):  # shared by every message: one constant addition
                np.add(f, np.uint32((int(SINES[step]) + word) & 0xFFFFFFFF), out=f)
            else:
                np.add(f, SINES[step], out=f)
                np.add(f, word, out=f)
            shift = SHIFTS[step]
            np.left_shift(f, np.uint32(shift), out=t)
            np.right_shift(f, np.uint32(32 - shift), out=f)
            np.bitwise_or(f, t, out=f)
            np.add(f, b, out=a)  # a is free now: it becomes the new b
            a, b, c, d = d, a, b, c
        for held, added in zip(state, (a, b, c, d), strict=True):
            held += added
    return state
