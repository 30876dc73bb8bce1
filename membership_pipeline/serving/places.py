"""Where each environment sits (organisation, project) and its Flagsmith id: what API-key scopes
are checked against and what identifier lookups need. Read from Flagsmith's tables and kept for
``ttl`` seconds; an environment not found is looked up again at most every ``miss_interval``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.serving.api_keys import EnvironmentPlace


@dataclass(frozen=True)
class KnownEnvironment:
    place: EnvironmentPlace
    flagsmith_id: int  # environments_environment.id: identities are keyed by it
    display_name: str


class EnvironmentPlaces:
    def __init__(
        self,
        environments: Callable[[], list[EnvironmentInfo]],
        *,
        ttl: float = 60.0,
        miss_interval: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._environments = environments
        self._ttl = ttl
        self._miss_interval = miss_interval
        self._monotonic = monotonic
        self._known: dict[str, KnownEnvironment] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def get(self, environment_key: str) -> KnownEnvironment | None:
        age = self._monotonic() - self._read_at
        found = self._known.get(environment_key)
        if age > self._ttl or (found is None and age > self._miss_interval):
            self._refresh()
            found = self._known.get(environment_key)
        return found

    def _refresh(self) -> None:
        with self._lock:
            infos = self._environments()
            self._known = {
                info.api_key: KnownEnvironment(
                    EnvironmentPlace(info.api_key, str(info.project_id), str(info.organisation_id)),
                    info.id,
                    info.display_name,
                )
                for info in infos
            }
            self._read_at = self._monotonic()
