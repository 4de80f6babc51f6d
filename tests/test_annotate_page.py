"""The Annotate page with streamlit.testing.v1.AppTest (no browser), through tests/annotate_app.py.

Uses a temporary CVS_HOME and the shipped ``unet_heatmap`` model for the predictions. The editor's
drag is simulated by putting its trigger value into session state (what the browser sends)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "tests" / "annotate_app.py")

pytestmark = pytest.mark.skipif(not (ROOT / "models" / "unet_heatmap" / "model.keras").is_file(),
                                reason="needs the shipped unet_heatmap weights")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CVS_HOME", str(tmp_path))
    return tmp_path


def _app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def _texts(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption])


def _all_text(at) -> str:
    """Every element of the page as protobuf text: values, labels, help texts, captions."""
    out = []

    def walk(node):
        if getattr(node, "proto", None) is not None:
            out.append(str(node.proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


def test_page_corrects_restages_and_resumes(home):
    from cvs_core.annotation_store import AnnotationStore

    at = _app()
    assert any("Create a dataset" in i.value for i in at.info)  # empty data root: says what to do
    at.button(key="ann_samples").click().run()
    assert not at.exception, at.exception
    store = AnnotationStore.open("samples")
    assert store.counts()["predicted"] == 5  # the model ran once on every image
    confidences = {n: store.record(n).confidence for n in store.image_names()}
    current = at.session_state["ann_cur::samples"]
    assert current == min(confidences, key=confidences.get)  # least confident first
    assert "CS" in _texts(at) and "Prediction (unet_heatmap)" in _texts(at)
    assert "0** corrected" in at.get("progress")[0].proto.text or "0 corrected" in at.get("progress")[0].proto.text

    # a drag of landmark 10 as the browser reports it
    old = store.landmarks(current)[9].copy()
    at.session_state[f"ann_editor::samples::{current}"] = {
        "edit": {"index": 9, "x": float(old[0] + 7), "y": float(old[1] - 3), "nonce": "n1"}}
    at.text_input(key="ann_who").input("Ana")
    at.run()
    assert not at.exception, at.exception
    store.reload()
    rec = store.record(current)
    assert rec.status == "corrected" and rec.who == "Ana"
    assert np.allclose(rec.landmarks[9], old + (7, -3))
    assert "Corrected landmarks" in _texts(at)  # the stage card now uses the corrected landmarks
    assert "1** corrected" in at.get("progress")[0].proto.text

    # the same trigger is applied once only; Undo restores the prediction
    at.run()
    store.reload()
    assert store.undo_depth(current) == 1
    at.button(key="ann_undo").click().run()
    store.reload()
    assert store.record(current).status == "predicted" and np.allclose(store.landmarks(current)[9], old)

    # keyboard path: move landmark 3 by typing
    at.selectbox(key="ann_kb_idx").set_value(2).run()
    at.number_input(key=f"ann_kb_x::{current}::2").set_value(120.0).run()
    at.button(key="ann_kb_move").click().run()
    store.reload()
    assert store.landmarks(current)[2][0] == 120.0

    # accept & next moves to the next least confident image; skip marks skipped
    at.button(key="ann_accept").click().run()
    nxt = at.session_state["ann_cur::samples"]
    assert nxt != current and store.next_image() == nxt
    at.button(key="ann_skip").click().run()
    store.reload()
    assert store.record(nxt).status == "skipped"
    pos = store.position
    assert at.session_state["ann_cur::samples"] == pos

    # a new session (reload / server restart) resumes where the user was
    at2 = _app()
    assert at2.session_state["ann_cur::samples"] == pos
    labels = [b.label for b in at2.get("download_button")]
    assert "labels.csv" in labels
    # a hosted lab does not show its server paths: the dataset is named, its folder is not
    text = _all_text(at2)
    assert "Saved continuously to the dataset **samples**" in text
    assert str(home) not in text and "/tmp" not in text, [ln for ln in text.splitlines() if str(home) in ln][:5]


@pytest.mark.slow
def test_finetune_button_registers_a_model_listed_for_compare(home):
    """The page's button on 2 corrected images (1 epoch): the run finishes, the page registers its
    model, and the registry (which Compare's model list reads) lists it."""
    import time

    from cvs_core import runs
    from cvs_core.annotation_store import AnnotationStore
    from cvs_core.registry import list_models

    at = _app()
    at.button(key="ann_samples").click().run()
    store = AnnotationStore.open("samples")
    for n in store.image_names()[:2]:
        store.accept(n, who="test")
    at.number_input(key="ann_ft_epochs").set_value(1)
    at.text_input(key="ann_ft_name").input("samples_ft_page")
    at.run()
    at.button(key="ann_ft_start").click().run()
    assert not at.exception, at.exception
    store.reload()
    run_id = store.finetune_runs()[-1]["run"]
    deadline = time.time() + 600
    while time.time() < deadline and runs.run_info(run_id)["status"] in runs.ACTIVE:
        time.sleep(1.0)
    assert runs.run_info(run_id)["status"] == "succeeded", runs.log_tail(run_id)
    at.run()
    assert any("registered as **samples_ft_page**" in c.value for c in at.caption), [c.value for c in at.caption]
    assert "samples_ft_page" in [m.name for m in list_models()]
    at.run()
    assert "samples_ft_page" in at.selectbox(key="ann_model").options  # the app's model lists include it


def test_record_helpers_and_landmark_crop():
    """The page's former numpy code, now in the library: record completeness, a landmark's position,
    and the crop around the landmarks used for the "which landmark is which" diagram."""
    from cvs_core.annotation_store import ImageRecord, crop_around_landmarks

    lms = np.column_stack([np.linspace(40, 80, 19), np.linspace(30, 90, 19)])
    rec = ImageRecord("a.png", "predicted", lms.copy(), confidence=0.7)
    assert rec.complete and rec.has_confidence and rec.point(18) == (80.0, 90.0)
    rec.landmarks[3] = np.nan
    assert not rec.complete and rec.point(3) == (0.0, 0.0)
    assert not ImageRecord("b.png", None, None).complete and not ImageRecord("b.png", None, None).has_confidence
    image = np.arange(100 * 120, dtype=np.uint16).reshape(100, 120)
    crop, moved = crop_around_landmarks(image, lms, margin=25)
    assert crop.shape == (95, 90)  # x 15..105, y 5..115 clipped to the image's 100 rows
    assert crop[0, 0] == image[5, 15]
    np.testing.assert_allclose(moved, lms - (15, 5))
