"""Under CI a skip is a failure, unless the test is opt-in: CI is meant to have every resource.

CI (``.ci/run`` sets ``CI=1``) installs the dev requirements, runs as root (bind and tmpfs mounts
work) and has the real photographs beside the checkout. A test that skips there for want of one of
these hides a broken install or a moved folder, so its skip is turned into a failure that names
the reason. Skips whose reason starts with ``opt-in:`` (a long search someone asks for with an
environment variable) stay skips. The terminal summary lists every skip with its reason.
"""
from __future__ import annotations

import os

import pytest

OPT_IN = "opt-in:"


def strict_skips() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not strict_skips():
        return
    reason = skip_reason(report)
    if reason.startswith(OPT_IN):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI, which is meant to have what this test needs: {reason}\n"
                       f"(a skip is allowed under CI only when its reason starts with '{OPT_IN}')")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    mode = "skips fail under CI unless opt-in" if strict_skips() else "skips allowed (CI unset)"
    terminalreporter.write_line(f"skip policy: {len(skipped)} skipped ({mode})")
    for report in skipped:
        terminalreporter.write_line(f"  skipped {report.nodeid}: {skip_reason(report)}")
