"""Model folders, legacy .h5 loading (fixtures written by tf_keras), int8 weight packing."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cvs_core import registry  # noqa: E402
from cvs_core.packing import dequantize, pack_weights, quantize  # noqa: E402
from cvs_core.registry import unpack_model_folder  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def legacy_io():
    return np.load(FIXTURES / "legacy_unet_io.npz")


def test_full_legacy_h5_loads_with_dice_loss_and_gives_the_same_output(legacy_io):
    model = registry.load_legacy_h5(FIXTURES / "legacy_unet_full.h5")
    np.testing.assert_allclose(model.predict(legacy_io["x"], verbose=0), legacy_io["y"], atol=1e-5)


def test_weights_only_legacy_h5_needs_and_uses_the_architecture(legacy_io):
    with pytest.raises(registry.ModelError, match="weights only"):
        registry.load_legacy_h5(FIXTURES / "legacy_unet_weights.h5")
    model = registry.load_legacy_h5(FIXTURES / "legacy_unet_weights.h5", "unet_seed",
                                    dict(input_size=(32, 32), n_filters=4))
    np.testing.assert_allclose(model.predict(legacy_io["x"], verbose=0), legacy_io["y"], atol=1e-5)
    with pytest.raises(registry.ModelError, match="do not fit"):
        registry.load_legacy_h5(FIXTURES / "legacy_unet_weights.h5", "unet_seed",
                                dict(input_size=(32, 32), n_filters=8))


def test_not_an_h5_file(tmp_path):
    bad = tmp_path / "model.h5"
    bad.write_text("not hdf5")
    with pytest.raises(registry.ModelError, match="not an HDF5"):
        registry.load_legacy_h5(bad)


def test_quantize_error_is_below_half_a_step():
    w = np.random.default_rng(0).normal(0, 0.05, (3, 3, 16, 32)).astype(np.float32)
    q, s = quantize(w)
    assert q.dtype == np.int8 and s.shape == (32,)
    assert np.all(np.abs(dequantize(q, s) - w) <= s / 2 + 1e-9)


def test_pack_unpack_round_trip(tmp_path, tiny_model_dir):
    import keras

    model = registry.load_keras_model(tiny_model_dir)
    folder = tmp_path / "packed"
    packed = pack_weights(model, folder, max_shard_bytes=20_000)
    assert len(packed["files"]) > 1  # sharded
    manifest = registry.read_manifest(tiny_model_dir)
    manifest["packed_weights"] = packed
    manifest.pop("weights_sha256")
    registry.write_manifest(folder, manifest)
    rebuilt = keras.saving.load_model(unpack_model_folder(folder), compile=False)
    x = np.random.default_rng(1).random((1, *model.input_shape[1:])).astype(np.float32)
    a, b = model.predict(x, verbose=0), rebuilt.predict(x, verbose=0)
    # int8 with one scale per output channel: a few % of the output range on a tiny, barely trained
    # net (a broken unpack — wrong shard order, scales, layer mapping — gives garbage, far above this)
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    # a corrupted shard is caught by its sha256
    shard = folder / packed["files"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    (folder / "model.keras").unlink()
    with pytest.raises(ValueError, match="sha256"):
        unpack_model_folder(folder)


def test_register_list_and_delete_user_models(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("CVS_HOME", str(tmp_path))
    dst = registry.register_model_folder(tiny_model_dir, "my_model")
    assert json.loads((dst / "manifest.json").read_text())["name"] == "my_model"
    assert "my_model" in [m.name for m in registry.list_models()]
    assert registry.resolve_model("my_model") == dst
    with pytest.raises(registry.ModelError, match="exists already"):
        registry.register_model_folder(tiny_model_dir, "my_model")
    with pytest.raises(registry.ModelError, match="shipped model"):
        registry.register_model_folder(tiny_model_dir, "unet_heatmap")
    with pytest.raises(registry.ModelError, match="invalid model name"):
        registry.register_model_folder(tiny_model_dir, "../evil")
    registry.delete_model("my_model")
    with pytest.raises(registry.ModelError, match="no model named"):
        registry.resolve_model("my_model")
    with pytest.raises(registry.ModelError, match="cannot be deleted"):
        registry.delete_model("unet_heatmap")


def test_manifest_with_other_schema_is_rejected(tmp_path, tiny_model_dir):
    manifest = registry.read_manifest(tiny_model_dir)
    manifest["landmark_schema"] = "isbi19-v0"
    registry.write_manifest(tmp_path, manifest)
    with pytest.raises(registry.ModelError, match="landmark schema"):
        registry.read_manifest(tmp_path)


# --- registering an uploaded model file ---------------------------------------------------------

def test_register_uploaded_keras_file(tmp_path, monkeypatch, tiny_model_dir):
    from cvs_core.predict import Predictor

    monkeypatch.setenv("CVS_HOME", str(tmp_path))
    data = (tiny_model_dir / "model.keras").read_bytes()
    dst = registry.register_model_file(data, "uploaded", "unet_heatmap", preset="improved",
                                       source_name="my_unet.keras")
    manifest = registry.read_manifest(dst)
    assert manifest["architecture"] == "unet_heatmap" and manifest["uploaded_from"] == "my_unet.keras"
    assert manifest["codec"]["kind"] == "heatmap" and manifest["codec"]["input_size"] == [96, 40]
    assert manifest["preprocess"]["input_size"] == [96, 40] and manifest["preprocess"]["channels"] == 1
    assert manifest["weights_sha256"] == registry.sha256_file(dst / "model.keras")
    image = np.random.default_rng(0).integers(0, 255, (600, 250), dtype=np.uint8)
    a = Predictor(dst, warmup=False).predict(image)
    b = Predictor(tiny_model_dir, warmup=False).predict(image)
    np.testing.assert_allclose(a.raw, b.raw, atol=1e-6)
    # the same name again
    with pytest.raises(registry.ModelError, match="exists already"):
        registry.register_model_file(data, "uploaded", "unet_heatmap", source_name="my_unet.keras")
    # a path works as well as bytes, and the codec must fit the model's output
    with pytest.raises(registry.ModelError, match=r"outputs \(96, 40, 19\), but a regression codec needs \(38,\)"):
        registry.register_model_file(tiny_model_dir / "model.keras", "other", "inception_gap")


def test_register_uploaded_legacy_h5(tmp_path, monkeypatch, legacy_io):
    monkeypatch.setenv("CVS_HOME", str(tmp_path))
    dst = registry.register_model_file(FIXTURES / "legacy_unet_full.h5", "study_unet", "unet_seed", preset="seed")
    manifest = registry.read_manifest(dst)
    assert manifest["codec"]["kind"] == "mask" and manifest["codec"]["input_size"] == [32, 32]
    assert manifest["preprocess"]["input_size"] == [32, 32]
    assert manifest["preprocess"]["clahe"] and manifest["preprocess"]["resize_first"]  # the study's U-Net preset
    model = registry.load_keras_model(dst)
    np.testing.assert_allclose(model.predict(legacy_io["x"], verbose=0), legacy_io["y"], atol=1e-5)
    # weights only: the builder arguments come as the form's JSON text
    dst = registry.register_model_file(FIXTURES / "legacy_unet_weights.h5", "study_unet_w", "unet_seed",
                                       builder_kwargs='{"input_size": [32, 32], "n_filters": 4}')
    assert registry.read_manifest(dst)["builder_kwargs"] == {"input_size": [32, 32], "n_filters": 4}


def test_register_uploaded_csv_renamed_keras_gives_a_clean_message(tmp_path, monkeypatch, samples_dir):
    import tempfile

    monkeypatch.setenv("CVS_HOME", str(tmp_path))
    data = (samples_dir / "train_data.csv").read_bytes()
    with pytest.raises(registry.ModelError) as info:
        registry.register_model_file(data, "csv_model", "unet_heatmap", source_name="labels.keras")
    message = str(info.value)
    assert "labels.keras" in message and "not a Keras 3 .keras file" in message
    assert tempfile.gettempdir() not in message and "cvs_upload_" not in message
    with pytest.raises(registry.ModelError) as info:
        registry.register_model_file(data, "csv_model", "unet_seed", source_name="labels.h5")
    assert "labels.h5" in str(info.value) and "cvs_upload_" not in str(info.value)
    with pytest.raises(registry.ModelError, match="expected a .keras or .h5 file"):
        registry.register_model_file(data, "csv_model", "unet_seed", source_name="labels.csv")
    with pytest.raises(registry.ModelError, match="unknown architecture"):
        registry.register_model_file(data, "csv_model", "resnet", source_name="m.keras")
    with pytest.raises(registry.ModelError, match="not valid JSON"):
        registry.register_model_file(data, "csv_model", "unet_seed", builder_kwargs="{", source_name="m.h5")
    assert registry.list_models() == [m for m in registry.list_models() if m.shipped]
