"""scripts/train_inception_cpu.py end to end at toy size: backbone copied from the shipped
InceptionResNetV2, head trained on cached features, a loadable model folder with its recipe."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "inception_resnet_v2" / "model.keras"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHIPPED.is_file(), reason="needs the unpacked shipped model (cvs ensure-models)")]


def test_the_cpu_recipe_trains_a_loadable_integral_model(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_inception_cpu as recipe

    from cvs_core.predict import Predictor
    from cvs_core.registry import read_manifest

    assert recipe.main(["--work", str(tmp_path), "--train", "16", "--val", "8", "--epochs", "2", "--batch", "8",
                        "--input-size", "96", "96", "--real-repeat", "2"]) == 0
    folder = tmp_path / "model"
    manifest = read_manifest(folder)
    training = manifest["training"]
    assert manifest["architecture"] == "inception_integral" and manifest["codec"]["kind"] == "regression"
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    assert manifest["metrics"]["best_val_mre_px"] == pytest.approx(min(h["val_mre_px"] for h in training["history"]),
                                                                   abs=1e-3)
    assert training["data"]["n_train_per_epoch"] == 16 + 2 * 2 and "phantoms_per_epoch" not in training["data"]
    assert "frozen" in training["recipe"] and training["backbone_from"]["model"] == "inception_resnet_v2"
    json.dumps(manifest)  # plain JSON
    pred = Predictor.load(folder, warmup=False).predict(np.full((600, 250), 128, np.uint8))
    assert pred.landmarks.shape == (19, 2) and np.isfinite(pred.landmarks).all()


def test_copied_backbone_weights_equal_the_source():
    import keras

    sys.path.insert(0, str(ROOT / "scripts"))
    import train_inception_cpu as recipe

    from cvs_core.registry import load_keras_model

    model, copied = recipe.warm_started_model(str(SHIPPED.parent), (96, 96))
    src = load_keras_model(SHIPPED.parent)
    src_backbone = next(layer for layer in src.layers if isinstance(layer, keras.Model))
    assert copied > 400
    src_w = [layer for layer in src_backbone.layers if layer.weights]
    dst_w = [layer for layer in model.get_layer("backbone").layers if layer.weights]
    for i in (0, len(src_w) // 2, len(src_w) - 1):  # first, middle and last weighted layers
        for a, b in zip(src_w[i].get_weights(), dst_w[i].get_weights()):
            np.testing.assert_array_equal(a, b)
