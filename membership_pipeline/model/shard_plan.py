"""The shard plan: an environment's identities split into ranges of consecutive identity ids.

An identity's membership depends only on its own traits, so evaluating each range on its own and
taking the union of the results is exactly the whole environment's answer. Ranges are planned
from the ids at every ``shard_identities``-th rank (one ordered scan of the environment's ids, see
``FlagsmithSource.plan_identities``), so every shard holds ``shard_identities`` identities (the
last one fewer) however sparse or clustered the ids are. Pure: no database, no Dagster.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Chunks of a shard are numbered from index * CHUNK_INDEX_STRIDE, so chunk indexes follow ids
# across shards without any renumbering; this bounds the shards of one version.
CHUNK_INDEX_STRIDE = 1 << 16
MAX_SHARDS = (2**31 - 1) // CHUNK_INDEX_STRIDE
# Measured (membership-benchmark-shards, 3 traits per identity, 300 segments): a shard step of
# 1M identities peaks at 1.0-1.1 GB, one of 500k at about 0.7 GB. 500k keeps a step well under
# the 1.5 GB budget, with room for identities that carry more traits.
DEFAULT_SHARD_IDENTITIES = 500_000
# An incremental shard evaluates a few segments: it holds far more identities than a full one
# in the same memory (ids, identifiers and the edited segments' traits). A delta's segment edits
# are evaluated in ranges of this many identities too.
DEFAULT_INCREMENTAL_SHARD_IDENTITIES = 4_000_000


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Identities with ``first_id <= id <= last_id`` (an empty range when ``last_id <
    first_id``); ``identities`` is how many the plan counted there."""

    index: int
    first_id: int
    last_id: int
    identities: int

    @property
    def mapping_key(self) -> str:
        """The Dagster step's name suffix: ``shard_3``."""
        return f"shard_{self.index}"

    @property
    def first_chunk_index(self) -> int:
        return self.index * CHUNK_INDEX_STRIDE


def plan_shards(
    boundaries: Sequence[int], identity_count: int, max_id: int | None, shard_identities: int
) -> tuple[ShardSpec, ...]:
    """Shards from the ids at ranks 0, k, 2k, ... (``boundaries``, k = ``shard_identities``) of an
    environment of ``identity_count`` identities whose largest id is ``max_id``.

    The first shard starts at id 0 and the last ends at ``max_id``: identities created after
    planning (ids only grow) wait for the next backfill, as their change stamps say. An empty
    environment is one empty shard."""
    if shard_identities < 1:
        raise ValueError(f"shard_identities must be at least 1, got {shard_identities}")
    expected = -(-identity_count // shard_identities)
    if len(boundaries) != expected:
        raise ValueError(
            f"{len(boundaries)} boundaries for {identity_count} identities in shards of "
            f"{shard_identities} (expected {expected})"
        )
    if any(later <= earlier for earlier, later in itertools.pairwise(boundaries)):
        raise ValueError("shard boundaries must be strictly increasing identity ids")
    if expected > MAX_SHARDS:
        raise ValueError(
            f"{identity_count:,} identities in shards of {shard_identities:,} make {expected:,} "
            f"shards; at most {MAX_SHARDS:,} fit one version: use larger shards"
        )
    if identity_count == 0:
        return (ShardSpec(0, 0, -1, 0),)
    assert max_id is not None and max_id >= boundaries[-1]
    starts = [0, *boundaries[1:]]
    ends = [start - 1 for start in boundaries[1:]] + [max_id]
    sizes = [shard_identities] * (expected - 1) + [
        identity_count - shard_identities * (expected - 1)
    ]
    return tuple(
        ShardSpec(index, first, last, size)
        for index, (first, last, size) in enumerate(zip(starts, ends, sizes, strict=True))
    )


def boundaries_of(sorted_ids: np.ndarray | Sequence[int], shard_identities: int) -> list[int]:
    """The ids at ranks 0, k, 2k, ... of ids in increasing order (what the source's planning
    query returns)."""
    return [int(i) for i in np.asarray(sorted_ids)[::shard_identities]]
