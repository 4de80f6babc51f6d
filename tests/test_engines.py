"""Inference engines behind the Predictor: same landmarks as TensorFlow, cached exports, clear errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cvs_core.engines import CACHE_DIRNAME, ONNX_FILE, EngineError, cache_dir, check_engine, weights_key
from cvs_core.predict import Predictor
from cvs_core.synth import render_phantom

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_copy(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model in a folder of its own, so its engine cache lives in a temporary folder."""
    dst = tmp_path_factory.mktemp("engines") / "tiny"
    shutil.copytree(tiny_model_dir, dst)
    return dst


@pytest.fixture(scope="module")
def tf_predictor(model_copy):
    return Predictor(model_copy)


@pytest.fixture(scope="module")
def images():
    return [render_phantom(seed).image for seed in (3, 4, 5)]


def test_unknown_engine_is_a_clear_error(model_copy):
    with pytest.raises(EngineError, match=r"unknown inference engine 'tensorrt'.*tf, tf-xla, onnx, openvino"):
        Predictor(model_copy, engine="tensorrt")
    assert check_engine("TF") == "tf"


def test_cache_is_keyed_by_the_weights_sha256(model_copy):
    import json

    sha = json.loads((model_copy / "manifest.json").read_text())["weights_sha256"]
    assert weights_key(model_copy) == sha
    assert cache_dir(model_copy) == model_copy / CACHE_DIRNAME / sha[:16]
    assert cache_dir(model_copy, key="f" * 64).name == "f" * 16


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_exported_engine_matches_tensorflow(engine, model_copy, tf_predictor, images):
    pytest.importorskip("onnxruntime" if engine == "onnx" else "openvino")
    pytest.importorskip("tf2onnx")
    pred = Predictor(model_copy, engine=engine)
    onnx_path = cache_dir(model_copy) / ONNX_FILE
    assert onnx_path.is_file()
    mtime = onnx_path.stat().st_mtime_ns
    ref = tf_predictor.predict_batch(images)
    got = pred.predict_batch(images)
    for r, g in zip(ref, got):
        assert np.allclose(r.raw, g.raw, atol=1e-4)
        both = np.isfinite(r.landmarks) & np.isfinite(g.landmarks)
        assert (np.isfinite(r.landmarks) == np.isfinite(g.landmarks)).all()
        assert np.abs(r.landmarks[both] - g.landmarks[both]).max() < 0.01
    # batch of one vs batch of three give the same output (dynamic batch dimension)
    assert np.allclose(pred.predict(images[1]).raw, got[1].raw, atol=1e-5)
    Predictor(model_copy, engine=engine, warmup=False)  # second load reuses the export
    assert onnx_path.stat().st_mtime_ns == mtime


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_shipped_unet_same_landmarks_on_the_samples(engine, tmp_path, samples_dir):
    pytest.importorskip("onnxruntime" if engine == "onnx" else "openvino")
    pytest.importorskip("tf2onnx")
    from cvs_core.imaging import read_image

    src = REPO / "models" / "unet_heatmap"
    if not (src / "model.keras").is_file():
        pytest.skip("shipped U-Net not present")
    folder = tmp_path / "unet_heatmap"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns(CACHE_DIRNAME))
    images = [read_image(p).as_uint8() for p in sorted((samples_dir / "roi").glob("*.jpg"))]
    ref = np.stack([p.landmarks for p in Predictor(folder).predict_batch(images)])
    got = np.stack([p.landmarks for p in Predictor(folder, engine=engine).predict_batch(images)])
    assert np.nanmax(np.abs(ref - got)) < 0.01


def test_streamlit_patch_keeps_the_keras_session(monkeypatch):
    """Root cause of the in-app slowdown: Streamlit clears the Keras session (and with it TensorFlow's
    compiled kernels) after every script run; the app's patch stops that, and only that."""
    pytest.importorskip("streamlit")
    import keras
    from streamlit.runtime.scriptrunner import script_runner

    from app_pages.tf_patch import keep_tf_kernels_across_reruns

    calls = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: calls.append(1))
    # the app's pages may have patched this process already (AppTest runs them in-process)
    stock = getattr(script_runner._clean_problem_modules, "_original", script_runner._clean_problem_modules)
    monkeypatch.setattr(script_runner, "_clean_problem_modules", stock)
    script_runner._clean_problem_modules()
    assert calls == [1]  # Streamlit as shipped clears the session after a script run
    assert keep_tf_kernels_across_reruns() is True
    assert keep_tf_kernels_across_reruns() is True  # idempotent
    script_runner._clean_problem_modules()
    assert calls == [1]


def test_load_async_returns_a_future_predictor(model_copy, images, tf_predictor):
    future = Predictor.load_async(model_copy)
    pred = future.result(timeout=300)
    assert isinstance(pred, Predictor)
    assert np.allclose(pred.predict(images[0]).raw, tf_predictor.predict(images[0]).raw, atol=1e-6)
    bad = Predictor.load_async(model_copy / "missing")
    from cvs_core.registry import ModelError

    with pytest.raises(ModelError, match="no model named"):
        bad.result(timeout=60)


def test_large_batches_run_in_chunks_with_the_same_output(model_copy, images, tf_predictor):
    whole = Predictor(model_copy, max_batch=0)
    chunked = Predictor(model_copy, max_batch=2)
    calls = []
    inner = chunked._call
    chunked._call = lambda x: calls.append(len(x)) or inner(x)
    five = images + images[:2]
    a = [p.raw for p in whole.predict_batch(five)]
    b = [p.raw for p in chunked.predict_batch(five)]
    assert calls == [2, 2, 1]
    assert np.allclose(a, b, atol=1e-5)
    from cvs_core.engines import default_max_batch

    assert tf_predictor.max_batch == default_max_batch() in (0, 2)  # 2 on a CPU-only TensorFlow


def test_an_export_that_computes_something_else_is_refused(tf_predictor):
    """OpenVINO ran the ONNX export of the integral-head InceptionResNetV2 and returned landmarks 22 px
    off: an exported engine is checked against the Keras model before it is used."""
    from cvs_core.engines import EXPORT_TOLERANCE, check_against_keras, tf_runner

    model = tf_predictor.model
    exact = tf_runner(model)
    check_against_keras(exact, model)  # the same computation passes
    check_against_keras(lambda x: exact(x) + EXPORT_TOLERANCE / 2, model)  # rounding-size drift passes
    with pytest.raises(EngineError, match="differs from the Keras model"):
        check_against_keras(lambda x: exact(x) + 0.05, model, "openvino")
    with pytest.raises(EngineError, match="differs"):
        check_against_keras(lambda x: exact(x)[:, :1], model)  # wrong output shape
