"""The bitmap store: versioned shadow writes, a one-step atomic publish, the backfill claim and
EnvironmentMembershipMetadata, and the read API — PostgreSQL or an embedded SQLite file."""

from membership_pipeline.storage.claims import Claim, ClaimRefused, ReconciledClaim
from membership_pipeline.storage.environment_metadata import (
    BackfillStatus,
    EnvironmentMembershipMetadata,
)
from membership_pipeline.storage.errors import (
    ClaimLost,
    DatabaseUnreachable,
    InvalidVersion,
    NotYetPublished,
    RollbackUnavailable,
    SchemaNotReady,
    SegmentUnavailable,
    StoreError,
    UnknownEnvironment,
    UnknownIdentity,
    UnknownSegment,
    VersionCollected,
)
from membership_pipeline.storage.garbage import GarbageReport
from membership_pipeline.storage.membership_result import stage_membership_result
from membership_pipeline.storage.reader import (
    IdentitySegments,
    MembershipReader,
    MembersPage,
    PublishedMembership,
)
from membership_pipeline.storage.schema import migrate
from membership_pipeline.storage.shards import SealedTotals, ShardReport, ShardWriter, StagedPlan
from membership_pipeline.storage.store import DEFAULT_STORE_URL, MembershipStore
from membership_pipeline.storage.versions import Publication, ShadowVersion

__all__ = [
    "DEFAULT_STORE_URL",
    "BackfillStatus",
    "Claim",
    "ClaimLost",
    "ClaimRefused",
    "DatabaseUnreachable",
    "EnvironmentMembershipMetadata",
    "GarbageReport",
    "IdentitySegments",
    "InvalidVersion",
    "MembersPage",
    "MembershipReader",
    "MembershipStore",
    "NotYetPublished",
    "Publication",
    "PublishedMembership",
    "ReconciledClaim",
    "RollbackUnavailable",
    "SchemaNotReady",
    "SealedTotals",
    "SegmentUnavailable",
    "ShadowVersion",
    "ShardReport",
    "ShardWriter",
    "StagedPlan",
    "StoreError",
    "UnknownEnvironment",
    "UnknownIdentity",
    "UnknownSegment",
    "VersionCollected",
    "migrate",
    "stage_membership_result",
]
