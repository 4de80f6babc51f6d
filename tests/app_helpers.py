"""Helpers shared by the app tests (AppTest and browser): tiny registered models."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def make_tiny_models(home: Path) -> list[str]:
    """Register ``tiny_unet`` (untrained unet_heatmap, 96×40) and ``mean_shape`` (regressor that always
    answers the mean shape) under ``home/models``. Returns their names."""
    import keras

    from cvs_core import registry
    from cvs_core.codecs import HeatmapCodec, RegressionCodec
    from cvs_core.landmarks import MEAN_SHAPE_ROI, ROI_SIZE
    from cvs_core.networks import build_model
    from cvs_core.preprocess import PreprocessConfig, apply_affine, resize_affine

    os.environ["CVS_HOME"] = str(home)
    size = (96, 40)
    pre = PreprocessConfig(input_size=size, resize_first=False)
    keras.utils.set_random_seed(0)
    unet = build_model("unet_heatmap", input_size=size, base_filters=4, depth=2)
    head = unet.get_layer("heatmaps")  # positive bias: every heatmap has a positive peak, so 19 points decode
    kernel, bias = head.get_weights()
    head.set_weights([kernel, np.full_like(bias, 0.5)])
    registry.save_model_folder(unet, registry.user_models_dir() / "tiny_unet", registry.base_manifest(
        "tiny_unet", "unet_heatmap", dict(input_size=size, base_filters=4, depth=2), pre, HeatmapCodec(input_size=size),
        metrics={}, training={"data": {"note": "untrained test model"}}))

    codec = RegressionCodec(input_size=size, normalize=True)
    target = codec.encode(apply_affine(resize_affine(ROI_SIZE, size), np.asarray(MEAN_SHAPE_ROI)))
    inp = keras.Input((*size, 1))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(38, name="coords")(x)
    reg = keras.Model(inp, out)
    reg.get_layer("coords").set_weights([np.zeros((1, 38), np.float32), np.asarray(target, np.float32)])
    registry.save_model_folder(reg, registry.user_models_dir() / "mean_shape", registry.base_manifest(
        "mean_shape", "mean_shape_regressor", {}, pre, codec, metrics={}, training={}))
    return ["tiny_unet", "mean_shape"]
