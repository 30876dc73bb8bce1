"""Benchmark: evaluate a synthetic environment (default 1,000,000 identities × 300 segments).

    membership-benchmark-engine [--identities N] [--segments S] [--oracle-sample K]

The evaluation runs in a fresh child process so that its peak RSS is the evaluation's own
(inputs included, as in production). flag-engine then evaluates a random sample of identities
against every segment, which gives its cost per (identity, segment) pair for the throughput
ratio and checks that sample against our bitmaps.
"""

from __future__ import annotations

import argparse
import collections
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from pyroaring import BitMap

from membership_pipeline.demo.synthetic import SyntheticEnvironment, synthetic_environment
from membership_pipeline.evaluation.reference_audit import audit_against_flag_engine
from membership_pipeline.process_memory import peak_rss_mb, reset_peak_rss

TARGET_SECONDS = 2.5
TARGET_PEAK_RSS_MB = 1024
TARGET_SPEEDUP = 600
# The two data shapes: the catalogue's traits only (about 3 per identity), and with 17 more per
# identity of keys no segment reads (about 20 in all, as real Flagsmith identities carry).
SHAPES = {"narrow": 0, "wide": 17}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--oracle-sample", type=int, default=300, help="identities for flag-engine")
    parser.add_argument("--repeat", type=int, default=3, help="evaluations (min and median shown)")
    parser.add_argument(
        "--shapes", default="narrow,wide", help="narrow (referenced traits only), wide (+17 more)"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.repeat)
        return
    _parent(args)


def _progress(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def _parent(args: argparse.Namespace) -> None:
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape!r}: choose from {', '.join(SHAPES)}")
        _one_shape(args, shape)


def _one_shape(args: argparse.Namespace, shape: str) -> None:
    _progress(
        f"{shape}: generating {args.identities:,} identities × {args.segments} segments "
        f"(seed {args.seed}, {SHAPES[shape]} unreferenced traits per identity)"
    )
    env = synthetic_environment(
        args.identities, args.segments, seed=args.seed, unreferenced_traits=SHAPES[shape]
    )
    with tempfile.TemporaryDirectory(prefix="membership-bench-") as tmp:
        inputs, outputs = Path(tmp) / "inputs.pickle", Path(tmp) / "outputs.pickle"
        inputs.write_bytes(pickle.dumps(env, protocol=pickle.HIGHEST_PROTOCOL))
        del env
        _progress("evaluating in a fresh process")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "membership_pipeline.benchmarks.engine_benchmark",
                "--child",
                tmp,
                "--repeat",
                str(args.repeat),
            ],
            check=True,
        )
        measured = json.loads((Path(tmp) / "figures.json").read_text())
        env = pickle.loads(inputs.read_bytes())
        bitmaps = {k: BitMap.deserialize(v) for k, v in pickle.loads(outputs.read_bytes()).items()}
    _progress(
        f"flag-engine on a sample of {args.oracle_sample} identities × {len(env.segments)} segments"
    )
    oracle = _flag_engine_sample(env, bitmaps, args.oracle_sample, args.seed)
    _report(shape, env, measured, oracle)


def _child(workdir: Path, repeat: int) -> None:
    from membership_pipeline.evaluation import evaluate_environment

    with (workdir / "inputs.pickle").open("rb") as stream:
        env: SyntheticEnvironment = pickle.load(stream)
    inputs_mb = psutil.Process().memory_info().rss / 2**20
    loading_peak_mb = peak_rss_mb()
    reset_peak_rss()  # what follows measures the evaluation, inputs included
    runs = []
    for attempt in range(repeat):
        _progress(f"evaluation {attempt + 1} of {repeat}")
        result = None  # one evaluation's memory at a time, as in a backfill
        started = time.perf_counter()
        result = evaluate_environment(env.environment, env.identities, env.traits, env.segments)
        runs.append((time.perf_counter() - started, result.timings))
    figures = {
        "seconds": [seconds for seconds, _ in runs],
        "timings": min(runs, key=lambda run: run[0])[1],
        "peak_rss_mb": peak_rss_mb(),
        "inputs_rss_mb": inputs_mb,
        "loading_peak_mb": loading_peak_mb,
        "segments": len(result.segments),
        "failed_segments": len(result.failures),
        "atoms": len(result.atoms),
        "shared_atoms": len(result.shared_atoms),
        "memberships": sum(len(b) for b in result.segments.values()),
        "serialized_bytes": sum(len(b.serialize()) for b in result.segments.values()),
    }
    (workdir / "figures.json").write_text(json.dumps(figures))
    serialized = {key: bitmap.serialize() for key, bitmap in result.segments.items()}
    (workdir / "outputs.pickle").write_bytes(pickle.dumps(serialized))


def _flag_engine_sample(
    env: SyntheticEnvironment, bitmaps: dict[str, BitMap], sample: int, seed: int
) -> dict[str, Any]:
    started = time.perf_counter()
    report = audit_against_flag_engine(
        env.environment,
        env.identities,
        env.traits,
        env.segments,
        bitmaps,
        sample_size=sample,
        seed=seed,
    )
    seconds = time.perf_counter() - started
    return {"pairs": report.pairs, "seconds": seconds, "mismatches": len(report.mismatches)}


def _operator_mix(segments: list[dict[str, Any]]) -> collections.Counter[str]:
    mix: collections.Counter[str] = collections.Counter()
    stack = [rule for segment in segments for rule in segment["rules"]]
    while stack:
        rule = stack.pop()
        stack.extend(rule.get("rules") or ())
        mix.update(condition["operator"] for condition in rule.get("conditions") or ())
    return mix


def _report(
    shape: str, env: SyntheticEnvironment, measured: dict[str, Any], oracle: dict[str, Any] | None
) -> None:
    identities, segments = len(env.identities), len(env.segments)
    pairs = identities * segments
    seconds = sorted(measured["seconds"])
    best, median = seconds[0], seconds[len(seconds) // 2]
    rss = measured["peak_rss_mb"]
    timings = measured["timings"]
    mix = ", ".join(f"{op} {n}" for op, n in sorted(_operator_mix(env.segments).items()))

    def check(ok: bool, target: str) -> str:
        return f"   target {target}: {'ok' if ok else 'MISSED'}"

    rows = [
        (
            "environment",
            f"{identities:,} identities, {len(env.traits):,} trait rows, {segments} segments",
        ),
        ("operator mix", mix),
        (
            "atoms",
            f"{measured['atoms']} distinct conditions "
            f"({measured['shared_atoms']} shared by several segments)",
        ),
        (
            "result",
            f"{measured['segments']} segments, {measured['failed_segments']} failed, "
            f"{measured['memberships']:,} memberships, "
            f"{measured['serialized_bytes'] / 2**20:.1f} MiB serialized",
        ),
        (
            "evaluation",
            f"best {best:.2f} s, median {median:.2f} s of {len(seconds)} "
            f"(best: prepare {timings['prepare_seconds']:.2f} s, "
            f"segments {timings['evaluate_seconds']:.2f} s)"
            + check(median <= TARGET_SECONDS, f"≤ {TARGET_SECONDS:g} s"),
        ),
        (
            "peak RSS",
            f"{rss:,.0f} MB evaluating process "
            f"(inputs resident {measured['inputs_rss_mb']:,.0f} MB, "
            f"peak while loading them {measured['loading_peak_mb']:,.0f} MB)"
            + check(rss <= TARGET_PEAK_RSS_MB, f"≤ {TARGET_PEAK_RSS_MB} MB"),
        ),
        ("throughput", f"{pairs / median:,.0f} (identity × segment) pairs/s at the median"),
    ]
    if oracle:
        theirs = oracle["pairs"] / oracle["seconds"]
        ratio = pairs / median / theirs
        rows += [
            (
                "flag-engine",
                f"{theirs:,.0f} pairs/s ({1e6 / theirs:.1f} µs per pair, "
                f"on {oracle['pairs']:,} sampled pairs)",
            ),
            ("speed-up", f"{ratio:,.0f}×" + check(ratio >= TARGET_SPEEDUP, f"≥ {TARGET_SPEEDUP}×")),
            (
                "agreement",
                f"{oracle['mismatches']} mismatches with flag-engine "
                f"in {oracle['pairs']:,} sampled pairs",
            ),
        ]
    print(f"membership engine benchmark, {shape} shape")
    for label, text in rows:
        print(f"  {label:<14}{text}")


if __name__ == "__main__":
    main()
