"""Run every benchmark and write ``benchmarks/results/latest.json`` and ``latest.md``.

Each ``benchmarks/bench_*.py`` module defines ``run(quick: bool) -> dict[str, object]``; its
comparisons are fields named ``<what>_ratio`` (veriml divided by the baseline, so for
throughput higher is better and ≥ 1.0 means veriml is at least as fast) and may carry a
``goals`` mapping ``{"<what>_ratio": minimum}``; costs (a policy's compute over ``none``, the
referee's time over a full re-execution) are ratios where lower is better and carry their
limits in ``goals_max`` ``{"<what>_ratio": maximum}``. Times on this shared machine are noisy:
quote ratios, which are measured in the same run, not absolute times.

    python -m benchmarks [--quick] [--only NAME] [--merge]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _modules(only: str | None) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        names = [n for n in names if only in n]
    return names


def _goal(result: dict[str, Any], key: str, value: object) -> tuple[str, str]:
    """The goal column and the met column for one measure: ``goals`` are minimums (≥),
    ``goals_max`` maximums (≤); a measure may have neither."""
    minimum = result.get("goals", {}).get(key)
    maximum = result.get("goals_max", {}).get(key)
    if (minimum is None and maximum is None) or not isinstance(value, int | float):
        return "", ""
    shown, ok = [], True
    if minimum is not None:
        shown.append(f"≥ {minimum}")
        ok = ok and value >= minimum
    if maximum is not None:
        shown.append(f"≤ {maximum}")
        ok = ok and value <= maximum
    return ", ".join(shown), "yes" if ok else "**no**"


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# veriml benchmarks",
        "",
        f"Run {report['started']} on {report['machine']['platform']} "
        f"({report['machine']['cpus']} CPUs), Python {report['machine']['python']}.",
        "Ratios are veriml ÷ baseline from the same run; a goal is the minimum ratio wanted "
        "(≥) or, for costs, the maximum allowed (≤).",
        "",
    ]
    for name, result in report["benchmarks"].items():
        lines += [f"## {name}", ""]
        if "error" in result:
            lines += ["```", result["error"].rstrip(), "```", ""]
            continue
        if result.get("description"):
            lines += [str(result["description"]), ""]
        lines += ["| measure | value | goal | met |", "| --- | --- | --- | --- |"]
        for key, value in result.items():
            if key in ("goals", "goals_max", "description", "seconds"):
                continue
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            goal, met = _goal(result, key, value)
            lines.append(f"| {key} | {shown} | {goal} | {met} |")
        lines += ["", f"({result.get('seconds', 0):.1f} s)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for smoke tests")
    parser.add_argument("--only", help="run benchmarks whose module name contains this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other benchmarks' sections of the existing latest.json (re-run one)",
    )
    args = parser.parse_args(argv)
    import os

    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "benchmarks": {},
    }
    failed = False
    for name in _modules(args.only):
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            result = dict(module.run(quick=args.quick))
        except Exception:
            failed = True
            result = {"error": traceback.format_exc()}
        result["seconds"] = time.perf_counter() - t0
        report["benchmarks"][name.removeprefix("bench_")] = result
        shown = {k: v for k, v in result.items() if k.endswith("_ratio")}
        print(f"[bench] {name}: {shown or result.get('error', '').splitlines()[-1:]}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "latest.json"
    if args.merge and previous.is_file():
        # Each section's ratios are measured within that section's own run; a merged report
        # keeps every section's own start time so readers can tell them apart.
        kept = json.loads(previous.read_text()).get("benchmarks", {})
        for name, result in report["benchmarks"].items():
            result["started"] = report["started"]
            kept[name] = result
        report["benchmarks"] = dict(sorted(kept.items()))
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "latest.md").write_text(_markdown(report))
    print(f"[bench] wrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
