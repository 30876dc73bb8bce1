"""API keys: each scoped to organisations, projects or environments; only their SHA-256 digests
are kept (a key is 256 random bits, so a fast hash is enough: nothing to brute-force), and a
presented key is compared with every digest in constant time. Pure: no HTTP, no store."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "mpk_"
SCOPE_KINDS = ("organisation", "project", "environment")


class KeyFileInvalid(ValueError):
    """The keys file cannot be read as keys."""


@dataclass(frozen=True)
class Scope:
    kind: str  # organisation (id), project (id) or environment (api key)
    value: str

    @classmethod
    def parse(cls, text: str) -> Scope:
        kind, _, value = text.partition(":")
        if kind not in SCOPE_KINDS or not value:
            raise ValueError(
                f"scope {text!r} is not one of organisation:<id>, project:<id>, environment:<key>"
            )
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class EnvironmentPlace:
    """Where an environment sits: what a scope is checked against."""

    environment_key: str
    project_id: str
    organisation_id: str


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: str  # hex SHA-256 of the key
    scopes: tuple[Scope, ...]

    def allows(self, place: EnvironmentPlace | None) -> bool:
        """``place`` None: the environment is not known, which a key is never told."""
        if place is None:
            return False
        held = {
            "organisation": place.organisation_id,
            "project": place.project_id,
            "environment": place.environment_key,
        }
        return any(held[scope.kind] == scope.value for scope in self.scopes)


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = list(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The key's entry, or None. Every digest is compared (no early exit), in constant time."""
        if not presented:
            return None
        wanted = digest_of(presented).encode()
        found = None
        for key in self._keys:
            if hmac.compare_digest(wanted, key.digest.encode()):
                found = key
        return found


def load_key_file(path: Path) -> KeyRing:
    """A JSON list of {"name", "sha256", "scopes": ["organisation:1", ...]}."""
    try:
        rows = json.loads(path.read_text())
        keys = [
            ApiKey(row["name"], row["sha256"], tuple(Scope.parse(s) for s in row["scopes"]))
            for row in rows
        ]
    except FileNotFoundError:
        raise KeyFileInvalid(f"API keys file {path} does not exist") from None
    except (ValueError, KeyError, TypeError) as error:
        raise KeyFileInvalid(f"API keys file {path} is not a list of keys: {error}") from None
    return KeyRing(keys)


def add_key(path: Path, name: str, scopes: list[Scope]) -> str:
    """Adds a new key to the file (creating it) and returns the key: shown once, never stored."""
    rows = json.loads(path.read_text()) if path.exists() else []
    if any(row["name"] == name for row in rows):
        raise KeyFileInvalid(f"API keys file {path} already has a key named {name!r}")
    key = new_key()
    rows.append({"name": name, "sha256": digest_of(key), "scopes": [str(s) for s in scopes]})
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return key
