from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

# The PostgreSQL server the tests use for real; each test run works in a schema of its own.
SERVER_URL = os.environ.get(
    "MEMBERSHIP_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
# Each pytest-xdist worker (bin/test runs two) works in a database of its own, made when it
# starts and dropped when it ends: VACUUM keeps the rows any snapshot open in the same database
# may still see, so a worker's long read would otherwise leave the other's tables unvacuumed.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
POSTGRES_URL = (
    sa.engine.make_url(SERVER_URL)
    .set(database=f"{sa.engine.make_url(SERVER_URL).database}_{WORKER}")
    .render_as_string(hide_password=False)
    if WORKER
    else SERVER_URL
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the numba kernels once, before any test (about 15 s on a fresh clone): the
    subprocess tests (the Dagster CLI, the webserver, Celery workers) then load them from the
    on-disk cache, and no timed wait of a test includes a compile.

    A suite started in the background by a shell inherits SIGINT ignored; Dagster maps SIGTERM
    to SIGINT's handler when it runs in the main thread, so SIGTERM would become ignored too and
    the `tail` processes of its compute-log capture could never be stopped (a hang). Restore
    Python's own SIGINT handler first."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    from membership_pipeline.evaluation.kernels import warm

    warm()
    drop_stale_test_slots()  # (a database holding a slot cannot be dropped)
    if WORKER:
        _worker_database("CREATE")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if WORKER:
        _worker_database("DROP")


def _worker_database(action: str) -> None:
    """CREATE (anew) or DROP this worker's database on the server."""
    name = sa.engine.make_url(POSTGRES_URL).database
    engine = sa.create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            if action == "CREATE":
                conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError:
        pass  # no server: the tests that need it say so
    finally:
        engine.dispose()


def drop_stale_test_slots() -> None:
    """Slots a killed earlier run of the capture tests left in this run's database (each
    retains WAL until dropped; another worker's are its own)."""
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name LIKE 'mp\\_capture\\_%' AND NOT active "
                    "AND database = current_database()"
                )
            )
    except sa.exc.OperationalError:
        pass  # no server: the tests that need it say so
    finally:
        engine.dispose()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--differential-examples",
        type=int,
        default=300,
        help="Hypothesis examples per differential test against flag-engine (CI: 300, fixed seed).",
    )


@pytest.fixture(scope="session")
def differential_examples(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--differential-examples"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[sa.Engine]:
    engine = sa.create_engine(POSTGRES_URL, future=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({exc.orig}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
            "or set MEMBERSHIP_TEST_POSTGRES_URL"
        )
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_server: sa.Engine) -> Iterator[str]:
    """A fresh schema on the test server, as a URL whose search_path points at it."""
    schema = f"mp_test_{uuid.uuid4().hex[:12]}"
    with postgres_server.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.engine.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with postgres_server.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'flagsmith.sqlite'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each backend for real: an SQLite file, and a PostgreSQL schema."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Keeps each phase's report on the test (``item.rep_call``): fixtures that save artifacts
    on failure, such as the browser's screenshot, read it."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


from membership_pipeline_tests.captured_source import captured_source  # noqa: E402, F401
