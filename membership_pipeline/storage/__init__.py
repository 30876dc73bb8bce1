"""The bitmap store: versioned shadow writes, a one-step atomic publish, the backfill claim and
EnvironmentMembershipMetadata, and the read API — PostgreSQL or an embedded SQLite file. Its
errors are ``model.errors``; its schema is created by ``database.schema.migrate``."""

from membership_pipeline.storage.claims import Claim, ClaimRefused, ReconciledClaim
from membership_pipeline.storage.environment_metadata import (
    BackfillStatus,
    EnvironmentMembershipMetadata,
)
from membership_pipeline.storage.garbage import GarbageReport
from membership_pipeline.storage.plans import StagedPlan
from membership_pipeline.storage.reader import (
    IdentitySegments,
    MembershipReader,
    MembersPage,
    PublishedMembership,
)
from membership_pipeline.storage.sealing import SealedTotals
from membership_pipeline.storage.shard_writer import ShardReport, ShardWriter
from membership_pipeline.storage.store import DEFAULT_STORE_URL, MembershipStore
from membership_pipeline.storage.versions import Publication, ShadowVersion

__all__ = [
    "DEFAULT_STORE_URL",
    "BackfillStatus",
    "Claim",
    "ClaimRefused",
    "EnvironmentMembershipMetadata",
    "GarbageReport",
    "IdentitySegments",
    "MembersPage",
    "MembershipReader",
    "MembershipStore",
    "Publication",
    "PublishedMembership",
    "ReconciledClaim",
    "SealedTotals",
    "ShadowVersion",
    "ShardReport",
    "ShardWriter",
    "StagedPlan",
]
