"""Shared widgets and loaders for the pages. No computation beyond calling ``cvs_core``.

Everything heavy is held per process: model Predictors in ``cvs_core.pool`` (loaded on a background
thread, outside Streamlit's caches so a "Clear cache" from one browser unloads nothing), decoded
sample images and per-image predictions in Streamlit's caches. The session's user (sign-in, password
or local mode) decides which actions the pages offer (``cvs_core.access``).
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import streamlit as st

from app_pages.tf_patch import keep_tf_kernels_across_reruns
from cvs_core.compare import InputImage  # noqa: F401 - re-exported for the pages

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
FAVICON = str(Path(__file__).resolve().parent / "favicon.png")  # local: the app makes no outside request
DEMO = ("unet_heatmap", "inception_resnet_v2")

keep_tf_kernels_across_reruns()  # once per process (idempotent): compiled model graphs survive reruns

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
    """``"<folder>:<weights sha256>:<weights mtime>"``: the pool's key (``ModelPool.key``) as one string,
    which changes when the model folder is replaced."""
    from cvs_core.pool import ModelPool

    return ":".join(ModelPool.key(name))


# Models live in cvs_core.pool (outside Streamlit's caches: a "Clear cache" from any browser does not
# unload them for everyone). Loads run on one background thread, so a page renders at once and shows
# "loading" while the model is read and warmed up; ``get_predictor(name)`` waits with a spinner.
_LOAD_LOCK = threading.Lock()
_LOADS: dict[tuple[str, str], Future] = {}   # (name, model_version) → the background load
_LOADED: dict[str, dict] = {}                # name → what the sidebar says about it
_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvs-app-load")


def _background_load(name: str):
    from cvs_core.pool import models
    from cvs_core.predict import configure_for_interactive_use

    configure_for_interactive_use()
    predictor = models().get(name)
    refreeze_heap()
    with _LOAD_LOCK:
        _LOADED[name] = {"family": predictor.family, "architecture": predictor.manifest.get("architecture"),
                         "input": predictor.config.input_size}
    return predictor


def start_loading(name: str, retry_failed: bool = False) -> Future:
    """Start loading a registered model in the background (once per model version); returns its Future.
    A model evicted from the pool since loads again; a failed load is retried with ``retry_failed``."""
    from cvs_core.pool import models

    version = model_version(name)
    key = (name, version)
    folder = version.rsplit(":", 2)[0]
    in_pool = folder in models().loaded()  # outside the lock: every page run of every session asks
    with _LOAD_LOCK:
        fut = _LOADS.get(key)
        if fut is not None and fut.done():
            failed = fut.exception() is not None
            if (failed and retry_failed) or (not failed and not in_pool):
                fut = None
        if fut is None:
            older = [k for k in _LOADS if k[0] == name and k != key]
            if older:  # the model folder was replaced: drop the old weights from the pool first
                models().discard(folder)
                for k in older:
                    del _LOADS[k]
            fut = _LOADS[key] = _LOADER.submit(_background_load, name)
        return fut


def predictor_status(name: str) -> str:
    """``"ready"`` (loaded and warmed up), ``"loading"`` (a background load is running or queued; this
    call starts it) or ``"failed"`` (``get_predictor`` re-raises the load's error)."""
    fut = start_loading(name)
    if not fut.done():
        return "loading"
    return "failed" if fut.exception() is not None else "ready"


def get_predictor(name: str, wait: bool = True):
    """The process-wide Predictor of a registered model (loaded and warmed up once, held by
    ``cvs_core.pool``). ``wait=False``: ``None`` while it is still loading (the load keeps going).
    A failed load raises its error (``ModelError`` …) and is tried again on the next call."""
    fut = start_loading(name, retry_failed=True)
    if not fut.done():
        if not wait:
            return None
        with st.spinner(f"Loading model **{name}** (once per server process)…"):
            fut.result()
    return fut.result()


def _load_predictor(name: str, version: str | None = None):
    """The loaded Predictor of ``name`` (blocking, no spinner). ``version`` is accepted for old callers."""
    return start_loading(name).result()


def loaded_models() -> dict:
    """Models loaded in this process (shown in the sidebar): name → family, architecture, input size."""
    from cvs_core.pool import models

    held = set(models().loaded())
    with _LOAD_LOCK:
        return {n: v for n, v in _LOADED.items() if _folder_of(n) in held}


def loading_models() -> list[str]:
    """Names of the models whose background load is running or queued."""
    with _LOAD_LOCK:
        return sorted({k[0] for k, f in _LOADS.items() if not f.done()})


def _folder_of(name: str) -> str | None:
    from cvs_core.registry import resolve_model

    try:
        return str(Path(resolve_model(name)).resolve())
    except (ValueError, OSError):
        return None


def forget_model(name: str, version: str) -> None:
    """Unload one model version (after deleting it): the other loaded models stay loaded."""
    from cvs_core.pool import models

    with _LOAD_LOCK:
        keys = [k for k in _LOADS if k[0] == name]
        # model_version(): "<folder>:<sha256>:<mtime>" (the folder may be gone already)
        folders = {v.rsplit(":", 2)[0] for v in [version, *(k[1] for k in keys)] if v}
        for folder in folders:
            models().discard(folder)
        _LOADED.pop(name, None)
        for key in keys:
            del _LOADS[key]
    refreeze_heap()  # collect it now (a frozen heap would keep it forever)


def unload_all_models() -> int:
    """Drop every loaded model (the admin's "Clear caches"); returns how many were loaded."""
    from cvs_core.pool import models

    n = models().discard()
    with _LOAD_LOCK:
        _LOADED.clear()
        _LOADS.clear()
    refreeze_heap()
    return n


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
    """The codec kind ("mask", "heatmap", "regression") of a registered model (from its manifest:
    no load needed)."""
    from cvs_core.registry import read_manifest, resolve_model

    return (read_manifest(resolve_model(name)).get("codec") or {}).get("kind", "")


def tta_copies(name: str) -> int:
    """How many shifted copies of each image the model runs (``cvs_core.tta``; 1 = none), from its
    manifest: no load needed."""
    from cvs_core.registry import read_manifest, resolve_model
    from cvs_core.tta import TestTimeShifts

    try:
        return len(TestTimeShifts.from_manifest(read_manifest(resolve_model(name))).offsets)
    except (TypeError, ValueError):
        return 1


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


# ----------------------------------------------------------------------------- who is using the app
def secrets() -> dict:
    """The app's secrets as a plain dict ({} without a secrets file)."""
    try:
        return st.secrets.to_dict()
    except Exception:  # noqa: BLE001 - no secrets.toml (Streamlit raises its own not-found error)
        return {}


def access_config():
    from cvs_core import access

    return access.load_access_config(secrets())


def current_user():
    """The session's :class:`cvs_core.access.User` (set by ``streamlit_app.py``; resolved here when a
    page runs alone)."""
    user = st.session_state.get("cvs_user")
    if user is None:
        from cvs_core import access

        cfg = access_config()
        logged_in = bool(st.user.get("is_logged_in", False)) if cfg.mode == "oidc" else False
        user = access.resolve_user(cfg, email=st.user.get("email") if logged_in else None, logged_in=logged_in,
                                   password_ok=bool(st.session_state.get("cvs_password_ok")),
                                   server_address=st.get_option("server.address"))
        st.session_state["cvs_user"] = user
    return user


JOB_WAIT_S = 60.0  # an interactive prediction queues this long for a free job slot before saying so


def job_owner() -> str:
    """Whose job slots (``limits.job_slot``) a prediction of this session takes: the signed-in
    person's, or — for the shared identities (local mode, the lab password, anonymous viewers),
    behind which several people may sit — this browser session's own."""
    import uuid

    user = current_user()
    if user.mode == "oidc" and user.authenticated:
        return user.id
    sid = st.session_state.setdefault("cvs_session_id", uuid.uuid4().hex[:12])
    return f"{user.id}:{sid}"


def can(action: str, owner: str | None = None) -> bool:
    """Whether the session's user may take ``action`` (``cvs_core.access.ACTIONS``)."""
    from cvs_core import access

    return access.can(current_user(), action, owner=owner)


def require(action: str, owner: str | None = None) -> None:
    """Raise ``access.AccessDenied`` (a PermissionError with a sentence) unless the user may."""
    from cvs_core import access

    access.require(current_user(), action, owner=owner)


def denied_note(action: str, owner: str | None = None) -> str:
    """Why the session's user may not take ``action`` (for a caption next to a disabled button)."""
    from cvs_core import access

    try:
        access.require(current_user(), action, owner=owner)
        return ""
    except access.AccessDenied as exc:
        return str(exc)


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
def _predict_cached(model: str, version: str, key: str, roi_json: str, overrides_json: str, spacing_mm, _image):
    import json

    from cvs_core.pool import models

    overrides = json.loads(overrides_json) or None
    roi = json.loads(roi_json)
    if spacing_mm is not None:  # the batcher takes no spacing: the model's own (thread-safe) Predictor
        return with_preprocess(models().get(model), overrides).predict(_image, roi=roi, spacing_mm=spacing_mm)
    # plain settings: the shared batcher (concurrent sessions' calls gathered into one model call)
    predictor = with_preprocess(models().get(model), overrides) if overrides else models().get_batched(model)
    return predictor.predict(_image, roi=roi)


def predict(model: str, inp: InputImage, roi, overrides: dict | None = None, spacing_mm: float | None = None):
    """One model's Prediction on an input (cached per model version, image, ROI, overrides and
    spacing), in one of the session user's job slots (``limits.job_slot``; a LimitError is a
    ValueError). ``roi``: as ``Predictor.predict`` (``"auto"``, ``"seed"``, a box, None);
    ``spacing_mm``: mm per input pixel (``landmarks_mm``, the auto ROI's scale). Waits (spinner)
    while the model loads: check ``predictor_status`` first to avoid that."""
    import json

    from cvs_core import limits

    version = model_version(model)
    get_predictor(model)
    with limits.job_slot(job_owner(), wait_s=JOB_WAIT_S):
        return _predict_cached(model, version, inp.key, json.dumps(roi), json.dumps(overrides or {}, sort_keys=True),
                               None if spacing_mm is None else float(spacing_mm), inp.image)


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


_PRELOADED = threading.Event()


def preload_default_models() -> None:
    """Once per process, after the first page has rendered: start loading the default models in the
    background (the U-Net first: it is ready in about a second, the InceptionResNetV2 takes longer).
    ``$CVS_PRELOAD_MODELS``: ``default`` (the default), ``none``, or comma-separated model names."""
    if _PRELOADED.is_set():
        return
    _PRELOADED.set()
    import os

    setting = os.environ.get("CVS_PRELOAD_MODELS", "default").strip()
    if setting.lower() in ("0", "none", "off", ""):
        return
    try:
        names = model_names()
        wanted = default_models(names) if setting == "default" else [
            n.strip() for n in setting.split(",") if n.strip() in names]
        for name in sorted(wanted, key=lambda n: _family(n) != "unet"):
            start_loading(name)
    except Exception:  # noqa: BLE001 - a broken model folder shows its error where it is used
        pass


def _family(name: str) -> str:
    from cvs_core.architectures import family_of

    return next((family_of(m.manifest) for m in model_infos() if m.name == name), "")


def sidebar():
    """Device, backend, versions and loaded models. Called after the page ran (so models it loaded
    are listed); while TensorFlow is still loading on the background thread, or a model is loading,
    the box polls every second and re-runs the app once when that is done (so a page that showed
    "loading" for a model draws its result)."""
    probe = _probe()
    with st.sidebar:
        if probe.info is None or loading_models():
            st.fragment(run_every=1.0)(_sidebar_status)(probe, True)
        else:
            _sidebar_status(probe, False)
    preload_default_models()


def _code(name: str) -> str:
    """A user-supplied name as inline code in Markdown (control characters and backticks removed)."""
    from cvs_core.access import safe_label

    return "`" + safe_label(name).replace("`", "'") + "`"


def _sidebar_status(probe, polling: bool):
    info = probe.info
    if polling and info is not None and not loading_models():
        st.rerun(scope="app")  # the probe / the loads finished: draw the final page and stop polling
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
            st.caption("Loaded: " + ", ".join(_code(n) for n in sorted(loaded)))
        else:
            st.caption("No model loaded yet (models load on first use).")
        pending = loading_models()
        if pending:
            st.caption(":material/hourglass_top: loading " + ", ".join(_code(n) for n in pending) + "…")


# ----------------------------------------------------------------------------- small widgets
def show_error(title: str, exc: BaseException):
    """A readable error with the library's message; the page keeps working."""
    st.error(f"**{title}**\n\n```\n{exc}\n```", icon=":material/error:")


STAGE_COLORS = {1: "#80cbc4", 2: "#4db6ac", 3: "#ffb74d", 4: "#ff8a65", 5: "#9575cd", 6: "#7986cb"}


def stage_card(model: str, result, color: str = "#4fc3f7", true_stage: int | None = None,
               unreliable: str | None = None, warnings: list[str] | tuple = ()):
    """A model's CVM stage with its confidence, how often experts agreed with that call (and the
    nearest alternative when borderline), rationale and growth note (caveat shown separately).
    ``unreliable``: why the landmark fit failed its check (the stage is then shown as unreliable);
    ``warnings``: :func:`cvs_core.predict.prediction_warnings` lines to show with the stage."""
    from cvs_core.access import safe_label
    from cvs_core.staging import agreement_text

    level_icon = {"high": ":material/check_circle:", "borderline": ":material/warning:",
                  "low": ":material/help:"}.get(result.confidence_level, "")
    with st.container(border=True):
        st.markdown(f"<span style='color:{color};font-weight:600'>{safe_label(model)}</span>", unsafe_allow_html=True)
        if unreliable:
            st.markdown(f"### {result.label}? &nbsp;<small>:material/warning: unreliable</small>",
                        unsafe_allow_html=True)
            st.warning(f"Do not use this stage: {unreliable}", icon=":material/warning:")
        else:
            st.markdown(f"### {result.label} &nbsp;<small>{level_icon} {result.confidence_level} fit</small>",
                        unsafe_allow_html=True)
        for w in warnings:
            st.warning(w, icon=":material/warning:")
        agree = agreement_text(result)
        if agree:
            st.info(agree, icon=":material/groups:")
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
