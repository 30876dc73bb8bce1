"""Dagster definitions, one folder per domain (as in dagster-open-platform)."""
