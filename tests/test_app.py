"""The Streamlit app, page by page, with streamlit.testing.v1.AppTest (no browser).

Models are tiny and made here (CVS_HOME points to a temporary folder): an untrained 4-filter U-Net
heatmap model and a "mean-shape regressor" (a Dense layer whose bias is the mean landmark shape), so
every page has two models to compare without the shipped demo models.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 120


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


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """CVS_HOME with the two tiny models; the shipped demo models are hidden (the tests must not
    depend on them, and loading the 215 M-parameter InceptionResNetV2 would cost the time budget)."""
    from cvs_core import registry

    old = os.environ.get("CVS_HOME")
    old_shipped = registry.SHIPPED_MODELS_DIR
    h = tmp_path_factory.mktemp("cvs_home")
    registry.SHIPPED_MODELS_DIR = h / "no_shipped_models"
    make_tiny_models(h)
    yield h
    registry.SHIPPED_MODELS_DIR = old_shipped
    if old is None:
        os.environ.pop("CVS_HOME", None)
    else:
        os.environ["CVS_HOME"] = old


def app(page: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def texts(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption]
                     + [str(m.value) for m in at.metric])


@pytest.mark.parametrize("page", ["pages/home.py", "pages/compare.py", "pages/clahe_lab.py",
                                  "pages/evaluation.py", "pages/training.py", "pages/models.py"])
def test_every_page_loads(home, page):
    at = app(page)
    assert not at.error, [e.value for e in at.error]


def test_pages_without_models_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CVS_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr("cvs_core.registry.SHIPPED_MODELS_DIR", tmp_path / "no_shipped")
    for page in ("pages/compare.py", "pages/evaluation.py"):
        at = app(page)
        assert any("No model is registered" in w.value for w in at.warning)


def _landmark_table(at):
    tables = [d.value for d in at.dataframe if "landmark" in d.value.columns]
    assert tables, "no landmark table rendered"
    return tables[0]


def test_compare_sample_two_models_and_stage(home):
    at = app("pages/compare.py")
    at.selectbox(key="cmp_sample").set_value("LC (1).jpg").run()
    assert not at.exception and not at.error
    table = _landmark_table(at)
    assert len(table) == 19
    for m in ("tiny_unet", "mean_shape"):
        assert table[f"{m} x"].notna().sum() == 19 and table[f"{m} y"].notna().sum() == 19
        assert f"{m} err px" in table  # LC (1) has ground truth
    stages = [m.value for m in at.metric if m.label == "CVM stage"]
    assert len(stages) == 3 and all(s.startswith("CS") for s in stages)  # two models + truth
    body = texts(at)
    assert "estimate" in body  # the caveat is always shown
    assert "Growth:" in body and "Why:" in body
    assert "0.25 mm/px" in body
    # full cephalogram with the study preset: same ROI frame, so truth still applies
    at.radio(key="cmp_sample_kind").set_value("Full cephalogram").run()
    assert not at.exception and not at.error
    assert len(_landmark_table(at)) == 19
    # downloads exist
    labels = [b.label for b in at.get("download_button")]
    assert any(lbl.endswith(".csv") for lbl in labels) and "overlay.png" in labels and "report.json" in labels


def test_compare_phantom_shows_generated_stage(home):
    at = app("pages/compare.py")
    at.radio(key="cmp_source").set_value("Phantom").run()
    assert not at.exception and not at.error
    assert any(m.label == "generated as" and m.value.startswith("CS") for m in at.metric)
    assert len(_landmark_table(at)) == 19


def test_compare_upload_good_then_bad(home, samples_dir):
    at = app("pages/compare.py")
    at.radio(key="cmp_source").set_value("Upload").run()
    assert any("Upload an image" in i.value for i in at.info)
    # a corrupt file: the library's message, the page keeps working
    at.file_uploader(key="cmp_upload").set_value(("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")).run()
    assert not at.exception
    assert any("broken.png" in e.value for e in at.error), [e.value for e in at.error]
    # a good one
    data = (samples_dir / "roi" / "LC (11).jpg").read_bytes()
    at.file_uploader(key="cmp_upload").set_value(("LC (11).jpg", data, "image/jpeg")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(_landmark_table(at)) == 19
    assert "cmp_uploaded" in at.session_state
    kept = at.session_state["cmp_uploaded"]
    assert kept.image.dtype == np.uint8 and kept.image.shape == (600, 250)
    # a wrong ground-truth CSV: error, page still shows the predictions
    at.file_uploader(key="cmp_truth_csv").set_value(("truth.csv", b"name,a,b\n1,2,3\n", "text/csv")).run()
    assert not at.exception
    assert any("ground-truth" in e.value for e in at.error)
    assert len(_landmark_table(at)) == 19
    # the matching study CSV row gives errors to truth
    csv = (samples_dir / "train_data.csv").read_bytes()
    at.file_uploader(key="cmp_truth_csv").set_value(("train_data.csv", csv, "text/csv")).run()
    assert not at.exception and not at.error
    assert "mean_shape err px" in _landmark_table(at)


def test_decode_upload_downscales_and_keeps_spacing():
    import cv2

    from cvs_core.imaging import ImageError
    from pages.ui import decode_upload

    big = (np.random.default_rng(0).random((3000, 1200)) * 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", big)
    inp = decode_upload("big.png", png.tobytes(), kind="full", max_side=1500)
    assert inp.image.shape == (1500, 600) and inp.scale == pytest.approx(0.5)
    assert any("downscaled" in n for n in inp.notes)
    with pytest.raises(ImageError, match="junk.jpg"):
        decode_upload("junk.jpg", b"\xff\xd8\xff\xe0 junk")


def test_clahe_lab_settings_reach_compare(home):
    at = app("pages/clahe_lab.py")
    at.slider(key="lab_clip").set_value(4.0).run()
    at.toggle(key="lab_bilateral").set_value(True).run()
    assert not at.exception
    at.button(key="lab_use").click().run()
    stored = at.session_state["lab_preprocess"]
    assert stored["clahe_clip"] == 4.0 and stored["bilateral"] is True
    at.toggle(key="lab_live").set_value(True).run()
    assert not at.exception and not at.error
    assert any(m.label.startswith("mean shift") for m in at.metric)
    at.switch_page("pages/compare.py").run()
    at.toggle(key="cmp_use_lab").set_value(True).run()
    assert not at.exception and not at.error
    assert len(_landmark_table(at)) == 19


def test_pck_slider_rescoring_needs_no_inference(home, monkeypatch):
    from cvs_core.predict import Predictor

    calls = {"n": 0}
    original = Predictor.predict_batch

    def counting(self, images, roi=None):
        calls["n"] += 1
        return original(self, images, roi=roi)

    monkeypatch.setattr(Predictor, "predict_batch", counting)
    import shutil

    shutil.rmtree(home / "cache" / "predictions", ignore_errors=True)  # filled by the page-load test
    at = app("pages/evaluation.py")
    assert not at.error, [e.value for e in at.error]
    at.radio(key="eval_kind").set_value("Phantoms").run()
    at.number_input(key="eval_n").set_value(6).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert calls["n"] >= 2  # 6 phantoms, run once per model
    after_first = calls["n"]
    at.radio(key="eval_unit").set_value("px").run()

    def pcks():
        return [m.value for m in at.metric if m.label.startswith("PCK @")]

    at.slider(key="eval_t_px").set_value(2.0).run()
    low = pcks()
    at.slider(key="eval_t_px").set_value(40.0).run()
    high = pcks()
    assert len(low) == 2 and low != high
    assert calls["n"] == after_first, "moving the threshold re-ran a model"
    assert any("The study reported" in m.value for m in at.markdown)


def test_training_run_from_the_page_succeeds_and_registers(home):
    from cvs_core import registry, runs

    at = app("pages/training.py")
    at.selectbox(key="tr_arch").set_value("unet_heatmap")
    at.selectbox(key="tr_size").set_value("tiny (fast demo)")
    at.number_input(key="tr_phantoms").set_value(8)
    at.number_input(key="tr_val").set_value(2)
    at.number_input(key="tr_epochs").set_value(1)
    at.number_input(key="tr_batch").set_value(4)
    at.text_input(key="tr_name").set_value("page_run")
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    listed = runs.list_runs()
    assert listed, "no run started"
    run_id = listed[0]["id"]
    deadline = time.time() + 150
    while runs.run_info(run_id)["status"] not in runs.FINAL and time.time() < deadline:
        time.sleep(1)
    assert runs.run_info(run_id)["status"] == "succeeded", runs.log_tail(run_id, 40)
    at.run()
    assert not at.exception
    at.text_input(key=f"reg_name_{run_id}").set_value("page_model")
    next(b for b in at.button if b.label == "Register as model").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "page_model" in [m.name for m in registry.list_models()]
    at.switch_page("pages/models.py").run()
    assert "page_model" in list(at.dataframe[0].value["name"])
