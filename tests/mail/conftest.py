"""Shared by the mail tests: a private data directory for every test (the dev CA is made fresh)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("SOCKETKIT_DATA", str(path))
    return path
