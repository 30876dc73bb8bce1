"""Identifier → identity id, remembered: a flag proxy asks about the same identities again and
again, and each lookup is a query of Flagsmith's database.

An entry is only trusted while the version being read holds that id: an identifier whose
identity was deleted and created again has a new id, which the next published version holds
instead of the old one, so the lookup is made again. Until then the old id is what the
published version knows the identifier by, which is the version-consistent answer. Unknown
identifiers are never remembered (they may be created at any time).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cachetools import LRUCache

DEFAULT_ENTRIES = 200_000  # about 40 MB of Python objects at most


class IdentifierCache:
    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        self._ids: LRUCache[tuple[int, str], int] = LRUCache(entries)
        self._lock = threading.Lock()

    def remembered(
        self, environment_id: int, identifier: str, held: Callable[[int], bool]
    ) -> int | None:
        """The remembered id, if the version being read holds it (``held``); else None."""
        with self._lock:
            remembered = self._ids.get((environment_id, identifier))
        return remembered if remembered is not None and held(remembered) else None

    def remember(self, environment_id: int, identifier: str, identity_id: int) -> None:
        with self._lock:
            self._ids[(environment_id, identifier)] = identity_id
