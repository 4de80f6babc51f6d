"""Predictor on a tiny trained model folder: frames, batching, threads, CLI, registry errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cvs_core.landmarks import N_LANDMARKS  # noqa: E402
from cvs_core.predict import Predictor  # noqa: E402
from cvs_core.preprocess import SEED_ROI_SIZE, apply_affine, invert_affine  # noqa: E402
from cvs_core.registry import WEIGHTS, ModelError, load_keras_model, read_manifest  # noqa: E402
from cvs_core.synth import render_phantom  # noqa: E402


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor(tiny_model_dir)


@pytest.fixture(scope="module")
def phantoms():
    return [render_phantom(100 + i, stage=i % 6 + 1).image for i in range(5)]


def test_predict_shapes_and_frames(predictor, phantoms):
    image = phantoms[0]
    r = predictor.predict(image)
    assert r.landmarks.shape == (N_LANDMARKS, 2) and r.landmarks_roi.shape == (N_LANDMARKS, 2)
    assert r.confidence.shape == (N_LANDMARKS,)
    assert r.raw.shape == (96, 40, N_LANDMARKS)
    assert np.isfinite(r.landmarks).all()
    # a ROI image is its own ROI frame: both frames agree
    np.testing.assert_allclose(r.landmarks, r.landmarks_roi, atol=1e-9)
    # heatmap peaks lie inside the 96×40 model input → inside the 250×600 image
    assert (r.landmarks[:, 0] >= -0.5).all() and (r.landmarks[:, 0] <= 249.5).all()
    assert (r.landmarks[:, 1] >= -0.5).all() and (r.landmarks[:, 1] <= 599.5).all()
    assert set(r.ms) >= {"preprocess", "inference", "decode", "total"}
    resp = r.response_map_roi()
    assert resp.shape == image.shape


def test_seed_roi_on_full_cephalogram(predictor, samples_dir):
    image = cv2.imread(str(samples_dir / "original" / "LC (1).jpg"), cv2.IMREAD_GRAYSCALE)
    assert image.shape[0] > 2000
    r = predictor.predict(image, roi="seed")
    pre = r.preprocessed
    assert pre.roi_image.shape == SEED_ROI_SIZE
    # landmarks (original frame) are the inverse ROI affine of landmarks_roi
    np.testing.assert_allclose(r.landmarks, apply_affine(invert_affine(pre.roi_affine), r.landmarks_roi), atol=1e-6)
    # seed ROI: original = roi / 0.5 + (0, 800) (pixel-centre convention)
    expected = (r.landmarks_roi + 0.5) / 0.5 - 0.5 + np.array([0.0, 800.0])
    np.testing.assert_allclose(r.landmarks, expected, atol=1e-6)
    # and the model-input frame round-trips
    np.testing.assert_allclose(pre.to_original(pre.to_model(r.landmarks)), r.landmarks, atol=1e-6)


def test_predict_batch_equals_single(predictor, phantoms):
    batch = predictor.predict_batch(phantoms)
    assert len(batch) == len(phantoms)
    for image, b in zip(phantoms, batch):
        s = predictor.predict(image)
        np.testing.assert_allclose(b.landmarks, s.landmarks, atol=1e-3)
        np.testing.assert_allclose(b.confidence, s.confidence, atol=1e-4)


def test_thread_safety(predictor, phantoms):
    expected = [predictor.predict(img).landmarks for img in phantoms]
    results: dict = {}
    errors: list = []

    def work(t):
        try:
            for rep in range(3):
                for i, img in enumerate(phantoms):
                    results[(t, rep, i)] = predictor.predict(img).landmarks
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors
    assert len(results) == 4 * 3 * len(phantoms)
    for (t, rep, i), lm in results.items():
        np.testing.assert_allclose(lm, expected[i], atol=1e-3)


def test_cli_predict_json(tiny_model_dir, tmp_path, repo_root):
    image = tmp_path / "phantom.png"
    cv2.imwrite(str(image), render_phantom(7, stage=3).image)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(repo_root))
    proc = subprocess.run([sys.executable, "-m", "cvs_core.cli", "predict", "--model", str(tiny_model_dir),
                           str(image), "--json"], capture_output=True, text=True, cwd=repo_root, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(payload["landmarks"]) == N_LANDMARKS
    assert all(len(p) == 2 for p in payload["landmarks"])
    assert len(payload["confidence"]) == N_LANDMARKS
    assert payload["ms"] > 0


def test_missing_manifest_is_model_error(tmp_path):
    with pytest.raises(ModelError, match="manifest.json is missing"):
        Predictor(tmp_path)


def test_sha_mismatch_is_model_error(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    with open(copy / WEIGHTS, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ModelError, match="sha256"):
        load_keras_model(copy)
    with pytest.raises(ModelError, match="sha256"):
        Predictor(copy)


def test_bad_manifest_is_model_error(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_manifest(copy)
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    del manifest["codec"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="codec"):
        Predictor(copy)


def test_cli_predict_text_on_a_regression_model(tmp_path, capsys):
    """Regression models give no confidence (NaN → null): the text output must not crash on it."""
    import keras

    from cvs_core.cli import main
    from cvs_core.codecs import RegressionCodec
    from cvs_core.preprocess import PreprocessConfig
    from cvs_core.registry import base_manifest, save_model_folder

    pre = PreprocessConfig(input_size=(48, 20), resize_first=False)
    inputs = keras.Input((48, 20, 1))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2 * N_LANDMARKS, kernel_initializer="zeros", bias_initializer="ones")(x))
    folder = save_model_folder(model, tmp_path / "reg", base_manifest(
        name="tiny_reg", architecture="inception_gap", builder_kwargs={}, preprocess=pre,
        codec=RegressionCodec(input_size=(48, 20), normalize=True)))
    image = tmp_path / "phantom.png"
    cv2.imwrite(str(image), render_phantom(7, stage=3).image)
    assert main(["predict", "--model", str(folder), str(image)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("model tiny_reg")
    assert len(out) == 1 + N_LANDMARKS + 2
    assert out[-2].startswith("WARNING")  # every landmark at one point: an implausible outline
    assert out[-1].startswith("stage")  # … and no confident stage for it
    assert out[1].startswith("C2ip") and out[1].rstrip().endswith("conf=    —")
    x = float(out[1].split("x=")[1].split()[0])
    assert abs(x - (250 - 0.5)) < 1.0  # output 1.0 = the right edge of the 250-px ROI


def test_prediction_text_marks_missing_landmarks(predictor, phantoms):
    pred = predictor.predict(phantoms[0])
    pred.landmarks[3] = np.nan
    lines = pred.to_text().splitlines()
    assert "x=       — y=       —" in lines[4] and "conf=" in lines[4]
    assert f"{pred.landmarks[0, 0]:8.2f}" in lines[1]
