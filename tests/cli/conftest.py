"""Shared fixtures of the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_cases import ROOT


@pytest.fixture
def project_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the repository, as a user does."""
    monkeypatch.chdir(ROOT)
    return ROOT
