"""Shared widgets and cached loaders for the pages. No computation beyond calling ``cvs_core``.

Everything heavy is cached per process: model Predictors (``st.cache_resource``, one per model
version; a Predictor is thread-safe), decoded sample images, per-image predictions.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
NOMINAL_ROI_SPACING = 0.25      # mm per px in the study's ROI frame (DESIGN §2)
NOMINAL_FULL_SPACING = 0.125    # mm per px in the study's full cephalograms
MAX_SIDE = 2600                 # uploads are downscaled so their longer side is at most this
DEMO = ("unet_heatmap", "inception_resnet_v2")

CAVEAT_SHORT = ("The CVM stage is an **estimate** from 19 landmarks, to be read together with age, sex and "
                "the radiograph itself; human raters agree on the stage less than half of the time.")


# ----------------------------------------------------------------------------- models
def model_infos():
    from cvs_core.registry import list_models

    return [m for m in list_models() if m.ready or m.manifest.get("packed_weights")]


def model_names() -> list[str]:
    return [m.name for m in model_infos()]


def default_models(names: list[str], n: int = 2) -> list[str]:
    """The demo models when present, else the first registered ones."""
    picked = [m for m in DEMO if m in names]
    archs = {m.name: m.manifest.get("architecture", "") for m in model_infos()}
    rest = sorted((m for m in names if m not in picked), key=lambda m: not archs.get(m, "").startswith("unet"))
    picked += rest
    return picked[:n]


def model_version(name: str) -> str:
    from cvs_core.registry import read_manifest, resolve_model

    folder = resolve_model(name)
    m = read_manifest(folder)
    weights = folder / "model.keras"
    stamp = weights.stat().st_mtime_ns if weights.is_file() else 0
    return f"{folder}:{m.get('weights_sha256', '')}:{stamp}"


@st.cache_resource(show_spinner=False, max_entries=8)
def _load_predictor(name: str, version: str):
    from cvs_core.predict import Predictor, configure_for_interactive_use

    configure_for_interactive_use()

    predictor = Predictor.load(name)
    _freeze_heap()
    loaded_models()[name] = {"family": predictor.family, "architecture": predictor.manifest.get("architecture"),
                             "input": predictor.config.input_size}
    return predictor


@st.cache_resource(show_spinner=False)
def loaded_models() -> dict:
    """Models loaded in this process (shown in the sidebar)."""
    return {}


def get_predictor(name: str):
    """The process-wide Predictor of a registered model (loaded and warmed up once)."""
    with st.spinner(f"Loading model **{name}** (once per server process)…"):
        return _load_predictor(name, model_version(name))


def with_preprocess(predictor, overrides: dict | None):
    """A view of ``predictor`` whose preprocessing has ``overrides`` (CLAHE/bilateral fields) applied.
    Shares the loaded model, its lock and compiled function; the original is untouched."""
    if not overrides:
        return predictor
    import copy

    view = copy.copy(predictor)
    view.config = predictor.config.replace(**overrides)
    return view


def no_models_message():
    st.warning("No model is registered yet. The demo models (`unet_heatmap`, `inception_resnet_v2`) are "
               "prepared by `make run` (`python -m cvs_core.cli ensure-models`); you can also train one on the "
               "**Training** page or upload one on the **Models** page.", icon=":material/model_training:")
    c1, c2 = st.columns(2)
    c1.page_link("pages/training.py", label="Train a model", icon=":material/model_training:")
    c2.page_link("pages/models.py", label="Upload a model", icon=":material/deployed_code:")


# ----------------------------------------------------------------------------- samples & images
def sample_names() -> list[str]:
    return sorted((p.name for p in (SAMPLES / "roi").glob("*.jpg")),
                  key=lambda n: int("".join(c for c in n if c.isdigit()) or 0))


@st.cache_data(show_spinner=False)
def sample_truth() -> dict[str, np.ndarray]:
    """ROI-frame landmarks ``(19, 2)`` of the bundled samples that have labels (LC (1), LC (11))."""
    from cvs_core.annotations import read_annotations

    out = {}
    for csv in ("train_data.csv", "test_data.csv"):
        aset = read_annotations(SAMPLES / csv, image_dir=SAMPLES / "roi", missing_images="skip",
                                check_bounds="warn")
        for name, lm in zip(aset.names, aset.landmarks):
            out.setdefault(name, lm)
    return out


@st.cache_data(show_spinner=False, max_entries=16)
def load_sample(name: str, kind: str) -> np.ndarray:
    """A bundled sample as greyscale uint8 ``(H, W)``; kind "roi" or "full"."""
    from cvs_core.imaging import read_image

    folder = "roi" if kind == "roi" else "original"
    return read_image(SAMPLES / folder / name).as_uint8()


@st.cache_data(show_spinner=False, max_entries=32)
def load_phantom(seed: int, stage: int | None):
    from cvs_core.synth import render_phantom

    ph = render_phantom(int(seed), stage=stage)
    return ph.image, ph.landmarks, ph.stage


@dataclass
class InputImage:
    """A decoded input kept in session state: only the (possibly downscaled) uint8 pixels.

    image: ``(H, W)`` uint8; kind: "roi" or "full"; spacing_mm: mm/px of ``image`` (None = unknown);
    truth: ``(19, 2)`` landmarks in ``image``'s frame or None; key: content hash for caching."""

    image: np.ndarray
    name: str
    kind: str
    source: str
    key: str
    spacing_mm: float | None = None
    truth: np.ndarray | None = None
    true_stage: int | None = None
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] | None = None  # (width, height) before downscaling
    scale: float = 1.0


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def decode_upload(name: str, data: bytes, kind: str = "roi", max_side: int = MAX_SIDE) -> InputImage:
    """Decode uploaded bytes (PNG/JPEG/TIFF/BMP/DICOM) at once into a small uint8 array.

    Wider images (16-bit, DICOM) are range-scaled to uint8; images whose longer side exceeds
    ``max_side`` are downscaled (INTER_AREA) and their spacing scaled with them. The raw bytes are
    not kept. Raises ``cvs_core.imaging.ImageError`` with the library's message for bad files."""
    from cvs_core.imaging import read_image
    from cvs_core.viz import downscale

    loaded = read_image(data, name=name)
    grey = loaded.as_uint8()
    notes = list(loaded.notes)
    spacing = None
    if loaded.spacing_mm:
        spacing = float(np.mean(loaded.spacing_mm))
        notes.append(f"pixel spacing from the DICOM header: {spacing:.4g} mm/px")
    small, s = downscale(grey, max_side)
    if s != 1.0:
        notes.append(f"downscaled ×{s:.3f} from {grey.shape[1]}×{grey.shape[0]} px for the app")
        if spacing:
            spacing /= s
    return InputImage(image=np.ascontiguousarray(small), name=name, kind=kind, source="upload",
                      key=image_key(small), spacing_mm=spacing, notes=notes,
                      original_size=(grey.shape[1], grey.shape[0]), scale=s)


def read_truth_csv(data: bytes, image_name: str) -> np.ndarray:
    """Landmarks ``(19, 2)`` for ``image_name`` from an uploaded study-format CSV (the row whose
    image_name matches, else the only row). Raises ``ValueError`` with the library's message."""
    import io

    from cvs_core.annotations import read_annotations

    aset = read_annotations(io.StringIO(data.decode("utf-8-sig", errors="replace")), check_bounds=False)
    if image_name in aset.names:
        return aset.get(image_name)
    if len(aset) == 1:
        return aset.landmarks[0]
    raise ValueError(f"the CSV has {len(aset)} rows and none is named {image_name!r}")


# ----------------------------------------------------------------------------- predictions
@st.cache_resource(show_spinner=False, max_entries=48)
def _predict_cached(model: str, version: str, key: str, roi_json: str, overrides_json: str, _image):
    import json

    predictor = with_preprocess(_load_predictor(model, version), json.loads(overrides_json) or None)
    roi = json.loads(roi_json)
    return predictor.predict(_image, roi=roi)


def predict(model: str, inp: InputImage, roi, overrides: dict | None = None):
    """One model's Prediction on an input (cached per model version, image, ROI and overrides)."""
    import json

    version = model_version(model)
    get_predictor(model)  # shows the loading spinner the first time
    return _predict_cached(model, version, inp.key, json.dumps(roi), json.dumps(overrides or {}, sort_keys=True),
                           inp.image)


def _freeze_heap():
    """Move everything allocated so far (TensorFlow/Keras import, loaded models: millions of
    long-lived objects) out of the garbage collector's view, so the full collections that every
    few hundred script reruns trigger stay short — otherwise they add 100–300 ms pauses to slider
    updates (the CLAHE lab's latency budget is 150 ms)."""
    import gc

    gc.collect()
    gc.freeze()


# ----------------------------------------------------------------------------- system info
class _Probe:
    def __init__(self):
        self.info: dict | None = None
        self.thread = threading.Thread(target=self._run, name="cvs-device-probe", daemon=True)
        self.thread.start()

    def _run(self):
        info = {}
        try:
            import keras

            info["backend"] = keras.backend.backend()
            info["keras"] = keras.__version__
            try:
                import tensorflow as tf

                info["tensorflow"] = tf.__version__
                gpus = tf.config.list_physical_devices("GPU")
                info["gpus"] = [g.name for g in gpus]
            except Exception as exc:  # noqa: BLE001
                info["tensorflow"] = f"unavailable ({exc.__class__.__name__})"
                info["gpus"] = []
        except Exception as exc:  # noqa: BLE001
            info["error"] = str(exc)
        _freeze_heap()
        self.info = info


@st.cache_resource(show_spinner=False)
def _probe() -> _Probe:
    return _Probe()


def sidebar():
    """Device, backend, versions and loaded models (probed on a background thread, so the first
    page shows at once)."""
    probe = _probe()
    with st.sidebar:
        with st.container(border=True):
            info = probe.info
            if info is None:
                probe.thread.join(timeout=0.05)
                info = probe.info
            if info is None:
                st.caption(":material/hourglass_top: probing device (TensorFlow loading)…")
            elif "error" in info:
                st.caption(f":material/error: Keras unavailable: {info['error']}")
            else:
                gpus = info.get("gpus") or []
                device = f"GPU × {len(gpus)}" if gpus else "CPU"
                icon = ":material/memory:" if gpus else ":material/developer_board:"
                st.markdown(f"{icon} **{device}** · backend `{info.get('backend')}`")
                st.caption(f"TensorFlow {info.get('tensorflow')} · Keras {info.get('keras')}")
            loaded = loaded_models()
            if loaded:
                st.caption("Loaded: " + ", ".join(f"`{n}`" for n in sorted(loaded)))
            else:
                st.caption("No model loaded yet (models load on first use).")


# ----------------------------------------------------------------------------- small widgets
def show_error(title: str, exc: BaseException):
    """A readable error with the library's message; the page keeps working."""
    st.error(f"**{title}**\n\n```\n{exc}\n```", icon=":material/error:")


STAGE_COLORS = {1: "#80cbc4", 2: "#4db6ac", 3: "#ffb74d", 4: "#ff8a65", 5: "#9575cd", 6: "#7986cb"}


def stage_card(model: str, result, color: str = "#4fc3f7", true_stage: int | None = None):
    """A model's CVM stage with its confidence, rationale and growth note (caveat shown separately)."""
    level_icon = {"high": ":material/check_circle:", "borderline": ":material/warning:",
                  "low": ":material/help:"}.get(result.confidence_level, "")
    with st.container(border=True):
        st.markdown(f"<span style='color:{color};font-weight:600'>{model}</span>", unsafe_allow_html=True)
        st.markdown(f"### {result.label} &nbsp;<small>{level_icon} {result.confidence_level} fit</small>",
                    unsafe_allow_html=True)
        if true_stage:
            match = "✓ matches" if true_stage == result.stage else "✗ differs from"
            st.caption(f"{match} the stage the phantom was generated for (CS{true_stage})")
        st.markdown(f"**Growth:** {result.growth}")
        st.markdown(f"**Why:** {result.rationale}")
        st.caption(result.confidence)
        if result.failed_rule:
            st.caption(f"Rule not met: {result.failed_rule}")
        with st.expander("Measurements"):
            rows = [{"measurement": k, "value": (round(v, 3) if isinstance(v, float) else v)}
                    for k, v in result.measurements.items()]
            st.dataframe(rows, hide_index=True, width="stretch")


def ensure_router():
    """Streamlit runs in its legacy "pages/ directory" mode until ``st.navigation`` has run once in the
    process; a first visit straight to e.g. ``/compare`` would then execute the page file without the
    router (no sidebar, no wide layout). Switch the process to ``st.navigation`` routing and rerun,
    which runs ``streamlit_app.py`` and lands on the same page. (Uses Streamlit's PagesManager flag.)"""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - other Streamlit versions
        return
    import sys

    # AppTest resets the flag before every run (and a rerun would drop a clicked button's trigger);
    # only a real server needs the switch, and only once per process.
    if PagesManager.uses_pages_directory and "streamlit.testing.v1.app_test" not in sys.modules:
        PagesManager.uses_pages_directory = False
        st.rerun()


def page_header(title: str, subtitle: str, icon: str | None = None):
    ensure_router()
    st.title(f"{icon + ' ' if icon else ''}{title}")
    st.caption(subtitle)
