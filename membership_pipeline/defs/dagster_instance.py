"""The Dagster instance of the project's own long-running commands (``membership-capture``,
``membership-demo``), opened from ``$DAGSTER_HOME`` with what is wrong said in one line — an
unset variable the instance configuration reads, a storage URL that cannot work, a database that
cannot be reached — instead of a traceback from inside Dagster."""

from __future__ import annotations

import os
import re

import dagster as dg
import sqlalchemy as sa
from dagster_postgres.utils import DagsterPostgresException

from membership_pipeline.model.errors import driver_reason, first_line

UNSET_VARIABLE = re.compile(r'environment variable "(\w+)" which is not set')


class InstanceUnavailable(Exception):
    """The instance cannot be opened; the message is one line that says why."""


def open_instance() -> dg.DagsterInstance:
    """``DagsterInstance.get()``, or ``InstanceUnavailable``."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise InstanceUnavailable(
            "set DAGSTER_HOME to the folder of the Dagster instance its runs are recorded in "
            "(holding the project's dagster.yaml, or deploy/dagster.postgres.yaml as dagster.yaml)"
        )
    where = f"the Dagster instance in {home}"
    try:
        return dg.DagsterInstance.get()
    except dg.DagsterInvalidConfigError as error:
        messages = " ".join(e.message for e in error.errors or [])
        unset = UNSET_VARIABLE.search(messages)
        if unset:
            raise InstanceUnavailable(
                f"{where} reads ${unset.group(1)}, which is not set (e.g. "
                f"{unset.group(1)}=postgresql://user:password@host:5432/dagster)"
            ) from None
        raise InstanceUnavailable(f"{where}: {first_line(messages or str(error))}") from None
    except dg.DagsterInvariantViolationError as error:
        raise InstanceUnavailable(f"{where}: {first_line(str(error))}") from None
    except (DagsterPostgresException, sa.exc.SQLAlchemyError) as error:
        reason = driver_reason(error.__cause__ or error)
        raise InstanceUnavailable(f"{where} cannot reach its storage: {reason}") from None
