"""The Compare page's auto ROI, fit check and staging choice with streamlit.testing.v1.AppTest.

Model A is the shipped ``unet_heatmap`` (it finds C2–C4 in a full cephalogram); model B is the tiny
``mean_shape`` regressor made in a temporary CVS_HOME (tests/app_helpers.py). The shipped
InceptionResNetV2 is never selected (its load would cost the time budget)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from app_helpers import make_tiny_models

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "streamlit_app.py")

pytestmark = pytest.mark.skipif(not (ROOT / "models" / "unet_heatmap" / "model.keras").is_file(),
                                reason="needs the shipped unet_heatmap weights")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    old = os.environ.get("CVS_HOME")
    make_tiny_models(tmp_path_factory.mktemp("cvs_home"))
    yield
    if old is None:
        os.environ.pop("CVS_HOME", None)
    else:
        os.environ["CVS_HOME"] = old


def _compare(**state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["cmp_model_a"] = "unet_heatmap"
    at.session_state["cmp_model_b"] = "mean_shape"
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, at.exception
    return at


def _texts(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
                     + [w.value for w in at.warning] + [str(m.value) for m in at.metric])


def test_stage_cards_say_how_often_experts_agreed_and_staging_is_one_click(home):
    at = _compare(cmp_sample="LC (1).jpg")
    assert not at.error, [e.value for e in at.error]
    body = _texts(at)
    assert "When the calibrated staging says CS" in body and "experts said" in body
    at.radio(key="cmp_staging").set_value("textbook").run()
    assert not at.exception and not at.error
    body = _texts(at)
    assert "When the textbook staging says CS" in body
    assert "When the calibrated staging says" not in body


def test_full_cephalogram_uses_the_found_box_and_a_moved_box_reruns(home):
    from cvs_core import compare, roi
    from cvs_core.imaging import read_image

    at = _compare(cmp_sample="LC (1).jpg", cmp_sample_kind="Full cephalogram")
    assert not at.error, [e.value for e in at.error]
    assert at.radio(key="cmp_roi_mode").value == "auto"
    caption = next(c.value for c in at.caption if c.value.startswith("Found box"))
    found_box = [int(v) for v in caption.split("**")[1].strip("[]").split(",")]
    # the found box lies around C2–C4 of the study's crop (x 0–500, y 800–2000 of this image)
    cx, cy = (found_box[0] + found_box[2]) / 2, (found_box[1] + found_box[3]) / 2
    assert 0 < cx < 600 and 700 < cy < 2100, found_box
    metric_before = [m.value for m in at.metric if m.label == "MRE (mm)"]
    assert len(metric_before) == 2  # LC (1) has ground truth: both models are scored
    # The box as the browser sends it after a drag of 150 px to the right: both models re-run on it.
    moved = [found_box[0] + 150, found_box[1], found_box[2] + 150, found_box[3]]
    at.session_state["cmp_roi_box::sample:full:LC (1).jpg"] = {
        "rect": {"x0": moved[0], "y0": moved[1], "x1": moved[2], "y1": moved[3], "moved": True, "nonce": 1}}
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(c.value.startswith(f"Moved box **{moved}**") for c in at.caption)
    metric_after = [m.value for m in at.metric if m.label == "MRE (mm)"]
    assert metric_after != metric_before  # the U-Net and the mean shape now see a shifted ROI
    # what the page ran equals the library call on that box
    image = read_image(ROOT / "data" / "samples" / "original" / "LC (1).jpg").as_uint8()
    placed = compare.moved_roi(image, moved, None, 0.125)
    assert isinstance(placed, roi.RoiResult) and abs(placed.box[0] - moved[0]) < 1.5
    at.button(key="cmp_box_reset").click().run()
    assert any(c.value.startswith(f"Found box **{found_box}**") for c in at.caption)


def test_bad_fit_is_shown_as_unreliable(home):
    """A box moved onto the skull: the U-Net's fit fails its check, the stage is marked unreliable."""
    at = _compare(cmp_sample="LC (1).jpg", cmp_sample_kind="Full cephalogram")
    at.session_state["cmp_roi_box::sample:full:LC (1).jpg"] = {
        "rect": {"x0": 1000, "y0": 100, "x1": 1400, "y1": 1060, "moved": True, "nonce": 2}}
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("Unreliable") for w in warnings), warnings
    stages = [m.value for m in at.metric if m.label == "CVM stage"]
    assert any(s.endswith("?") for s in stages), stages


def test_moved_roi_refuses_a_box_off_the_image():
    import numpy as np

    from cvs_core import compare

    image = np.zeros((400, 300), np.uint8)
    with pytest.raises(ValueError, match="centred on the"):
        compare.moved_roi(image, [500, 0, 700, 400], None)
    with pytest.raises(ValueError, match="at least 8"):
        compare.moved_roi(image, [10, 10, 12, 300], None)
    with pytest.raises(ValueError, match="four numbers"):
        compare.moved_roi(image, "abc", None)


def test_a_drawn_box_takes_the_study_proportions(home):
    """A box drawn with another shape is shown as the ROI the models get: same centre and height,
    the study's 250:600 width."""
    at = _compare(cmp_sample="LC (1).jpg", cmp_sample_kind="Full cephalogram")
    at.session_state["cmp_roi_box::sample:full:LC (1).jpg"] = {
        "rect": {"x0": 0, "y0": 800, "x1": 900, "y1": 2000, "nonce": 3}}
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = next(c.value for c in at.caption if c.value.startswith("Moved box"))
    box = [int(v) for v in shown.split("**")[1].strip("[]").split(",")]
    assert all(abs(g - e) <= 1 for g, e in zip(box, [200, 800, 700, 2000])), box


def test_card_says_when_a_model_runs_shifted_copies(home):
    """A model whose manifest asks for test-time shifts (cvs_core.tta) says so on its card, next to
    its time (the shipped InceptionResNetV2 takes ≈ 5× its single call)."""
    import json

    from cvs_core import registry

    path = registry.user_models_dir() / "mean_shape" / "manifest.json"
    original = path.read_text()
    manifest = json.loads(original)
    manifest["inference"] = {"tta_step_px": 2}
    path.write_text(json.dumps(manifest))
    try:
        at = _compare(cmp_sample="LC (1).jpg")
        assert not at.error, [e.value for e in at.error]
        shifted = [c.value for c in at.caption if "shifted copies" in c.value]
        assert len(shifted) == 1 and "5 shifted copies, median" in shifted[0] and "regression" in shifted[0]
    finally:
        path.write_text(original)
