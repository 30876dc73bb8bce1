"""Flagsmith's percentage-split bucket of many hash keys at once, compiled with numba.

flag-engine hashes ``"{segment key},{identity key}"`` with MD5 and reads the digest as a
big-endian integer modulo 9999. hashlib does one message per call (about 1 µs each here, most of
it call overhead), and MD5 has no vectorised form in numpy short of running its 64 steps as
array operations (what this project did before: several numpy passes per step, memory-bound).
Compiled with numba, MD5 runs over a batch of messages at a time: each of its 64 steps is one
loop across the batch, which LLVM turns into SIMD instructions (16 messages per instruction with
AVX-512), and plain threads spread batches over the cores (the kernel releases the GIL).

The texts come as one UTF-8 byte buffer with offsets (Arrow's layout for strings), so building
the input costs one C-level pass and no per-text Python objects.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from membership_pipeline.evaluation.hash_texts import HashTexts

BUCKETS = 9999

# Messages hashed side by side: a batch's state and message words stay in the L1/L2 caches.
LANES = 512


def md5_buckets(
    prefix: bytes,
    texts: HashTexts,
    rows: np.ndarray | None = None,
    threads: int | None = None,
    messages_per_thread: int = 20_000,
) -> np.ndarray:
    """``int(md5(prefix + text).hexdigest(), 16) % 9999`` of every text (or of ``texts[rows]``),
    as ``int32``; on up to ``threads`` threads (default: one per core), each given at least
    ``messages_per_thread`` messages."""
    # One set of argument types, so numba compiles (and caches) the kernel once.
    selected = np.ascontiguousarray(
        np.arange(len(texts), dtype=np.int64) if rows is None else rows, dtype=np.int64
    )
    out = np.empty(len(selected), dtype=np.int32)
    raw_prefix = np.frombuffer(prefix + texts.shared_prefix, dtype=np.uint8)
    # The kernel releases the GIL, so plain threads run it on every core; numba's own parallel
    # layer is avoided because its default (workqueue) aborts when two threads enter it at once.
    parts = min(threads or os.cpu_count() or 1, max(len(selected) // messages_per_thread, 1))
    bounds = np.linspace(0, len(selected), parts + 1).astype(np.int64)
    slices = [slice(bounds[i], bounds[i + 1]) for i in range(parts)]
    if parts == 1:
        _buckets(raw_prefix, texts.data, texts.offsets, selected, out)
    else:
        list(
            _pool().map(
                lambda part: _buckets(
                    raw_prefix, texts.data, texts.offsets, selected[part], out[part]
                ),
                slices,
            )
        )
    return out


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="md5")


@numba.njit(inline="always")
def _step(f: int, a: int, b: int, m: int, shift: int, sine: int) -> int:  # pragma: no cover
    # numba widens uint32 arithmetic to 64 bits: truncate back to MD5's 32.
    x = np.uint32(f + a + m + np.uint32(sine))
    return np.uint32(b + np.uint32((x << np.uint32(shift)) | (x >> np.uint32(32 - shift))))


# One MD5 step across the batch, per round function (RFC 1321's F, G, H, I): a ← step(a, ...).
@numba.njit(inline="always")
def _f(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, m: np.ndarray, shift: int, sine: int
) -> None:  # pragma: no cover
    for i in range(LANES):
        a[i] = _step((b[i] & c[i]) | (np.uint32(~b[i]) & d[i]), a[i], b[i], m[i], shift, sine)


@numba.njit(inline="always")
def _g(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, m: np.ndarray, shift: int, sine: int
) -> None:  # pragma: no cover
    for i in range(LANES):
        a[i] = _step((d[i] & b[i]) | (np.uint32(~d[i]) & c[i]), a[i], b[i], m[i], shift, sine)


@numba.njit(inline="always")
def _h(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, m: np.ndarray, shift: int, sine: int
) -> None:  # pragma: no cover
    for i in range(LANES):
        a[i] = _step(b[i] ^ c[i] ^ d[i], a[i], b[i], m[i], shift, sine)


@numba.njit(inline="always")
def _i(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, m: np.ndarray, shift: int, sine: int
) -> None:  # pragma: no cover
    for i in range(LANES):
        a[i] = _step(c[i] ^ (b[i] | np.uint32(~d[i])), a[i], b[i], m[i], shift, sine)


@numba.njit(cache=True, nogil=True)
def _buckets(
    prefix: np.ndarray, data: np.ndarray, offsets: np.ndarray, rows: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    # words[w, i]: message word w of the batch's message i. Separate state arrays, so that LLVM
    # can tell they do not overlap and vectorise each step.
    words = np.zeros((16, LANES), dtype=np.uint32)
    a0, b0 = np.empty(LANES, np.uint32), np.empty(LANES, np.uint32)
    c0, d0 = np.empty(LANES, np.uint32), np.empty(LANES, np.uint32)
    a, b = np.empty(LANES, np.uint32), np.empty(LANES, np.uint32)
    c, d = np.empty(LANES, np.uint32), np.empty(LANES, np.uint32)
    lengths = np.zeros(LANES, dtype=np.int64)
    starts = np.zeros(LANES, dtype=np.int64)
    prefix_length = len(prefix)
    for first in range(0, len(rows), LANES):
        count = min(LANES, len(rows) - first)
        blocks = 1
        for i in range(count):
            row = rows[first + i]
            starts[i] = offsets[row] - prefix_length  # message byte k is data[starts + k]
            lengths[i] = prefix_length + offsets[row + 1] - offsets[row]
            blocks = max(blocks, (lengths[i] + 8) // 64 + 1)
        a0[:] = np.uint32(0x67452301)
        b0[:] = np.uint32(0xEFCDAB89)
        c0[:] = np.uint32(0x98BADCFE)
        d0[:] = np.uint32(0x10325476)
        for block in range(blocks):
            base = block * 64
            # The padded messages' bytes base .. base + 63: the shared prefix, each text, 0x80,
            # zeros, and in a message's last block its length in bits.
            for w in range(16):
                word = np.uint32(0)
                for j in range(4):
                    if base + 4 * w + j < prefix_length:
                        word |= np.uint32(prefix[base + 4 * w + j]) << np.uint32(8 * j)
                words[w, :] = word
            for i in range(count):
                length = lengths[i]
                # Words holding text bytes or the 0x80 are assembled in a register each: one
                # store per word into the batch's word-major array, not one per byte.
                low = max(base, prefix_length)
                high = min(base + 64, length + 1)
                for w in range((low - base) >> 2, (high - base + 3) >> 2):
                    k = base + 4 * w
                    if low <= k and k + 4 <= length:  # four text bytes: no edge to test
                        at = starts[i] + k
                        words[w, i] = (
                            np.uint32(data[at])
                            | (np.uint32(data[at + 1]) << np.uint32(8))
                            | (np.uint32(data[at + 2]) << np.uint32(16))
                            | (np.uint32(data[at + 3]) << np.uint32(24))
                        )
                        continue
                    word = words[w, i]
                    for j in range(4):
                        if low <= k + j < length:
                            word |= np.uint32(data[starts[i] + k + j]) << np.uint32(8 * j)
                        elif k + j == length:
                            word |= np.uint32(0x80) << np.uint32(8 * j)
                    words[w, i] = word
                if block == (length + 8) // 64:
                    bits = np.uint64(length) * np.uint64(8)
                    words[14, i] = np.uint32(bits & np.uint64(0xFFFFFFFF))
                    words[15, i] = np.uint32(bits >> np.uint64(32))
            a[:] = a0
            b[:] = b0
            c[:] = c0
            d[:] = d0
            # RFC 1321's 64 steps, written out so that every shift and constant is a literal.
            _f(a, b, c, d, words[0], 7, 0xD76AA478)
            _f(d, a, b, c, words[1], 12, 0xE8C7B756)
            _f(c, d, a, b, words[2], 17, 0x242070DB)
            _f(b, c, d, a, words[3], 22, 0xC1BDCEEE)
            _f(a, b, c, d, words[4], 7, 0xF57C0FAF)
            _f(d, a, b, c, words[5], 12, 0x4787C62A)
            _f(c, d, a, b, words[6], 17, 0xA8304613)
            _f(b, c, d, a, words[7], 22, 0xFD469501)
            _f(a, b, c, d, words[8], 7, 0x698098D8)
            _f(d, a, b, c, words[9], 12, 0x8B44F7AF)
            _f(c, d, a, b, words[10], 17, 0xFFFF5BB1)
            _f(b, c, d, a, words[11], 22, 0x895CD7BE)
            _f(a, b, c, d, words[12], 7, 0x6B901122)
            _f(d, a, b, c, words[13], 12, 0xFD987193)
            _f(c, d, a, b, words[14], 17, 0xA679438E)
            _f(b, c, d, a, words[15], 22, 0x49B40821)
            _g(a, b, c, d, words[1], 5, 0xF61E2562)
            _g(d, a, b, c, words[6], 9, 0xC040B340)
            _g(c, d, a, b, words[11], 14, 0x265E5A51)
            _g(b, c, d, a, words[0], 20, 0xE9B6C7AA)
            _g(a, b, c, d, words[5], 5, 0xD62F105D)
            _g(d, a, b, c, words[10], 9, 0x02441453)
            _g(c, d, a, b, words[15], 14, 0xD8A1E681)
            _g(b, c, d, a, words[4], 20, 0xE7D3FBC8)
            _g(a, b, c, d, words[9], 5, 0x21E1CDE6)
            _g(d, a, b, c, words[14], 9, 0xC33707D6)
            _g(c, d, a, b, words[3], 14, 0xF4D50D87)
            _g(b, c, d, a, words[8], 20, 0x455A14ED)
            _g(a, b, c, d, words[13], 5, 0xA9E3E905)
            _g(d, a, b, c, words[2], 9, 0xFCEFA3F8)
            _g(c, d, a, b, words[7], 14, 0x676F02D9)
            _g(b, c, d, a, words[12], 20, 0x8D2A4C8A)
            _h(a, b, c, d, words[5], 4, 0xFFFA3942)
            _h(d, a, b, c, words[8], 11, 0x8771F681)
            _h(c, d, a, b, words[11], 16, 0x6D9D6122)
            _h(b, c, d, a, words[14], 23, 0xFDE5380C)
            _h(a, b, c, d, words[1], 4, 0xA4BEEA44)
            _h(d, a, b, c, words[4], 11, 0x4BDECFA9)
            _h(c, d, a, b, words[7], 16, 0xF6BB4B60)
            _h(b, c, d, a, words[10], 23, 0xBEBFBC70)
            _h(a, b, c, d, words[13], 4, 0x289B7EC6)
            _h(d, a, b, c, words[0], 11, 0xEAA127FA)
            _h(c, d, a, b, words[3], 16, 0xD4EF3085)
            _h(b, c, d, a, words[6], 23, 0x04881D05)
            _h(a, b, c, d, words[9], 4, 0xD9D4D039)
            _h(d, a, b, c, words[12], 11, 0xE6DB99E5)
            _h(c, d, a, b, words[15], 16, 0x1FA27CF8)
            _h(b, c, d, a, words[2], 23, 0xC4AC5665)
            _i(a, b, c, d, words[0], 6, 0xF4292244)
            _i(d, a, b, c, words[7], 10, 0x432AFF97)
            _i(c, d, a, b, words[14], 15, 0xAB9423A7)
            _i(b, c, d, a, words[5], 21, 0xFC93A039)
            _i(a, b, c, d, words[12], 6, 0x655B59C3)
            _i(d, a, b, c, words[3], 10, 0x8F0CCC92)
            _i(c, d, a, b, words[10], 15, 0xFFEFF47D)
            _i(b, c, d, a, words[1], 21, 0x85845DD1)
            _i(a, b, c, d, words[8], 6, 0x6FA87E4F)
            _i(d, a, b, c, words[15], 10, 0xFE2CE6E0)
            _i(c, d, a, b, words[6], 15, 0xA3014314)
            _i(b, c, d, a, words[13], 21, 0x4E0811A1)
            _i(a, b, c, d, words[4], 6, 0xF7537E82)
            _i(d, a, b, c, words[11], 10, 0xBD3AF235)
            _i(c, d, a, b, words[2], 15, 0x2AD7D2BB)
            _i(b, c, d, a, words[9], 21, 0xEB86D391)
            for i in range(count):
                if block <= (lengths[i] + 8) // 64:  # messages with fewer blocks are done
                    a0[i] = np.uint32(a0[i] + a[i])
                    b0[i] = np.uint32(b0[i] + b[i])
                    c0[i] = np.uint32(c0[i] + c[i])
                    d0[i] = np.uint32(d0[i] + d[i])
        for i in range(count):
            # The digest is a0..d0 as little-endian bytes; read as one big-endian integer.
            value = np.uint64(0)
            for word in (a0[i], b0[i], c0[i], d0[i]):
                swapped = (
                    ((word & np.uint32(0xFF)) << np.uint32(24))
                    | ((word & np.uint32(0xFF00)) << np.uint32(8))
                    | ((word >> np.uint32(8)) & np.uint32(0xFF00))
                    | (word >> np.uint32(24))
                )
                value = ((value << np.uint64(32)) | np.uint64(swapped)) % np.uint64(BUCKETS)
            out[first + i] = value
