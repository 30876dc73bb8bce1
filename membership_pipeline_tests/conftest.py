from __future__ import annotations

import pytest


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
