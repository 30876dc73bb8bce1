"""The Dagster entry point (``workspace.yaml`` and ``[tool.dg]`` load ``defs``).

``defs`` is built when Dagster loads the code location, not when this module is imported: the
deployment's ``MEMBERSHIP_*`` variables are applied then (``defs/membership/deployment.py``), so
the same code runs on the embedded default and in production, and importing it (a step process,
a test) starts and reads nothing.
"""

from __future__ import annotations

import dagster as dg

from membership_pipeline.defs.membership.definitions import membership_definitions
from membership_pipeline.defs.membership.deployment import Deployment


@dg.definitions
def defs() -> dg.Definitions:
    return membership_definitions(Deployment.current())
