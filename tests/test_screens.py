"""The library functions behind the app's screens (no Streamlit, no Keras): compare.analyse, the CLAHE
lab's measures, the training form → TrainConfig, the Models page's checks and the PCK tables."""
from __future__ import annotations

import numpy as np
import pytest

from cvs_core import compare, lab, model_view
from cvs_core.landmarks import MEAN_SHAPE_ROI
from cvs_core.predict import Prediction
from cvs_core.preprocess import PreprocessConfig, apply_affine, preprocess


def _prediction(image, roi_landmarks, roi="none", name="m"):
    pre = preprocess(image, PreprocessConfig(input_size=(96, 40), resize_first=False).replace(
        roi=roi, roi_scale=0.5 if roi == "seed" else 1.0))
    lm_input = apply_affine(np.linalg.inv(pre.roi_affine), roi_landmarks)
    return Prediction(landmarks=lm_input, landmarks_roi=np.asarray(roi_landmarks, np.float64),
                      confidence=np.full(19, 0.5), raw=np.zeros((96, 40, 19), np.float32), preprocessed=pre,
                      ms={"total": 1.0}, model=name)


def test_analyse_roi_input_spacing_stages_and_table():
    img = np.full((600, 250), 90, np.uint8)
    mean = np.asarray(MEAN_SHAPE_ROI, np.float64)
    inp = compare.InputImage(image=img, name="x.png", kind="roi", source="upload", key="k", truth=mean.copy())
    preds = {"a": _prediction(img, mean), "b": _prediction(img, mean + [3.0, 4.0])}
    comp = compare.analyse(inp, preds, {"a": "heatmap", "b": "regression"}, "none")
    assert comp.roi_scale == 1.0 and comp.roi_spacing_mm == pytest.approx(0.25)
    assert comp.models["a"].stage is not None and comp.truth_stage is not None
    t = comp.table
    assert list(t.columns[:4]) == ["#", "landmark", "A↔B px", "A↔B mm"]  # the comparison first, not off-screen
    assert np.allclose(t["A↔B px"], 5.0) and np.allclose(t["A↔B mm"], 1.25)
    assert np.allclose(t["a err px"], 0.0) and not (np.signbit(t["a err px"]).any())  # no "-0.0"
    assert "a conf" in t and "b conf" not in t  # regression models have no confidence column
    assert not comp.warnings
    report = comp.report(preds, "caveat")
    assert report["spacing_mm_per_px"] == 0.25 and report["models"]["b"]["codec"] == "regression"


def test_analyse_full_cephalogram_uses_the_roi_scale_not_the_input_spacing():
    img = np.full((2136, 1804), 90, np.uint8)
    mean = np.asarray(MEAN_SHAPE_ROI, np.float64)
    inp = compare.InputImage(image=img, name="full.png", kind="full", source="upload", key="f")
    comp = compare.analyse(inp, {"a": _prediction(img, mean, roi="seed")}, {"a": "heatmap"}, "seed")
    assert comp.input_spacing_mm == pytest.approx(0.125) and comp.roi_scale == 0.5
    assert comp.roi_spacing_mm == pytest.approx(0.25)
    assert "0.25 mm/px" in comp.spacing_caption()


def test_points_outside_the_roi_are_reported():
    img = np.full((600, 250), 90, np.uint8)
    lm = np.asarray(MEAN_SHAPE_ROI, np.float64).copy()
    lm[18] = [150.0, 627.0]
    inp = compare.InputImage(image=img, name="x.png", kind="roi", source="sample", key="k", truth=lm)
    comp = compare.analyse(inp, {"a": _prediction(img, np.asarray(MEAN_SHAPE_ROI))}, {"a": "heatmap"}, "none")
    assert comp.truth_outside == [19]
    assert any("19 C4ia" in w and "outside the ROI" in w for w in comp.warnings)


def test_overlay_png_is_padded_for_points_outside():
    from cvs_core import viz

    img = np.full((600, 250), 200, np.uint8)
    lm = np.asarray(MEAN_SHAPE_ROI, np.float64).copy()
    lm[18] = [150.0, 640.0]
    out = viz.render_overlay(img, [viz.PointLayer("t", lm, "#ffe082", truth=True)], scale=1.0, legend=False)
    assert out.shape[0] >= 650 and out.shape[1] == 250
    assert (out[600:, :, :] != 48).any()  # the cross is drawn on the padding


def test_full_cephalogram_warning():
    assert compare.full_cephalogram_warning(np.zeros((2136, 1804), np.uint8))
    assert compare.full_cephalogram_warning(np.zeros((600, 250), np.uint8)) is None
    assert compare.full_cephalogram_warning(np.zeros((1200, 500), np.uint8)) is None  # a larger ROI


def test_identical_models_are_flagged():
    img = np.full((600, 250), 90, np.uint8)
    mean = np.asarray(MEAN_SHAPE_ROI, np.float64)
    inp = compare.InputImage(image=img, name="x.png", kind="roi", source="upload", key="k")
    comp = compare.analyse(inp, {"a": _prediction(img, mean), "b": _prediction(img, mean)},
                           {"a": "heatmap", "b": "heatmap"}, "none")
    assert any("same model" in w for w in comp.warnings)


def test_check_model_file():
    assert model_view.check_model_file("m.keras", b"PK\x03\x04rest") == ".keras"
    assert model_view.check_model_file("m.h5", b"\x89HDF\r\n\x1a\nxx") == ".h5"
    with pytest.raises(ValueError, match="m.keras is not a Keras 3 .keras file"):
        model_view.check_model_file("m.keras", b"image_name,1_x")
    with pytest.raises(ValueError, match="labels.csv is not a model file"):
        model_view.check_model_file("labels.csv", b"image_name,1_x")


def test_describe_training_data_and_checksum():
    lines = model_view.describe_training_data({"csv_sources": [{"csv": "/x/train_data.csv", "rows": 2, "repeat": 150}],
                                               "val_phantoms": 200})
    assert lines == ["train_data.csv: 2 images × 150 repeats", "200 validation phantoms"]
    assert "2 parts" in model_view.weights_checksum({"packed_weights": {"files": [{"sha256": "ab"}, {"sha256": "cd"}]}})
    assert model_view.weights_checksum({}) == "not recorded"


def test_lab_view_measures_and_settings():
    rng = np.random.default_rng(0)
    img = (rng.random((120, 80)) * 60 + 80).astype(np.uint8)
    res = lab.lab_view(img, lab.settings_from({"clahe_clip": 4.0}))
    assert res.after.shape == img.shape and res.diff.shape == (*img.shape, 3)
    assert res.local_after > res.local_before  # CLAHE raises local contrast on this low-contrast image
    assert lab.settings_from({"clahe_clip": 10.0, "junk": 1})["clahe_clip"] == 10.0
    assert "junk" not in lab.settings_from({"junk": 1})
    grid = lab.draw_tile_grid(img, 4)
    assert grid.shape == (120, 80, 3) and (grid[:, 20] != grid[:, 21]).any()
    assert lab.local_contrast(np.full((50, 50), 7, np.uint8)) == 0.0


def test_train_request_defaults_names_and_lab_settings(tmp_path, monkeypatch, samples_dir):
    from cvs_core import train_request as tr

    monkeypatch.setenv("CVS_HOME", str(tmp_path))
    monkeypatch.setattr("cvs_core.registry.SHIPPED_MODELS_DIR", tmp_path / "none")
    assert tr.architectures()[0] == "unet_heatmap"
    assert tr.form_defaults("inception_gap", "improved")["lr"] == pytest.approx(3e-4)
    assert tr.form_defaults("unet_seed", "seed")["epochs"] == 1000
    assert tr.takes_size_options("unet_heatmap") and not tr.takes_size_options("unet_seed")
    assert set(tr.ARCH_HELP) == set(tr.architectures()) and all(tr.ARCH_HELP.values())
    monkeypatch.setattr(tr, "model_name_taken", lambda n: n in ("taken", "taken_2"))
    assert tr.free_model_name("taken") == "taken_3" and tr.free_model_name("new") == "new"
    with pytest.raises(ValueError, match="registered already"):
        tr.build_config(tr.TrainRequest(name="taken"), samples_dir.parent)
    cfg = tr.build_config(tr.TrainRequest(name="fresh", lab={"clahe_clip": 5.0}, data=tr.DATA_OPTIONS[1]),
                          samples_dir.parent)
    assert cfg.preprocess["clahe_clip"] == 5.0 and cfg.builder_kwargs == tr.SIZES[tr.DEFAULT_SIZE]
    assert cfg.csv.endswith("labels.csv") and cfg.repeat_csv == 8
    with pytest.raises(ValueError, match="dataset zip"):
        tr.build_config(tr.TrainRequest(data=tr.DATA_OPTIONS[2]), samples_dir.parent)


def test_clean_log_drops_tensorflow_noise():
    from cvs_core.train_request import clean_log

    log = ("E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
           "I0000 oneDNN custom operations are on.\nepoch 1/3 loss 0.5\n")
    assert clean_log(log) == "epoch 1/3 loss 0.5"


def test_pck_tables(tiny_model_dir):
    from cvs_core import evaluate, pck_view
    from cvs_core.predict import Predictor

    ds = evaluate.phantom_dataset(4, 3)
    ps = evaluate.predict_dataset(Predictor.load(tiny_model_dir), ds)
    sc = pck_view.score_model(ps, 0.25)
    table = pck_view.metrics_table({"tiny": sc})
    assert list(table.columns[:3]) == ["model", "legacy U-Net PCK", "legacy Inception PCK"]
    assert 0 <= table.loc[0, "Dice (masks)"] <= 1
    se = pck_view.sorted_errors(sc, "px", 0.25, ds.landmarks)
    assert 0 <= se.pck(1000.0) <= 1 and se.pck(1000.0) >= se.pck(1.0)
    worst = pck_view.worst_images(sc, 2)
    assert len(worst) == 2 and worst[0]["caption"].startswith(worst[0]["image_name"])
    assert pck_view.curve_grid("mm", 2.0)[-1] == 6.0
    assert "tiny" in pck_view.summary_json({"tiny": sc})


def test_html_report_is_one_self_contained_page():
    img = np.full((600, 250), 90, np.uint8)
    mean = np.asarray(MEAN_SHAPE_ROI, np.float64)
    inp = compare.InputImage(image=img, name="<x>.png", kind="roi", source="upload", key="k", truth=mean.copy())
    comp = compare.analyse(inp, {"a": _prediction(img, mean)}, {"a": "heatmap"}, "none")
    page = comp.html_report(b"\x89PNG fake", "the caveat")
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "&lt;x&gt;.png" in page and "<x>.png" not in page  # names are escaped
    assert comp.models["a"].stage.label in page and "the caveat" in page and page.count("<tr") == 20  # header + 19 landmarks


def test_mean_shape_baseline_is_a_real_error():
    from cvs_core.train_request import mean_shape_baseline_px

    b = mean_shape_baseline_px(n=4)
    assert 3.0 < b < 200.0  # phantoms vary: the mean shape is off by some pixels, never by a whole ROI


def test_vertebra_box_magnifies_c2_c4():
    from cvs_core.landmarks import MEAN_SHAPE_ROI

    x0, y0, x1, y1 = lab.vertebra_box("roi", (600, 250))
    pts = np.asarray(MEAN_SHAPE_ROI)
    assert x0 <= pts[:, 0].min() and x1 >= pts[:, 0].max() and y0 <= pts[:, 1].min() and y1 >= pts[:, 1].max()
    assert (x1 - x0) * (y1 - y0) < 0.7 * 600 * 250  # a real magnification
    fx0, fy0, fx1, fy1 = lab.vertebra_box("full", (1068, 902))  # a downscaled full cephalogram
    assert 0 <= fx0 < fx1 <= 902 and 0 <= fy0 < fy1 <= 1068 and fx1 < 902 / 2
    assert lab.crop(np.zeros((600, 250, 3)), (x0, y0, x1, y1)).shape == (y1 - y0, x1 - x0, 3)


def test_model_folders_are_shown_without_server_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("CVS_HOME", str(tmp_path / "home"))
    user = tmp_path / "home" / "models" / "my_unet"
    user.mkdir(parents=True)
    assert model_view.display_folder("/srv/lab/repo/models/unet_heatmap", shipped=True) == "models/unet_heatmap"
    assert model_view.display_folder(user, shipped=False) == "<data dir>/models/my_unet"
    assert model_view.display_folder(tmp_path / "elsewhere" / "odd", shipped=False) == "odd"
