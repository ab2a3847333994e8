"""The system tier: real systemd in nspawn, systemd-analyze, Ansible, an arm64 chroot. `make system` runs it."""

from __future__ import annotations

import os

import pytest

PROVED: list[str] = []


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/system/" in str(item.fspath):
            item.add_marker(pytest.mark.system)
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.timeout(3600))  # first runs debootstrap; later ones reuse its tarball


@pytest.fixture
def proved():
    """Call with a sentence for each thing a test showed; the summary lists them all."""
    return PROVED.append


def pytest_terminal_summary(terminalreporter):
    if PROVED:
        terminalreporter.section("system tier: what was proved")
        for line in PROVED:
            terminalreporter.write_line(f"PROVED  {line}")
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.section("system tier: what was skipped and why")
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    """With EDGESLM_SYSTEM_STRICT=1 (.ci/run sets it: root, tools installed) a skip fails the run, except the
    arm64 check on a kernel that cannot register binfmt; a run that collected nothing (exit 5) fails anyway."""
    if not os.environ.get("EDGESLM_SYSTEM_STRICT") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    refused = [r.nodeid for r in skipped if "binfmt" not in str(r.longrepr)]
    if refused:
        if reporter is not None:
            reporter.write_line(f"FAILED (EDGESLM_SYSTEM_STRICT): skipped in CI: {', '.join(refused)}", red=True)
        session.exitstatus = 1
