"""Shared fixtures: where the repository and the bundled public samples are."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding ``cvs_core/``)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def samples_dir(repo_root: Path) -> Path:
    """``data/samples``: ``original/``, ``roi/``, ``train_data.csv``, ``test_data.csv``."""
    return repo_root / "data" / "samples"
