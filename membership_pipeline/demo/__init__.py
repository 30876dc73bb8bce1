"""The demo: a Flagsmith-shaped database of any size (``dataset``, from ``synthetic``'s
deterministic generator) and the README's first command (``run``: seed it, materialize every
environment through Dagster, print a summary). Production code never imports it."""
