"""The benchmark and demo commands run end to end (their figures are not asserted: no timing)."""

from __future__ import annotations

import subprocess
import sys


def _run(*args: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_benchmark_prints_its_figures_and_agrees_with_flag_engine() -> None:
    out = _run(
        "membership_pipeline.benchmarks.engine_benchmark",
        "--identities",
        "3000",
        "--segments",
        "25",
        "--oracle-sample",
        "60",
        "--repeat",
        "1",
    )
    for label in ("environment", "evaluation", "peak RSS", "throughput", "flag-engine", "speed-up"):
        assert f"  {label}" in out
    assert "0 mismatches with flag-engine in 1,500 sampled pairs" in out


def test_demo_seeds_a_database_and_prints_a_summary_per_environment(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    out = _run("membership_pipeline.demo", "--url", url, "--identities", "3000")
    assert f"seeded {url}: 8 environments" in out
    assert out.count("identities, ") == 9  # the seeding line and one line per environment
    assert "(0 failed)" in out and "failed)" in out
    assert out.count("  segment ") == 8
    again = _run("membership_pipeline.demo", "--url", url, "--reuse")
    assert "seeded" not in again and again.count("  segment ") == 8
