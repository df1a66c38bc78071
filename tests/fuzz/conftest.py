"""The fuzz suite: one Hypothesis target per parser (docs/fuzzing.md).

Two settings profiles decide how many cases each target runs:

- ``fuzz-short`` (the default, what ``make test`` and CI run): a short, derandomised run with
  no example database, so CI sees the same cases on every run;
- ``fuzz`` (``VERIML_FUZZ=full``, what ``make fuzz`` runs): 100,000 cases per target,
  randomised, no deadline and no per-test timeout.

Every fuzz test is marked ``fuzz`` (``-m fuzz`` selects the suite, ``-m 'not fuzz'`` skips
it). The terminal summary lists each target's cases, outcomes and wall time; with
``VERIML_FUZZ_REPORT=FILE`` the same lines are appended to FILE as JSON.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import _fuzzing
import pytest
from hypothesis import HealthCheck, Phase, settings

FULL_EXAMPLES = 100_000
SHORT_EXAMPLES = 150

settings.register_profile(
    "fuzz",
    max_examples=FULL_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
)
settings.register_profile(
    "fuzz-short",
    max_examples=SHORT_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: a parser fuzz target (tests/fuzz, docs/fuzzing.md)")


_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.fuzz)
            if _fuzzing.FULL:
                # 100,000 cases of a slow parser take longer than the suite's 300 s timeout.
                item.add_marker(pytest.mark.timeout(0))


_RESULTS: list[dict[str, object]] = []


@pytest.fixture(autouse=True)
def _fuzz_target(request: pytest.FixtureRequest) -> Iterator[None]:
    """Counts this target's cases and times it; the summary reports both."""
    name = request.node.name
    _fuzzing.CURRENT[0] = name
    stats = _fuzzing.STATS.setdefault(name, _fuzzing.TargetStats())
    start = time.perf_counter()
    yield
    stats.seconds += time.perf_counter() - start


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    stats = _fuzzing.STATS.get(item.name)
    if call.when == "call" and stats is not None and stats.cases:
        failure = None if report.skipped or call.excinfo is None else call.excinfo.typename
        stopped = str(call.excinfo.value)[:120] if report.skipped and call.excinfo else None
        _RESULTS.append(
            {
                "target": item.name,
                "file": Path(str(item.path)).name,
                "profile": "fuzz" if _fuzzing.FULL else "fuzz-short",
                "cases": stats.cases,
                "outcomes": dict(stats.outcomes),
                "passed": failure is None,
                "crash": failure,
                "stopped": stopped,
            }
        )
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RESULTS:
        return
    for row in _RESULTS:
        row["seconds"] = round(_fuzzing.STATS[str(row["target"])].seconds, 1)
    terminalreporter.section("fuzz targets")
    for row in _RESULTS:
        status = "ok" if row["passed"] else f"FAILED ({row['crash']})"
        if row["stopped"]:
            status = "stopped by VERIML_FUZZ_BUDGET"
        terminalreporter.write_line(
            f"{row['target']:<60} {row['cases']:>8} cases {row['seconds']:>8} s  {status}"
        )
        if terminalreporter.verbosity > 0:
            terminalreporter.write_line(f"    parser calls: {row['outcomes']}")
    report = os.environ.get("VERIML_FUZZ_REPORT")
    if report:
        with Path(report).open("a") as f:
            for row in _RESULTS:
                f.write(json.dumps(row) + "\n")
