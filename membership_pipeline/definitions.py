"""The single Dagster entry point, loaded by ``workspace.yaml`` and ``[tool.dagster]``.

The per-environment bitmap asset, its publishing IO manager, sensors and schedules join here as
``defs/<domain>/`` packages once the store exists (issues #4 and #5); the evaluation engine they
will call is :func:`membership_pipeline.evaluation.evaluate_environment`.
"""

from __future__ import annotations

import dagster as dg

defs = dg.Definitions()
