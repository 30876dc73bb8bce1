"""The errors the layers share: what the store, a source or a setting tells its callers when it
cannot do what they asked. Each names the problem in one line. (The engine's own, about one
segment's rule tree, are ``evaluation.errors``: only the engine raises them.)"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class StoreError(RuntimeError):
    """Base of the store's errors."""


class EnvironmentNotFound(LookupError):
    """No live environment of Flagsmith's database has this api key."""


class InvalidSetting(ValueError):
    """A setting (an environment variable, an option) has a value that cannot be used; the
    message names the setting and the value."""


class SchemaNotReady(StoreError):
    """The database's store schema is missing or older than this code."""


class DatabaseUnreachable(StoreError):
    """A database cannot be reached: wrong host, port, database name or credentials. The
    message names it by URL (password masked) and says the driver's reason, in one line."""

    def __init__(self, what: str, url: str, error: BaseException) -> None:
        self.url = masked_url(url)
        super().__init__(f"cannot reach {what} at {self.url}: {driver_reason(error)}")


def driver_reason(error: BaseException) -> str:
    """The first line of a database driver's message (under SQLAlchemy's wrapper, its ``orig``):
    where the driver says what went wrong."""
    return first_line(str(getattr(error, "orig", None) or error))


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def masked_url(url: str) -> str:
    """The URL with its password as ``***`` (as SQLAlchemy renders a hidden one)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<an unparsable URL>"
    if password is None:
        return url
    credentials, _, host = parts.netloc.rpartition("@")
    user = credentials.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class UnknownEnvironment(StoreError, LookupError):
    def __init__(self, environment_key: str) -> None:
        self.environment_key = environment_key
        super().__init__(f"environment {environment_key!r} is not known to the membership store")


class NotYetPublished(StoreError, LookupError):
    """The environment is known (it has been claimed) but no version has been published yet."""

    def __init__(self, environment_key: str, status: str | None) -> None:
        self.environment_key = environment_key
        self.status = status
        super().__init__(
            f"environment {environment_key!r} has no published membership yet "
            f"(last backfill status: {status or 'never run'})"
        )


class UnknownSegment(StoreError, LookupError):
    def __init__(self, environment_key: str, segment_key: str, version_id: int) -> None:
        self.environment_key = environment_key
        self.segment_key = segment_key
        self.version_id = version_id
        super().__init__(
            f"segment {segment_key!r} is not in environment {environment_key!r} "
            f"(published version {version_id})"
        )


class SegmentUnavailable(StoreError, LookupError):
    """The segment exists in the published version but could not be evaluated."""

    def __init__(self, environment_key: str, segment_key: str, code: str, message: str) -> None:
        self.environment_key = environment_key
        self.segment_key = segment_key
        self.code = code
        super().__init__(
            f"segment {segment_key!r} of environment {environment_key!r} has no bitmap in the "
            f"published version: {code}: {message}"
        )


class UnknownIdentity(StoreError, LookupError):
    def __init__(self, environment_key: str, identity_id: int, version_id: int) -> None:
        self.environment_key = environment_key
        self.identity_id = identity_id
        self.version_id = version_id
        super().__init__(
            f"identity {identity_id} is not in environment {environment_key!r} "
            f"(published version {version_id})"
        )


class VersionCollected(StoreError):
    """A version a reader still held was garbage-collected; read the published one again."""


class ClaimLost(StoreError):
    """The caller's claim on an environment no longer holds (failed, reconciled or replaced)."""


class InvalidVersion(StoreError, ValueError):
    """A shadow version cannot be written or published as asked."""


class RollbackUnavailable(StoreError):
    """No earlier version to flip back to, or the environment is busy."""


class CaptureError(RuntimeError):
    """Change data capture cannot go on; the message says why and what was left unconfirmed."""


class UndecodableMessage(CaptureError):
    """A replication message that does not parse: capture stops at it (the slot keeps it)."""


class CaptureUnavailable(CaptureError):
    """Logical replication cannot be used on this source (wal_level, privilege, not set up)."""
