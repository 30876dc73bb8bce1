"""The read API's pure parts: API keys (digests at rest, scopes, constant-time lookup) and the
listing cursor; and the two commands that create a key and start the service."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from membership_pipeline.serving.api_keys import (
    ApiKey,
    EnvironmentPlace,
    KeyFileInvalid,
    KeyRing,
    Scope,
    add_key,
    digest_of,
    load_key_file,
)
from membership_pipeline.serving.cursor import Cursor, CursorInvalid, listing_of

PLACE = EnvironmentPlace("env_a", project_id="7", organisation_id="3")


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("organisation:3", True),
        ("organisation:4", False),
        ("project:7", True),
        ("project:3", False),  # an organisation's id is not a project's
        ("environment:env_a", True),
        ("environment:env_b", False),
    ],
)
def test_a_key_reads_what_its_scopes_hold(scope, allowed):
    key = ApiKey("k", digest_of("secret"), (Scope.parse(scope),))
    assert key.allows(PLACE) is allowed
    assert key.allows(None) is False  # an environment that is not there: never


def test_only_digests_are_kept_and_keys_are_found_by_them(tmp_path):
    path = tmp_path / "keys.json"
    first = add_key(path, "first", [Scope.parse("organisation:3")])
    second = add_key(path, "second", [Scope.parse("environment:env_a")])
    stored = path.read_text()
    assert first not in stored and second not in stored
    assert json.loads(stored)[0]["sha256"] == digest_of(first)
    ring = load_key_file(path)
    assert ring.authenticate(first).name == "first"
    assert ring.authenticate(second).name == "second"
    assert ring.authenticate(first + "x") is None
    assert ring.authenticate("") is None and ring.authenticate(None) is None
    with pytest.raises(KeyFileInvalid, match="already has a key named 'first'"):
        add_key(path, "first", [Scope.parse("organisation:3")])


def test_a_bad_scope_or_keys_file_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="scope 'team:1' is not one of organisation:<id>"):
        Scope.parse("team:1")
    with pytest.raises(KeyFileInvalid, match="does not exist"):
        load_key_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    with pytest.raises(KeyFileInvalid, match="is not a list of keys"):
        load_key_file(tmp_path / "bad.json")
    assert len(KeyRing([])) == 0


def _encoded(*fields: object) -> str:
    raw = json.dumps(list(fields)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_cursor_round_trips_and_rejects_what_it_did_not_make():
    listing = listing_of("env", "28", None)
    cursor = Cursor(version_id=12, after_id=4_000_000, listing=listing)
    assert Cursor.decode(cursor.encode(), listing) == cursor
    forgeries = [
        "", "abc", "W10", "%%%", "é", _encoded(2, 12, 5), _encoded(1, 12, 5),  # form 1: old
        _encoded(1, 12, 5, listing), _encoded(2, "12", 5, listing), _encoded(2, 0, 5, listing),
        _encoded(2, 12, -1, listing), _encoded(2, 12, 5, 7), _encoded(2, 2**63, 5, listing),
        _encoded(2, 1, 2**32, listing),  # past the largest identity id: was a 500
        _encoded({"a": 1, "b": 2, "c": 3, "d": 4}),
    ]  # fmt: skip
    for forged in forgeries:
        with pytest.raises(CursorInvalid, match="cursor is malformed"):
            Cursor.decode(forged, listing)
    assert Cursor.decode(_encoded(2, 1, 2**32 - 1, listing), listing).after_id == 2**32 - 1


def test_a_cursor_continues_only_its_own_listing():
    made = Cursor(12, 40, listing_of("env", "28", None)).encode()
    for environment, segment, search in [
        ("other", "28", None), ("env", "29", None), ("env", "28", "a"), ("env", "28", ""),
    ]:  # fmt: skip
        with pytest.raises(CursorInvalid, match="cursor belongs to another listing"):
            Cursor.decode(made, listing_of(environment, segment, search))
    # Keys that run together do not make the same listing.
    assert listing_of("ab", "c", None) != listing_of("a", "bc", None)


def membership(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "membership_pipeline.cli", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_commands_create_a_key_and_refuse_to_serve_without_keys(tmp_path):
    keys = tmp_path / "keys.json"
    made = membership("api-key", "dashboard", "--scope", "organisation:1", "--api-keys", str(keys))
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("mpk_") and key not in keys.read_text()
    assert load_key_file(keys).authenticate(key).name == "dashboard"

    bad_scope = membership("api-key", "x", "--scope", "team:1", "--api-keys", str(keys))
    assert bad_scope.returncode == 2
    assert "scope 'team:1' is not one of" in bad_scope.stderr

    store = f"sqlite:///{tmp_path / 'store.sqlite'}"
    membership("--store-url", store, "migrate")
    no_keys = membership("--store-url", store, "serve", "--api-keys", str(tmp_path / "none.json"))
    assert no_keys.returncode == 1
    assert no_keys.stderr.strip() == (
        f"membership serve: API keys file {tmp_path / 'none.json'} does not exist"
    )
