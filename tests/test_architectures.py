"""The architecture table: every consumer reads it, so a new architecture is one entry."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cvs_core import architectures  # noqa: E402
from cvs_core.architectures import ARCHITECTURES, ArchSpec, family_of, get_arch  # noqa: E402
from cvs_core.preprocess import PreprocessConfig  # noqa: E402


def build_toy_regressor(input_size=(48, 20), width: int = 4):
    """A toy architecture: two convolutions, global pooling, 38 normalised coordinates."""
    import keras
    from keras import layers

    inputs = keras.Input((*input_size, 1), name="image")
    x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(38, name="coords")(x)
    return keras.Model(inputs, outputs, name="toy_regressor")


TOY_PRE = PreprocessConfig(input_size=(48, 20), resize_first=False).to_dict()
TOY = ArchSpec(
    name="toy_regressor", family="inception", builder=build_toy_regressor,
    codec=architectures.normalised_regression_codec, loss=architectures.regression_loss,
    presets={p: dict(epochs=1, lr=1e-3, batch_size=2, augment=False, preprocess=TOY_PRE)
             for p in ("seed", "improved")},
    help="a toy regressor for the test")


def test_a_new_architecture_is_one_entry(tmp_path, monkeypatch):
    """Register a toy architecture in the table only, then train one tiny step, save, reload,
    predict, pack/unpack and look up its family: nothing else needs to know about it."""
    from cvs_core import registry
    from cvs_core.packing import pack_weights
    from cvs_core.registry import unpack_model_folder
    from cvs_core.predict import Predictor
    from cvs_core.synth import render_phantom
    from cvs_core.train import TrainConfig, preset_defaults, train

    monkeypatch.setitem(ARCHITECTURES, "toy_regressor", TOY)
    config = TrainConfig(model="toy_regressor", preset="improved", phantoms=2, steps_per_epoch=1)
    assert (config.epochs, config.batch_size, config.preprocess) == (1, 2, TOY_PRE)
    assert preset_defaults("toy_regressor", "seed")["lr"] == 1e-3
    folder = train(config, tmp_path / "run", verbose=False)
    manifest = registry.read_manifest(folder)
    assert manifest["architecture"] == "toy_regressor"
    assert manifest["builder_kwargs"] == {"input_size": [48, 20], "width": 4}
    assert manifest["codec"] == {"input_size": [48, 20], "normalize": True, "kind": "regression"}

    phantom = render_phantom(5)
    predictor = Predictor(folder, warmup=False)
    assert predictor.family == "inception"
    pred = predictor.predict(phantom.image)
    assert pred.landmarks.shape == (19, 2) and np.isfinite(pred.landmarks).all()
    assert np.isnan(pred.confidence).all()  # regression gives no confidence

    # packed weights are rebuilt from the table too
    model = registry.load_keras_model(folder)
    packed_dir = tmp_path / "packed"
    manifest["packed_weights"] = pack_weights(model, packed_dir)
    manifest.pop("weights_sha256")
    registry.write_manifest(packed_dir, manifest)
    unpack_model_folder(packed_dir)
    again = Predictor(packed_dir, warmup=False).predict(phantom.image)
    assert np.abs(again.landmarks - pred.landmarks).max() < 1.0  # int8 weights: close, not equal


def test_table_entries_are_consistent():
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name and spec.family in architectures.FAMILIES and spec.help
        for preset in architectures.PRESETS:
            d = spec.preset(preset)
            from dataclasses import fields as dc_fields
            from cvs_core.train import TrainConfig
            # the five every preset sets, plus optional TrainConfig fields (e.g. lr_schedule)
            assert {"epochs", "lr", "batch_size", "augment", "preprocess"} <= set(d) <= {f.name for f in dc_fields(TrainConfig)}
            codec = spec.make_codec(PreprocessConfig.from_dict(d["preprocess"]).input_size)
            assert codec.kind in ("mask", "heatmap", "regression")
        spec.preset("seed")["preprocess"]["input_size"] = "changed"  # a copy: the table is untouched
        assert spec.preset("seed")["preprocess"]["input_size"] != "changed"
    assert {n: s.family for n, s in ARCHITECTURES.items()} == {
        "unet_heatmap": "unet", "unet_seed": "unet", "inception_gap": "inception", "inception_seed": "inception",
        "inception_integral": "inception"}


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet'.*inception_gap.*unet_seed"):
        get_arch("resnet")
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        get_arch("unet_seed").preset("fast")
    with pytest.raises(ValueError, match="family"):
        ArchSpec(name="x", family="vit", builder=build_toy_regressor, codec=architectures.mask_codec,
                 loss=architectures.dice_loss, presets={"seed": {}, "improved": {}})


def test_family_of_manifests():
    assert family_of({"architecture": "unet_seed", "codec": {"kind": "mask"}}) == "unet"
    assert family_of({"architecture": "inception_gap", "codec": {"kind": "regression"}}) == "inception"
    # an architecture not in the table (e.g. an uploaded model from elsewhere): from the codec
    assert family_of({"architecture": "someone_elses", "codec": {"kind": "heatmap"}}) == "unet"
    assert family_of({"architecture": "someone_elses", "codec": {"kind": "regression"}}) == "inception"
