"""A deployment's settings: the ``MEMBERSHIP_*`` environment variables, applied when Dagster
loads the definitions (``definitions.py``'s ``@dg.definitions``), never when a module is
imported. Two kinds:

- **values** of the resources' fields (URLs, seconds, caps): each variable the deployment sets is
  bound to its field as a ``dg.EnvVar``, which Dagster reads when a run, a sensor tick or a
  schedule tick starts and never shows in the UI; a variable left unset leaves the field's
  default (the embedded one), which the launchpad shows;
- **shape** (which executor runs the steps, the refresh schedule's cron, how often a failed shard
  step is retried, the shard size a run takes by default, the capture sensor's interval): parts
  of the definitions themselves, read once, when the code location loads them; the launchpad
  shows the shard size and the executor's settings with the deployment's values as their
  defaults.

The executors' own settings (Celery's broker and backend, a Kubernetes step's memory and
concurrency) are read when a run starts, from the run config or else their variable
(``executors.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import dagster as dg

from membership_pipeline.dispatch.settings import POLICY_SETTINGS, whole_number
from membership_pipeline.model.errors import InvalidSetting
from membership_pipeline.model.shard_plan import DEFAULT_SHARD_IDENTITIES

EXECUTOR_VARIABLE = "MEMBERSHIP_EXECUTOR"
REFRESH_CRON_VARIABLE = "MEMBERSHIP_REFRESH_CRON"
GC_CRON_VARIABLE = "MEMBERSHIP_GC_CRON"
SHARD_RETRIES_VARIABLE = "MEMBERSHIP_SHARD_RETRIES"
SHARD_IDENTITIES_VARIABLE = "MEMBERSHIP_SHARD_IDENTITIES"
CAPTURE_INTERVAL_VARIABLE = "MEMBERSHIP_CAPTURE_INTERVAL_SECONDS"
# How often the capture sensor drains the slot: a trait write is published about this long (plus
# the delta run, about a second) after its commit. Each tick is a few small queries (idle: a
# few milliseconds on the source) and a tick record in Dagster's storage.
DEFAULT_CAPTURE_INTERVAL = 5

# Change detection sees new identities, new traits and segment edits; a deleted identity or
# trait and an edited trait value leave no trace it can read cheaply, so the refresh schedule
# catches them: every 6 hours by default (Flagsmith's own membership counts refresh as often).
DEFAULT_REFRESH_CRON = "0 */6 * * *"
# Garbage collection (``garbage_collection.py``): deltas publish a version every few seconds
# under a stream of trait writes, so retired versions are collected often.
DEFAULT_GC_CRON = "*/10 * * * *"
# A shard step that fails is retried this many times (a new attempt replaces what the failed
# one staged) before the backfill fails.
DEFAULT_SHARD_RETRIES = 2

# Exact counts into Flagsmith's own table (``exports/flagsmith_counts.py``): set, the export asset
# is part of the definitions and of every backfill run; unset, it does not exist.
FLAGSMITH_COUNTS_URL_VARIABLE = "MEMBERSHIP_FLAGSMITH_COUNTS_URL"

# Resource field → the variable a deployment sets it by.
RESOURCE_VARIABLES: dict[str, dict[str, str]] = {
    "flagsmith": {
        "url": "MEMBERSHIP_SOURCE_URL",
        "detection_rows_per_tick": "MEMBERSHIP_DETECTION_ROWS_PER_TICK",
    },
    "membership_store": {
        "url": "MEMBERSHIP_STORE_URL",
        "cooldown_seconds": "MEMBERSHIP_COOLDOWN_SECONDS",
        "change_cooldown_seconds": "MEMBERSHIP_CHANGE_COOLDOWN_SECONDS",
        "lease_seconds": "MEMBERSHIP_LEASE_SECONDS",
        "chunk_cache_mb": "MEMBERSHIP_CHUNK_CACHE_MB",
        "orphaned_run_grace_seconds": "MEMBERSHIP_ORPHANED_RUN_GRACE_SECONDS",
    },
    "dispatch_policy": {name: setting.variable for name, setting in POLICY_SETTINGS.items()},
    "flagsmith_counts": {"url": FLAGSMITH_COUNTS_URL_VARIABLE},
    "change_capture": {
        "slot": "MEMBERSHIP_CAPTURE_SLOT",
        "publication": "MEMBERSHIP_CAPTURE_PUBLICATION",
        "batch_changes": "MEMBERSHIP_CAPTURE_BATCH_CHANGES",
    },
}
# The fields above that are text (the others are whole numbers: ``dg.EnvVar.int``).
TEXT_FIELDS = {("flagsmith", "url"), ("membership_store", "url"), ("dispatch_policy",
               "organisation_caps"), ("change_capture", "slot"),
               ("change_capture", "publication"), ("flagsmith_counts", "url")}  # fmt: skip


class ExecutorKind(StrEnum):
    MULTIPROCESS = "multiprocess"
    IN_PROCESS = "in_process"
    CELERY = "celery"
    K8S = "k8s"


@dataclass(frozen=True)
class Deployment:
    """The variables as the code location sees them."""

    environ: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def current(cls) -> Deployment:
        return cls(dict(os.environ))

    def bindings(self, resource: str) -> dict[str, dg.EnvVar | dg.IntEnvVar]:
        """The fields of ``resource`` this deployment sets, each bound to its variable."""
        return {
            name: dg.EnvVar(variable)
            if (resource, name) in TEXT_FIELDS
            else dg.EnvVar.int(variable)
            for name, variable in RESOURCE_VARIABLES[resource].items()
            if variable in self.environ
        }

    @property
    def executor(self) -> ExecutorKind:
        raw = self.environ.get(EXECUTOR_VARIABLE, ExecutorKind.MULTIPROCESS.value)
        try:
            return ExecutorKind(raw)
        except ValueError:
            *others, last = [kind.value for kind in ExecutorKind]
            raise InvalidSetting(
                f"{EXECUTOR_VARIABLE} must be {', '.join(others)} or {last}, got {raw!r}"
            ) from None

    @property
    def exports_counts(self) -> bool:
        """Whether published counts go to Flagsmith's own table."""
        return bool(self.environ.get(FLAGSMITH_COUNTS_URL_VARIABLE, "").strip())

    @property
    def refresh_cron(self) -> str:
        return self.environ.get(REFRESH_CRON_VARIABLE, DEFAULT_REFRESH_CRON)

    @property
    def gc_cron(self) -> str:
        return self.environ.get(GC_CRON_VARIABLE, DEFAULT_GC_CRON)

    @property
    def shard_retries(self) -> int:
        raw = self.environ.get(SHARD_RETRIES_VARIABLE)
        return DEFAULT_SHARD_RETRIES if raw is None else whole_number(SHARD_RETRIES_VARIABLE, raw)

    @property
    def capture_interval(self) -> int:
        raw = self.environ.get(CAPTURE_INTERVAL_VARIABLE)
        if raw is None:
            return DEFAULT_CAPTURE_INTERVAL
        value = whole_number(CAPTURE_INTERVAL_VARIABLE, raw)
        if value < 1:
            raise InvalidSetting(f"{CAPTURE_INTERVAL_VARIABLE} must be at least 1, got {raw!r}")
        return value

    @property
    def shard_identities(self) -> int:
        raw = self.environ.get(SHARD_IDENTITIES_VARIABLE)
        if raw is None:
            return DEFAULT_SHARD_IDENTITIES
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            value = 0
        if value < 1:
            raise InvalidSetting(
                f"{SHARD_IDENTITIES_VARIABLE} must be a positive integer, got {raw!r}"
            )
        return value
