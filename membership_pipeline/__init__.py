"""Roaring-bitmap segment membership for Flagsmith environments.

The package is laid out as the pipeline runs: ``sources`` (where identities, traits and segments
come from) → ``evaluation`` (segment rules to bitmaps) → storage and Dagster definitions.
"""
