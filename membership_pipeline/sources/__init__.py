"""Sources: where one environment's identities, traits and segments come from."""
