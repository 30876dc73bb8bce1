"""Segment membership: the per-environment bitmap asset, its IO manager, sensors and schedule."""
