"""The shipped demo models: they load, predict 19 landmarks on the bundled samples, and (for the
U-Net) land on the annotated anatomy of LC (1) (an image they were trained on: a smoke test of
the whole chain, not a generalisation claim — see the manifests for held-out numbers)."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cvs_core.registry import SHIPPED_MODELS_DIR, ensure_demo_models  # noqa: E402

pytestmark = pytest.mark.skipif(not (SHIPPED_MODELS_DIR / "unet_heatmap" / "manifest.json").is_file(),
                                reason="demo models not present")


@pytest.fixture(scope="module", autouse=True)
def demo_models_ready():
    ensure_demo_models()


@pytest.mark.parametrize("model", ["unet_heatmap", pytest.param("inception_resnet_v2", marks=pytest.mark.slow)])
def test_cvs_predict_json(repo_root, model):
    out = subprocess.run([sys.executable, "-m", "cvs_core.cli", "predict", "--model", model,
                          str(repo_root / "data/samples/roi/LC (1).jpg"), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=repo_root)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    pts = np.array(payload["landmarks"], dtype=float)
    assert pts.shape == (19, 2) and np.isfinite(pts).all()
    assert payload["model"] == model and payload["ms"] > 0
    assert len(payload["confidence"]) == 19
    truth = pd.read_csv(repo_root / "data/samples/train_data.csv").iloc[0, 1:39].to_numpy(float).reshape(19, 2)
    errors = np.linalg.norm(pts - truth, axis=1)
    assert payload["landmark_names"][:3] == ["C2ip", "C2im", "C2ia"] and len(payload["landmark_names"]) == 19
    assert payload["stage"]["label"] in {f"CS{k}" for k in range(1, 7)}
    assert payload["stage"]["fit"] in ("exact", "borderline", "nearest") and payload["stage"]["caveat"]
    if model == "unet_heatmap":
        assert (errors <= 8).mean() >= 0.9  # SDR@2 mm at the nominal 0.25 mm/px
        from cvs_core.staging import stage_landmarks
        assert payload["stage"]["label"] == stage_landmarks(truth).label  # LC (1): the expert landmarks' stage
    else:
        assert np.median(errors) < 40  # on the vertebrae, not somewhere in the image


def test_full_cephalogram_with_seed_roi_maps_back_to_the_original(repo_root):
    from cvs_core.imaging import read_image
    from cvs_core.predict import Predictor

    pred = Predictor.load("unet_heatmap")
    full = pred.predict(read_image(repo_root / "data/samples/original/LC (1).jpg").pixels, roi="seed")
    roi = pred.predict(read_image(repo_root / "data/samples/roi/LC (1).jpg").pixels)
    assert np.nanmax(np.abs(full.landmarks_roi - roi.landmarks_roi)) < 3.0  # JPEG re-encoding differences
    np.testing.assert_allclose(full.landmarks, 2 * full.landmarks_roi + [0.5, 800.5], atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_landmarks_under_another_backend(repo_root, backend):
    pytest.importorskip(backend)
    script = ("import json, cv2; from cvs_core.predict import Predictor; "
              "img = cv2.imread('data/samples/roi/LC (1).jpg', 0); "
              "print(json.dumps([Predictor.load(m).predict(img).landmarks.tolist() "
              "for m in ('unet_heatmap', 'inception_resnet_v2')]))")
    results = {}
    for be in ("tensorflow", backend):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                             cwd=repo_root, env={**os.environ, "KERAS_BACKEND": be})
        assert out.returncode == 0, out.stderr[-2000:]
        results[be] = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    assert np.abs(results["tensorflow"] - results[backend]).max() < 0.1
