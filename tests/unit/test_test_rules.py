"""The suite's own rule: a real part that cannot be set up skips a test here, and fails it under CI."""

from __future__ import annotations

import pytest

from tests.conftest import unavailable


def test_a_missing_real_part_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: cannot make a memory cgroup here"):
        unavailable("cannot make a memory cgroup here")


def test_a_missing_real_part_skips_elsewhere(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="cannot mount a small filesystem here"):
        unavailable("cannot mount a small filesystem here")
