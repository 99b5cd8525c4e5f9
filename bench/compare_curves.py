"""Do two `train_throughput.py` runs train the same numbers? Their service loss curves, step by step.

    .venv/bin/python bench/compare_curves.py bench/results/train_throughput-A.json bench/results/train_throughput-B.json

Both runs train the same job with the same seed on the same data, so they draw the same batches: their
`train_loss` at equal steps differs only by how they compute (precision, compile) and by run-to-run noise. This
prints, for each logged step, the median loss over each run's repetitions and their relative difference, and then
the largest relative difference between the two runs next to the largest between repetitions of one run (the
noise: a compiled run's repetitions are not bit-identical).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any


def curves(report: dict[str, Any]) -> list[dict[int, float]]:
    """Each repetition's service loss curve: {step: train_loss}."""
    series = [rep["service"].get("train_loss") or [] for rep in report["repetitions"]]
    found = [{int(step): float(loss) for step, loss in points} for points in series]
    if not all(found):
        raise SystemExit(f"{report.get('command')}: a repetition has no train_loss series (a run before 2026-11-28)")
    return found


def median_curve(run: list[dict[int, float]]) -> dict[int, float]:
    """The median over repetitions at each step all of them logged."""
    steps = set.intersection(*(set(curve) for curve in run))
    return {step: statistics.median(curve[step] for curve in run) for step in steps}


def describe(training: dict[str, Any]) -> str:
    return f"{training['precision']}, {'compiled' if training['compile'] else 'eager'}"


def largest_gap(a: dict[int, float], b: dict[int, float]) -> float:
    """The largest relative difference between two curves at the steps both logged."""
    return max(abs(a[s] - b[s]) / abs(b[s]) for s in a.keys() & b.keys())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in (args.first, args.second)]
    specs = [{k: v for k, v in r["job_spec"]["training"].items() if k not in ("precision", "compile")} for r in reports]
    if specs[0] != specs[1] or reports[0]["job_spec"]["model"] != reports[1]["job_spec"]["model"]:
        raise SystemExit("the two runs trained different jobs (beyond precision and compile): nothing to compare")
    runs = [curves(r) for r in reports]
    medians = [median_curve(run) for run in runs]
    steps = sorted(medians[0].keys() & medians[1].keys())
    if not steps:
        raise SystemExit("the two runs logged no step in common")
    names = [describe(r["job_spec"]["training"]) for r in reports]
    print(f"{'step':>6}  {names[0]:>22}  {names[1]:>22}  relative difference")
    for step in steps:
        a, b = medians[0][step], medians[1][step]
        print(f"{step:>6}  {a:>22.5f}  {b:>22.5f}  {abs(a - b) / abs(b):.2e}")
    between = largest_gap(medians[0], medians[1])
    print(f"\nlargest relative difference between the runs (medians of repetitions): {between:.2e}")
    for name, run in zip(names, runs, strict=True):
        within = max((largest_gap(a, b) for a, b in itertools.combinations(run, 2)), default=0.0)
        print(f"largest between two repetitions of one run ({name}, {len(run)} repetitions): {within:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
