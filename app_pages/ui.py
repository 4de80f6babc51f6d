"""Shared widgets and cached loaders for the pages. No computation beyond calling ``cvs_core``.

Everything heavy is cached per process: model Predictors (``st.cache_resource``, one per model
version; a Predictor is thread-safe), decoded sample images, per-image predictions.
"""
from __future__ import annotations

import threading
from pathlib import Path

import streamlit as st

from cvs_core.compare import InputImage  # noqa: F401 - re-exported for the pages

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
FAVICON = str(Path(__file__).resolve().parent / "favicon.png")  # local: the app makes no outside request
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
    from cvs_core.architectures import family_of

    family = {m.name: family_of(m.manifest) for m in model_infos()}
    rest = sorted((m for m in names if m not in picked), key=lambda m: family.get(m) != "unet")
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
    refreeze_heap()
    loaded_models()[name] = {"family": predictor.family, "architecture": predictor.manifest.get("architecture"),
                             "input": predictor.config.input_size}
    return predictor


@st.cache_resource(show_spinner=False)
def loaded_models() -> dict:
    """Models loaded in this process (shown in the sidebar)."""
    return {}


def forget_model(name: str, version: str) -> None:
    """Unload one model version (after deleting it): the other loaded models stay loaded."""
    _load_predictor.clear(name, version)
    loaded_models().pop(name, None)
    refreeze_heap()  # collect it now (a frozen heap would keep it forever)


def refreeze_heap():
    """Collect garbage, then move everything still alive (TensorFlow, the loaded models: millions of
    long-lived objects) out of the garbage collector's view with ``gc.freeze()``.

    Why: without it, the full collections that script reruns trigger walk all those objects and the
    PCK slider took a median 579 ms per step in the browser instead of 111 ms (same loaded 2-core
    machine, 12 steps each, 2026-11-29). Why unfreeze first: a plain ``gc.freeze()`` keeps every
    object that was alive at that moment out of collection for good, so a model evicted from the
    cache or deleted later would leak; unfreezing, collecting and freezing again on every model load
    and unload frees those."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def codec_kind(name: str) -> str:
    """The codec kind ("mask", "heatmap", "regression") of a registered model."""
    return get_predictor(name).codec.kind


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
    c1.page_link("app_pages/training.py", label="Train a model", icon=":material/model_training:")
    c2.page_link("app_pages/models.py", label="Upload a model", icon=":material/deployed_code:")


# ----------------------------------------------------------------------------- samples & images
def sample_names() -> list[str]:
    return sorted((p.name for p in (SAMPLES / "roi").glob("*.jpg")),
                  key=lambda n: int("".join(c for c in n if c.isdigit()) or 0))


@st.cache_data(show_spinner=False)
def sample_truth() -> dict:
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
def load_sample(name: str, kind: str):
    """A bundled sample as greyscale uint8 ``(H, W)``; kind "roi" or "full"."""
    from cvs_core.imaging import read_image

    folder = "roi" if kind == "roi" else "original"
    return read_image(SAMPLES / folder / name).as_uint8()


@st.cache_data(show_spinner=False, max_entries=32)
def load_phantom(seed: int, stage: int | None):
    from cvs_core.synth import render_phantom

    ph = render_phantom(int(seed), stage=stage)
    return ph.image, ph.landmarks, ph.stage


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
        refreeze_heap()
        self.info = info


@st.cache_resource(show_spinner=False)
def _probe() -> _Probe:
    return _Probe()


def sidebar():
    """Device, backend, versions and loaded models. Called after the page ran (so models it loaded
    are listed); while TensorFlow is still loading on the background thread the box polls every
    second and re-runs the app once when the probe is done."""
    probe = _probe()
    with st.sidebar:
        if probe.info is None:
            st.fragment(run_every=1.0)(_sidebar_status)(probe, True)
        else:
            _sidebar_status(probe, False)


def _sidebar_status(probe, polling: bool):
    info = probe.info
    if polling and info is not None:
        st.rerun(scope="app")  # the probe finished: draw the final box and stop polling
    with st.container(border=True, key="sidebar_status"):
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


def page_header(title: str, subtitle: str, icon: str | None = None):
    st.title(f"{icon + ' ' if icon else ''}{title}")
    st.caption(subtitle)
