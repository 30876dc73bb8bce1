"""A Flagsmith environment as the pipeline knows it: where it sits and how its identities hash."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EnvironmentInfo:
    id: int
    api_key: str
    name: str
    project_id: int
    organisation_id: int
    organisation_name: str
    use_composite_hash_key: bool
    project_name: str = ""  # (plans recorded before it existed have none)

    @property
    def display_name(self) -> str:
        """How people know the environment: "organisation / project / environment"."""
        return " / ".join(n for n in (self.organisation_name, self.project_name, self.name) if n)

    @property
    def context(self) -> dict[str, str]:
        """flag-engine's EnvironmentContext: what an evaluation reads of the environment."""
        return {"key": self.api_key, "name": self.name}
