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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny trained ``unet_heatmap`` model folder (96×40 input, 1 epoch on 8 phantoms; ~10 s).

    For plumbing tests (prediction, evaluation, CLI): its landmarks are not accurate."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cvs_core.preprocess import PreprocessConfig
    from cvs_core.train import TrainConfig, train

    config = TrainConfig(model="unet_heatmap", phantoms=8, val_phantoms=4, epochs=1, batch_size=4,
                         builder_kwargs=dict(base_filters=4, depth=3),
                         preprocess=PreprocessConfig(input_size=(96, 40), resize_first=False).to_dict())
    return train(config, tmp_path_factory.mktemp("tiny_model_run"), verbose=False)
