"""The repository's tests stand alone: nothing outside the repository is read, and a test whose server
cannot run on this machine is skipped with the reason (failed under CI, where `.ci/run` installs all)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import PROJECT
from tests.support.servers import require_servers

ROOT = PROJECT


def test_no_code_or_test_reads_outside_the_repository():
    pattern = re.compile(r"\.\./shared|[\"']shared[\"']\s*/|parents\[2\]")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("tests", "stacchip_assets", "benchmarks")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "test_self_contained.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
    assert (ROOT / "tests" / "support" / "fixtures" / "stac-items" / "MANIFEST.tsv").is_file()


def test_a_missing_server_skips_with_the_reason_outside_ci(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no `weed`, `psql`, `uvicorn` ... on this PATH
    for value in (None, "", "0", "false"):
        if value is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.skip.Exception, match=r"missing: weed \(\.ci/run installs them\)"):
            require_servers("s3")
        with pytest.raises(pytest.skip.Exception, match="missing: uvicorn, pypgstac, psql"):
            require_servers("pgstac")


def test_a_missing_server_fails_under_ci(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    for value in ("1", "true"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match=r"CI is set and the test needs s3 servers, but missing: weed"):
            require_servers("s3")


def test_servers_that_are_here_neither_skip_nor_fail(monkeypatch):
    from tests.support.servers import servers_available

    if servers_available("s3") is not None:
        pytest.skip(servers_available("s3"))
    monkeypatch.setenv("CI", "1")
    assert require_servers("s3") is None
