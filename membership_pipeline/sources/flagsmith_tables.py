"""Flagsmith's core tables, as its Django models define them (the columns this project uses).

Table and column names are Flagsmith's own (``api/environments``, ``api/segments``, ...), including
``environments_environment.use_mv_v2_evaluation``, the database column of the model field
``use_identity_composite_key_for_hashing``. ``environments_identity.system_traits`` is optional:
when the column exists, its JSON object's keys override user traits of the same key.

Like Django, every foreign key is indexed. The source only reads these tables; the demo dataset
generator creates and fills them.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

organisations = sa.Table(
    "organisations_organisation",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(2000), nullable=False),
    sa.Column("created_date", sa.DateTime(timezone=True)),
)

projects = sa.Table(
    "projects_project",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(2000), nullable=False),
    sa.Column(
        "organisation_id",
        sa.ForeignKey("organisations_organisation.id"),
        nullable=False,
        index=True,
    ),
    sa.Column("created_date", sa.DateTime(timezone=True)),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
)

environments = sa.Table(
    "environments_environment",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(2000), nullable=False),
    sa.Column("api_key", sa.String(100), nullable=False, unique=True),
    sa.Column("project_id", sa.ForeignKey("projects_project.id"), nullable=False, index=True),
    sa.Column("use_mv_v2_evaluation", sa.Boolean, nullable=False, default=True),
    sa.Column("created_date", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
)

identities = sa.Table(
    "environments_identity",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("identifier", sa.String(2000), nullable=False),
    sa.Column(
        "environment_id", sa.ForeignKey("environments_environment.id"), nullable=False, index=True
    ),
    sa.Column("created_date", sa.DateTime(timezone=True)),
    sa.Column("system_traits", sa.JSON(none_as_null=True)),
    sa.UniqueConstraint("environment_id", "identifier"),
)

traits = sa.Table(
    "environments_trait",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("identity_id", sa.ForeignKey("environments_identity.id"), nullable=False, index=True),
    sa.Column("trait_key", sa.String(200), nullable=False),
    sa.Column("value_type", sa.String(10)),
    sa.Column("boolean_value", sa.Boolean),
    sa.Column("integer_value", sa.Integer),
    sa.Column("string_value", sa.String(2000)),
    sa.Column("float_value", sa.Float(precision=53)),
    sa.Column("created_date", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("trait_key", "identity_id"),
)

segments = sa.Table(
    "segments_segment",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(2000), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("project_id", sa.ForeignKey("projects_project.id"), nullable=False, index=True),
    sa.Column("feature_id", sa.Integer),
    sa.Column("version", sa.Integer),
    sa.Column("version_of_id", sa.ForeignKey("segments_segment.id"), index=True),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
)

segment_rules = sa.Table(
    "segments_segmentrule",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("segment_id", sa.ForeignKey("segments_segment.id"), index=True),
    sa.Column("rule_id", sa.ForeignKey("segments_segmentrule.id"), index=True),
    sa.Column("type", sa.String(50)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
)

conditions = sa.Table(
    "segments_condition",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("rule_id", sa.ForeignKey("segments_segmentrule.id"), nullable=False, index=True),
    sa.Column("operator", sa.String(500)),
    sa.Column("property", sa.String(1000)),
    sa.Column("value", sa.String(10_000)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
)
