"""The system tier: real systemd in nspawn, systemd-analyze, Ansible, an arm64 chroot. `make system` runs it."""

from __future__ import annotations

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
