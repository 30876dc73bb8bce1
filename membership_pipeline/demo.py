"""The README's first command: evaluate a few synthetic environments and print a summary.

    membership-demo [--identities N] [--environments K] [--segments S]

Until the store and the Dagster asset exist (issues #3–#5) this runs the evaluation engine
directly on generated environments; it then becomes the materialization of every environment
through Dagster on the embedded SQLite default.
"""

from __future__ import annotations

import argparse
import logging
import time

from membership_pipeline.evaluation import evaluate_environment
from membership_pipeline.sources.synthetic import synthetic_environment
from membership_pipeline.structured_logging import log_to_stderr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=50_000, help="in the largest environment")
    parser.add_argument("--environments", type=int, default=3)
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--verbose", action="store_true", help="structured log events on stderr")
    args = parser.parse_args(argv)
    log_to_stderr(logging.INFO if args.verbose else logging.WARNING)

    for index in range(args.environments):
        size = max(args.identities // (4**index), 100)
        env = synthetic_environment(
            size, args.segments, seed=index, environment_key=f"demo_env_{index + 1}"
        )
        started = time.perf_counter()
        result = evaluate_environment(env.environment, env.identities, env.traits, env.segments)
        seconds = time.perf_counter() - started
        print(
            f"\nenvironment {result.environment_key}: {len(result.universe):,} identities, "
            f"{len(env.traits):,} traits, {len(result.segments)} segments evaluated "
            f"({len(result.failures)} failed) in {seconds:.2f} s"
        )
        top = sorted(result.segments.items(), key=lambda item: len(item[1]), reverse=True)[:5]
        print(f"  {'segment':<28}{'members':>10}{'share':>9}  rule")
        for key, bitmap in top:
            share = len(bitmap) / max(len(result.universe), 1)
            name = result.segment_names[key]
            print(f"  {name:<28}{len(bitmap):>10,}{share:>9.1%}  {_summary(env.segments, key)}")


def _summary(segments: list[dict], key: str) -> str:
    segment = next(s for s in segments if s["key"] == key)
    parts = []
    for rule in segment["rules"]:
        conditions = [
            f"{c['property'] or '<identity key>'} {c['operator']} {c['value']!r}"
            for c in rule.get("conditions") or ()
        ]
        joined = " & ".join(conditions) if rule["type"] == "ALL" else ", ".join(conditions)
        text = joined if rule["type"] == "ALL" else f"{rule['type']}({joined})"
        parts.append(text if conditions else f"{rule['type']}(nested rules)")
    text = " & ".join(parts)
    return text if len(text) <= 60 else text[:57] + "..."


if __name__ == "__main__":
    main()
