"""Architecture builders: parameter counts of the study's models, output shapes, name mapping."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from cvs_core import networks  # noqa: E402
from cvs_core.landmarks import N_LANDMARKS  # noqa: E402
from cvs_core.networks import BUILDERS, IMAGENET_NOTOP, build_model, imagenet_weights_path  # noqa: E402


def _trainable(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_unet_seed_parameter_count():
    model = build_model("unet_seed", input_size=(256, 256), n_filters=64)
    assert model.count_params() == 37_636_801
    assert _trainable(model) == 37_623_233
    assert model.input_shape == (None, 256, 256, 1)
    assert model.output_shape == (None, 256, 256, 1)


@pytest.mark.parametrize("size,depth", [((96, 40), 3), ((384, 160), 4)])
def test_unet_heatmap_output_shape(size, depth):
    model = build_model("unet_heatmap", input_size=size, base_filters=4, depth=depth)
    assert model.output_shape == (None, *size, N_LANDMARKS)
    out = model(np.zeros((2, *size, 1), np.float32))
    assert tuple(out.shape) == (2, *size, N_LANDMARKS)


@pytest.mark.slow
def test_inception_seed_parameter_count(monkeypatch, tmp_path):
    monkeypatch.delenv("CVS_IMAGENET_WEIGHTS", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no local ImageNet weights → random init, no download
    model = build_model("inception_seed", input_size=(600, 250))
    assert model.count_params() == 215_314_182
    backbone = model.get_layer("inception_resnet_v2")
    assert backbone.output_shape == (None, 17, 6, 1536)
    assert model.output_shape == (None, 2 * N_LANDMARKS)
    assert not model.imagenet_loaded


def test_inception_gap_small_input(monkeypatch, tmp_path):
    monkeypatch.delenv("CVS_IMAGENET_WEIGHTS", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    model = build_model("inception_gap", input_size=(96, 96))
    assert model.input_shape == (None, 96, 96, 3)
    assert model.output_shape == (None, 2 * N_LANDMARKS)


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet_nope")
    assert set(BUILDERS) == {"unet_seed", "unet_heatmap", "inception_seed", "inception_gap", "inception_integral"}


def test_imagenet_weights_path_env_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("CVS_IMAGENET_WEIGHTS", raising=False)
    assert imagenet_weights_path() is None
    weights = tmp_path / "mine.h5"
    weights.write_bytes(b"x")
    monkeypatch.setenv("CVS_IMAGENET_WEIGHTS", str(weights))
    assert imagenet_weights_path() == weights
    monkeypatch.setenv("CVS_IMAGENET_WEIGHTS", str(tmp_path / "absent.h5"))
    assert imagenet_weights_path() is None
    cached = tmp_path / "keras_home" / "models" / IMAGENET_NOTOP
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert imagenet_weights_path() == cached


def test_imagenet_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("CVS_IMAGENET_WEIGHTS", raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        networks._backbone((96, 96, 3), imagenet=True)


def test_dice_loss_matches_numpy():
    from cvs_core.metrics import dice_loss_value

    rng = np.random.default_rng(0)
    t = (rng.random((2, 8, 8, 1)) > 0.7).astype(np.float32)
    p = rng.random((2, 8, 8, 1)).astype(np.float32)
    got = float(keras.ops.convert_to_numpy(networks.dice_loss(t, p)))
    assert got == pytest.approx(dice_loss_value(p, t), rel=1e-5)
