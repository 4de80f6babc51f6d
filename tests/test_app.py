"""The Streamlit app, page by page, with streamlit.testing.v1.AppTest (no browser).

Models are tiny and made here (CVS_HOME points to a temporary folder): an untrained 4-filter U-Net
heatmap model and a "mean-shape regressor" (a Dense layer whose bias is the mean landmark shape), so
every page has two models to compare without the shipped demo models.
"""
from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import numpy as np
import pytest
from app_helpers import StreamlitClient, free_port, make_tiny_models, streamlit_server

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 120
# The pages' folder. CVS_PAGES_DIR=pages runs the page-level tests against the code before the
# rename (how the bug tests below were checked to fail before their fixes).
PAGES = os.environ.get("CVS_PAGES_DIR", "app_pages")


def page_path(name: str) -> str:
    return f"{PAGES}/{name}.py"


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


@pytest.mark.parametrize("page", [page_path("home"), page_path("compare"), page_path("clahe_lab"),
                                  page_path("evaluation"), page_path("training"), page_path("models")])
def test_every_page_loads(home, page):
    at = app(page)
    assert not at.error, [e.value for e in at.error]


def test_pages_without_models_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CVS_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr("cvs_core.registry.SHIPPED_MODELS_DIR", tmp_path / "no_shipped")
    for page in (page_path("compare"), page_path("evaluation")):
        at = app(page)
        assert any("No model is registered" in w.value for w in at.warning)


def truth_uploader(at):
    """The Compare page's ground-truth uploader (one per image, keyed by the image)."""
    return next(u for u in at.get("file_uploader") if u.key.startswith("cmp_truth_csv"))


def open_tab(at, name: str):
    """Select the Compare tab whose label ends with ``name`` (only the open tab is drawn) and run."""
    label = next(t.label for t in at.tabs if t.label.endswith(name))
    at.session_state["cmp_tab"] = label
    return at.run()


def _landmark_table(at):
    """The Compare page's landmark table (opens the "Landmarks" tab when another one is open)."""
    tables = [d.value for d in at.dataframe if "landmark" in d.value.columns]
    if not tables and any(t.label.endswith("Landmarks") for t in at.tabs):
        open_tab(at, "Landmarks")
        assert not at.exception and not at.error
        tables = [d.value for d in at.dataframe if "landmark" in d.value.columns]
    assert tables, "no landmark table rendered"
    return tables[0]


def test_compare_sample_two_models_and_stage(home):
    at = app(page_path("compare"))
    at.selectbox(key="cmp_sample").set_value("LC (1).jpg").run()
    assert not at.exception and not at.error
    table = _landmark_table(at)
    assert len(table) == 19
    for m in ("tiny_unet", "mean_shape"):
        assert table[f"{m} x"].notna().sum() == 19 and table[f"{m} y"].notna().sum() == 19
        assert f"{m} err px" in table  # LC (1) has ground truth
    stages = [m.value for m in at.metric if m.label == "CVM stage"]
    assert len(stages) == 3 and all(s.startswith("CS") for s in stages)  # two models + truth
    assert not [t for t in at.tabs if t.label.endswith("CVM stage") and t.children]  # drawn when opened
    body = texts(open_tab(at, "CVM stage"))
    assert "estimate" in body  # the caveat is always shown
    assert "Growth:" in body and "Why:" in body
    assert "0.25 mm/px" in body
    # full cephalogram with the study preset: same ROI frame, so truth still applies
    at.radio(key="cmp_sample_kind").set_value("Full cephalogram").run()
    assert not at.exception and not at.error
    assert len(_landmark_table(at)) == 19
    # downloads exist
    labels = [b.label for b in open_tab(at, "Export").get("download_button")]
    assert any(lbl.endswith(".csv") for lbl in labels) and "overlay.png" in labels and "report.json" in labels and "report.html" in labels


def test_compare_phantom_shows_generated_stage(home):
    at = app(page_path("compare"))
    at.radio(key="cmp_source").set_value("Phantom").run()
    assert not at.exception and not at.error
    assert any(m.label == "generated as" and m.value.startswith("CS") for m in at.metric)
    assert len(_landmark_table(at)) == 19


def test_compare_upload_good_then_bad(home, samples_dir):
    at = app(page_path("compare"))
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
    truth_uploader(at).set_value(("truth.csv", b"name,a,b\n1,2,3\n", "text/csv")).run()
    assert not at.exception
    assert any("ground-truth" in e.value for e in at.error)
    assert len(_landmark_table(at)) == 19
    # the matching study CSV row gives errors to truth
    csv = (samples_dir / "train_data.csv").read_bytes()
    truth_uploader(at).set_value(("train_data.csv", csv, "text/csv")).run()
    assert not at.exception and not at.error
    assert "mean_shape err px" in _landmark_table(at)


def test_decode_upload_downscales_and_keeps_spacing():
    import cv2

    from cvs_core.imaging import ImageError
    from cvs_core.compare import decode_upload

    big = (np.random.default_rng(0).random((3000, 1200)) * 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", big)
    inp = decode_upload("big.png", png.tobytes(), kind="full", max_side=1500)
    assert inp.image.shape == (1500, 600) and inp.scale == pytest.approx(0.5)
    assert any("downscaled" in n for n in inp.notes)
    with pytest.raises(ImageError, match="junk.jpg"):
        decode_upload("junk.jpg", b"\xff\xd8\xff\xe0 junk")


def test_clahe_lab_settings_reach_compare(home):
    at = app(page_path("clahe_lab"))
    at.slider(key="lab_clip").set_value(4.0).run()
    at.toggle(key="lab_bilateral").set_value(True).run()
    assert not at.exception
    at.button(key="lab_use").click().run()
    stored = at.session_state["lab_preprocess"]
    assert stored["clahe_clip"] == 4.0 and stored["bilateral"] is True
    at.toggle(key="lab_live").set_value(True).run()
    assert not at.exception and not at.error
    assert any(m.label.startswith("mean shift") for m in at.metric)
    at.switch_page(page_path("compare")).run()
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
    at = app(page_path("evaluation"))
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


@pytest.mark.slow
def test_training_run_from_the_page_succeeds_and_registers(home):
    from cvs_core import registry, runs

    at = app(page_path("training"))
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
    # bug 8: the runs table says so in the same page view (it was rendered before the panel: stale)
    runs_table = next(d.value for d in at.dataframe if "registered as" in d.value.columns)
    assert "page_model" in list(runs_table["registered as"]), runs_table
    at.switch_page(page_path("models")).run()
    assert "page_model" in list(at.dataframe[0].value["name"])


# ----------------------------------------------------------------------------- issue 12: bugs found by a new user
# Each test below was run against the code before its fix (CVS_PAGES_DIR=pages on the parent
# commit) and failed there; see the commit messages.
def _sample_bytes(samples_dir, kind: str, name: str) -> bytes:
    return (samples_dir / ("roi" if kind == "roi" else "original") / name).read_bytes()


def _upload(at, name: str, data: bytes, mime: str = "image/jpeg"):
    at.file_uploader(key="cmp_upload").set_value((name, data, mime)).run()
    assert not at.exception, at.exception


def _error_columns(at) -> list[str]:
    return [c for c in _landmark_table(at).columns if c.endswith("err px")]


def _warnings(at) -> str:
    return "\n".join(w.value for w in at.warning)


def test_bug01_spacing_follows_the_image_kind_after_upload(home, samples_dir):
    at = app(page_path("compare"))
    at.radio(key="cmp_source").set_value("Upload").run()
    _upload(at, "LC (1).jpg", _sample_bytes(samples_dir, "full", "LC (1).jpg"))  # uploaded while "ROI" is chosen
    at.radio(key="cmp_up_kind").set_value("Full cephalogram").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    spacing = [n for n in at.number_input if n.key.startswith("cmp_spacing")]
    assert spacing and spacing[0].value == pytest.approx(0.125)
    assert "**0.25 mm/px**" in texts(at), [c.value for c in at.caption]


def test_bug02_landmarks_outside_the_roi_are_shown_and_named(home):
    import json

    at = app(page_path("compare"))
    at.selectbox(key="cmp_sample").set_value("LC (11).jpg").run()
    assert not at.exception and not at.error
    warn = _warnings(at)
    assert "fall outside the ROI" in warn and "17 C4ip" in warn and "19 C4ia" in warn, warn
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    y_range = fig["layout"]["yaxis"]["range"]
    assert max(y_range) >= 627, y_range  # LC (11)'s landmark 19 lies at y = 627 in the 600-px ROI


def test_bug03_full_cephalogram_given_as_roi_warns(home, samples_dir):
    at = app(page_path("compare"))
    at.radio(key="cmp_source").set_value("Upload").run()
    _upload(at, "LC (1).jpg", _sample_bytes(samples_dir, "full", "LC (1).jpg"))
    assert "looks like a whole cephalogram" in _warnings(at), _warnings(at)
    _upload(at, "LC (11).jpg", _sample_bytes(samples_dir, "roi", "LC (11).jpg"))  # a real ROI: no warning
    assert "whole cephalogram" not in _warnings(at)


def test_bug04_ground_truth_csv_does_not_stay_with_the_next_image(home, samples_dir):
    from cvs_core.annotations import format_annotations

    at = app(page_path("compare"))
    at.radio(key="cmp_source").set_value("Upload").run()
    _upload(at, "LC (11).jpg", _sample_bytes(samples_dir, "roi", "LC (11).jpg"))
    rows = [ln for ln in (samples_dir / "train_data.csv").read_text().splitlines() if ln.startswith("LC (11)")]
    header = (samples_dir / "train_data.csv").read_text().splitlines()[0]
    truth_uploader(at).set_value(("lc11.csv", (header + "\n" + rows[0] + "\n").encode(), "text/csv")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _error_columns(at)
    _upload(at, "LC (1).jpg", _sample_bytes(samples_dir, "roi", "LC (1).jpg"))
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not _error_columns(at), "the CSV of LC (11) was applied to LC (1)"
    assert format_annotations  # (imported to check the study CSV format is what the page reads)


def test_bug05_clahe_lab_saved_settings_are_shown_and_kept(home):
    at = app(page_path("clahe_lab"))
    at.slider(key="lab_clip").set_value(10.0).run()
    at.button(key="lab_use").click().run()
    assert not at.exception
    body = texts(at)
    assert "clahe_clip=10.0" in body and "None yet" not in body, body[-600:]
    at.switch_page(page_path("compare")).run()
    at.switch_page(page_path("clahe_lab")).run()
    assert not at.exception
    assert at.slider(key="lab_clip").value == 10.0


def test_bug07_training_defaults_follow_architecture_and_preset(home):
    at = app(page_path("training"))
    assert at.selectbox(key="tr_arch").value == "unet_heatmap"  # not the 37.6 M-parameter unet_seed
    assert at.selectbox(key="tr_size").value == "tiny (fast demo)"
    at.selectbox(key="tr_arch").set_value("inception_gap").run()
    assert not at.exception
    assert at.number_input(key="tr_lr").value == pytest.approx(3e-4)
    at.radio(key="tr_preset").set_value("seed").run()
    assert not at.exception
    assert at.number_input(key="tr_lr").value == pytest.approx(1e-2)
    assert at.number_input(key="tr_epochs").value == 600
    assert at.toggle(key="tr_augment").value is False


def test_bug09_taken_model_name_is_refused_before_the_run(home):
    from cvs_core import runs

    before = {r["id"] for r in runs.list_runs()}
    at = app(page_path("training"))
    at.text_input(key="tr_name").set_value("tiny_unet")
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception
    assert any("registered already" in e.value for e in at.error), [e.value for e in at.error]
    assert {r["id"] for r in runs.list_runs()} == before, "a run was started with a taken name"


def test_bug10_model_upload_messages_name_the_problem(home):
    at = app(page_path("models"))

    def submit(name, data):
        at.file_uploader(key="models_file").set_value((name, data, "application/octet-stream"))
        at.text_input(key="models_name").set_value("uploaded")
        next(b for b in at.button if b.label == "Register uploaded model").click().run()
        assert not at.exception
        return "\n".join(e.value for e in at.error)

    msg = submit("labels.keras", b"image_name,1_x,1_y\nLC (1).jpg,1,2\n")
    assert "not a Keras 3 .keras file" in msg and "/tmp" not in msg, msg
    msg = submit("labels.csv", b"image_name,1_x,1_y\nLC (1).jpg,1,2\n")
    assert "labels.csv is not a model file" in msg, msg
    folders = [c.value for c in at.caption if c.value.startswith("Folder:")]
    assert folders and not any(str(home) in f or "/tmp" in f for f in folders), folders  # no server paths


def test_bug11_deleting_one_model_keeps_the_others_loaded(home):
    import json
    import shutil

    from cvs_core import registry

    src = registry.user_models_dir() / "mean_shape"
    dst = registry.user_models_dir() / "to_delete"
    shutil.copytree(src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    man["name"] = "to_delete"
    (dst / "manifest.json").write_text(json.dumps(man))
    import importlib

    ui = importlib.import_module(f"{PAGES}.ui")
    at = app(page_path("compare"))  # loads tiny_unet and mean_shape
    assert not at.error
    loaded = ui._load_predictor("tiny_unet", ui.model_version("tiny_unet"))  # the cached Predictor
    at.switch_page(page_path("models")).run()
    at.selectbox(key="models_pick").set_value("to_delete").run()
    at.button(key="models_delete").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not dst.exists()
    assert ui._load_predictor("tiny_unet", ui.model_version("tiny_unet")) is loaded, "tiny_unet was unloaded"
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    assert "tiny_unet" in sidebar and "mean_shape" in sidebar, sidebar


def test_bug12_sidebar_lists_the_models_this_page_loaded(home):
    import importlib

    ui = importlib.import_module(f"{PAGES}.ui")
    ui.unload_all_models()
    at = app(page_path("compare"))
    assert not at.error
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    assert "tiny_unet" in sidebar and "No model loaded yet" not in sidebar, sidebar


# ----------------------------------------------------------------------------- thin pages (issue 13)
def test_pages_import_neither_numpy_nor_cv2():
    """Pages only lay out what cvs_core computes: no page module imports numpy or OpenCV."""
    offenders = []
    for path in sorted((ROOT / "app_pages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("numpy", "cv2")]
    assert not offenders, offenders
    assert not (ROOT / "pages").exists(), "a pages/ folder switches on Streamlit's automatic page discovery"


def test_forgetting_a_model_frees_it_despite_the_frozen_heap(home):
    """ui.refreeze_heap keeps slider reruns fast with gc.freeze, and unfreezes on every load/unload,
    so a deleted or evicted model is collected (a plain gc.freeze would keep it forever)."""
    import gc
    import importlib
    import json
    import shutil
    import weakref

    from cvs_core import registry

    ui = importlib.import_module(f"{PAGES}.ui")
    dst = registry.user_models_dir() / "freeable"
    shutil.copytree(registry.user_models_dir() / "mean_shape", dst)
    man = json.loads((dst / "manifest.json").read_text())
    man["name"] = "freeable"
    (dst / "manifest.json").write_text(json.dumps(man))
    version = ui.model_version("freeable")
    model = weakref.ref(ui._load_predictor("freeable", version).model)
    assert model() is not None and gc.get_freeze_count() > 0
    registry.delete_model("freeable")
    ui.forget_model("freeable", version)
    assert model() is None, "the deleted model is still in memory"


def test_clahe_lab_student_tools(home):
    at = app(page_path("clahe_lab"))
    assert any(m.label == "local contrast" for m in at.metric)
    at.toggle(key="lab_grid").set_value(True).run()
    at.toggle(key="lab_zoom").set_value(True).run()
    assert not at.exception and not at.error
    captions = [img.caption for el in at.get("image") for img in el.proto.imgs]
    assert any("8×8 tiles" in c for c in captions), captions
    assert any("clip limit" in e.label for e in at.expander)
    at.radio(key="lab_source").set_value("Sample full cephalogram").run()
    assert not at.exception and not at.error


# ----------------------------------------------------------------------------- hosted lab (issue 14)
@pytest.fixture
def fake_runs(home):
    """Two runs without training: one 'running' (a sleeping child process as its pid, owned by alice)
    and one 'interrupted' (resumable, owned by the shared password user). Yields status → run id;
    afterwards kills the child and removes both runs."""
    import json
    import shutil
    import socket
    import subprocess
    import sys

    from cvs_core import runs

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    made = {}
    for run_id, status, owner, pid in (("20261129-000001-unet_heatmap-aaaa", "running", "alice@lab.org", child.pid),
                                       ("20261129-000002-unet_heatmap-bbbb", "interrupted", "shared", None)):
        d = runs.runs_dir() / run_id
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model": "unet_heatmap", "epochs": 3}))
        (d / "status.json").write_text(json.dumps({"status": status, "epoch": 1, "epochs": 3,
                                                   "error": "process exited" if pid is None else None}))
        info = {"id": run_id, "owner": owner, "created": run_id[:15], "model": "unet_heatmap"}
        if pid:
            info.update(pid=pid, start_time=runs._proc_start_time(pid), host=socket.gethostname())
        (d / "run.json").write_text(json.dumps(info))
        made[status] = run_id
    try:
        yield made
    finally:
        child.kill()
        child.wait()
        for run_id in made.values():
            shutil.rmtree(runs.runs_dir() / run_id, ignore_errors=True)
            runs._db_delete(run_id)


def _button_keys(at) -> set:
    return {b.key for b in at.button if b.key}


def test_anonymous_user_with_a_password_configured_can_take_no_gated_action(home, fake_runs):
    """Password mode, password not entered: viewing works, but no start/cancel/resume/delete run,
    upload/delete model or clear-cache control is usable — and the start handler refuses by itself."""
    from cvs_core import runs
    from streamlit.testing.v1 import AppTest

    made = fake_runs
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["access"] = {"password": "s3cret"}
    at.run()
    assert not at.exception, at.exception
    assert any("enter the lab password" in c.value for c in at.sidebar.caption)
    at.switch_page(page_path("training")).run()
    assert not at.exception, at.exception
    start = next(b for b in at.button if b.label == "Start training")
    assert start.disabled
    for run_id in made.values():
        at.selectbox(key="tr_selected").set_value(run_id).run()
        keys = _button_keys(at)
        assert not {f"cancel_{run_id}", f"delete_{run_id}", f"resume_{run_id}"} & keys, keys
    n_runs = len(runs.list_runs())
    start.proto.disabled = False  # a forged click (hand-written websocket message) starts nothing either
    start.click().run()
    assert not at.exception and len(runs.list_runs()) == n_runs

    at.switch_page(page_path("models")).run()
    assert not at.exception, at.exception
    assert next(b for b in at.button if b.label == "Register uploaded model").disabled
    at.selectbox(key="models_pick").set_value("tiny_unet").run()
    assert not {"models_delete", "models_clear_cache"} & _button_keys(at)
    assert any("needs" in c.value or "not signed in" in c.value for c in at.caption)

    # the right password unlocks the trainer's actions (own runs only: not alice's)
    at.sidebar.text_input(key="cvs_password").set_value("s3cret")
    next(b for b in at.sidebar.button if b.label == "Unlock").click().run()
    at.switch_page(page_path("training")).run()
    assert not next(b for b in at.button if b.label == "Start training").disabled
    at.selectbox(key="tr_selected").set_value(made["interrupted"]).run()
    assert {f"resume_{made['interrupted']}", f"delete_{made['interrupted']}"} <= _button_keys(at)
    assert any(":material/power_off:" in m.value for m in at.markdown)  # the 'interrupted' icon
    at.selectbox(key="tr_selected").set_value(made["running"]).run()
    assert f"cancel_{made['running']}" not in _button_keys(at)  # alice's run


def test_local_mode_admin_sees_resume_for_an_interrupted_run(home, fake_runs):
    made = fake_runs
    at = app(page_path("training"))
    at.selectbox(key="tr_selected").set_value(made["interrupted"]).run()
    assert f"resume_{made['interrupted']}" in _button_keys(at)
    assert any("cvs train --resume --out" in c.value for c in at.code)
    at.selectbox(key="tr_selected").set_value(made["running"]).run()
    assert f"cancel_{made['running']}" in _button_keys(at)  # admin: anyone's run


def test_clear_cache_from_one_browser_does_not_unload_models_for_others(home, tmp_path):
    """A real server on 127.0.0.1: client A's session has the models loaded; client B sends the
    websocket message the page menu's "Clear cache" sends; A's next run still has them loaded
    (models live in cvs_core.pool, outside Streamlit's caches)."""
    with streamlit_server("streamlit_app.py", free_port(), home, tmp_path / "server.log",
                          env={"CVS_PRELOAD_MODELS": "tiny_unet,mean_shape"}) as server:
        a = StreamlitClient(server.url)
        b = None
        try:
            loaded = b"Loaded: `mean_shape`, `tiny_unet`"
            end = time.monotonic() + 120
            while loaded not in a.rerun():  # the first run starts the background loads
                assert time.monotonic() < end, "the models never finished loading"
                time.sleep(1.0)
            b = StreamlitClient(server.url)
            b.rerun()
            b.send(clear_cache=True)
            assert b"No model loaded yet" not in b.rerun()
            out = a.rerun()
            assert loaded in out and b"No model loaded yet" not in out
        finally:
            for c in (a, b):
                if c is not None:
                    c.close()


def test_models_load_in_the_background_and_keras_state_survives_reruns(home):
    """ui.get_predictor(name, wait=False) returns at once (None while loading); predictor_status goes
    loading → ready; the model comes from cvs_core.pool; Streamlit's after-run hook no longer clears
    the Keras session (issue 15)."""
    import importlib

    from cvs_core.pool import models
    from streamlit.runtime.scriptrunner import script_runner

    ui = importlib.import_module(f"{PAGES}.ui")
    assert getattr(script_runner._clean_problem_modules, "_keeps_keras", False)
    import threading

    ui.unload_all_models()
    gate = threading.Event()
    ui._LOADER.submit(gate.wait, 30)  # hold the load thread so "loading" is observed for sure
    assert ui.get_predictor("mean_shape", wait=False) is None
    assert ui.predictor_status("mean_shape") == "loading" and ui.loading_models() == ["mean_shape"]
    gate.set()
    predictor = ui.get_predictor("mean_shape")  # waits
    assert ui.predictor_status("mean_shape") == "ready"
    assert predictor is models().get("mean_shape") and ui.get_predictor("mean_shape", wait=False) is predictor
    assert "mean_shape" in ui.loaded_models()


def test_a_replaced_model_folder_loads_its_new_weights(home):
    """The pool keys models by folder; when a model's files are replaced (new weights, same name),
    ui drops the old Predictor and loads the new one."""
    import importlib
    import json
    import shutil

    from cvs_core import registry
    from cvs_core.pool import models

    ui = importlib.import_module(f"{PAGES}.ui")
    dst = registry.user_models_dir() / "swapped"
    shutil.copytree(registry.user_models_dir() / "mean_shape", dst)
    man = json.loads((dst / "manifest.json").read_text())
    man["name"] = "swapped"
    (dst / "manifest.json").write_text(json.dumps(man))
    try:
        old = ui.get_predictor("swapped")
        time.sleep(0.01)
        shutil.copy(registry.user_models_dir() / "tiny_unet" / "model.keras", dst / "model.keras")
        man.update(json.loads((registry.user_models_dir() / "tiny_unet" / "manifest.json").read_text()), name="swapped")
        (dst / "manifest.json").write_text(json.dumps(man))
        new = ui.get_predictor("swapped")
        assert new is not old and new.codec.kind == "heatmap" and old.codec.kind == "regression"
    finally:
        registry.delete_model("swapped")
        ui.forget_model("swapped", "")  # the version is unknown after deleting: the folder comes from the load
        assert "swapped" not in ui.loaded_models() and not any(p.endswith("/swapped") for p in models().loaded())


def test_predict_with_spacing_uses_the_plain_predictor(home):
    """ui.predict's spacing_mm (for mm output / the auto ROI's scale) reaches Predictor.predict."""
    import importlib
    import json

    ui = importlib.import_module(f"{PAGES}.ui")
    image = np.full((96, 40), 128, np.uint8)
    version = ui.model_version("mean_shape")
    ui.get_predictor("mean_shape")
    with_mm = ui._predict_cached("mean_shape", version, "flat", json.dumps(None), "{}", 0.25, image)
    plain = ui._predict_cached("mean_shape", version, "flat", json.dumps(None), "{}", None, image)
    assert with_mm.landmarks_mm is not None and plain.landmarks_mm is None
    assert np.allclose(with_mm.landmarks, plain.landmarks)


def test_anonymous_user_with_sign_in_configured_can_take_no_gated_action(home):
    """OpenID Connect mode ([auth] in the secrets), nobody signed in: a Sign-in button, and every
    gated control is disabled or absent."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["auth"] = {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "lab", "client_secret": "secret",
                          "server_metadata_url": "https://id.example.org/.well-known/openid-configuration"}
    at.secrets["roles"] = {"alice@lab.org": "admin"}
    at.run()
    assert not at.exception, at.exception
    assert any(b.label == "Sign in" for b in at.sidebar.button)
    at.switch_page(page_path("training")).run()
    assert next(b for b in at.button if b.label == "Start training").disabled
    at.switch_page(page_path("models")).run()
    assert not at.exception, at.exception
    assert next(b for b in at.button if b.label == "Register uploaded model").disabled
    at.selectbox(key="models_pick").set_value("tiny_unet").run()
    assert not {"models_delete", "models_clear_cache"} & _button_keys(at)
