"""PCK evaluation: run models once over a labelled dataset, then re-score instantly at any threshold."""
from __future__ import annotations

import json

import streamlit as st

from app_pages import ui

ui.page_header("PCK evaluation", "Landmark accuracy of the registered models on a labelled dataset. Predictions "
               "are computed once (with a progress bar) and cached; the threshold slider re-scores instantly.",
               ":material/query_stats:")

names = ui.model_names()
if not names:
    ui.no_models_message()
    st.stop()

from cvs_core import evaluate, limits, pck_view, viz  # noqa: E402
from cvs_core.access import safe_label, safe_markdown  # noqa: E402
from cvs_core.runs import extract_dataset_zip  # noqa: E402

ss = st.session_state
preds_store: dict = ss.setdefault("eval_preds", {})     # (model version, dataset fp, roi) → PredictionSet
scores_store: dict = ss.setdefault("eval_scores", {})   # (pset key, spacing) → pck_view.ModelScore
sorted_store: dict = ss.setdefault("eval_sorted", {})   # (pset key, unit, spacing) → SortedErrors

AUTO_RUN_MAX = 32  # image × model pairs computed without pressing the button


@st.cache_resource(show_spinner=False, max_entries=16)
def _phantoms(n: int, seed: int):
    return evaluate.phantom_dataset(n, seed)


@st.cache_resource(show_spinner=False)
def _samples():
    return evaluate.samples_dataset()


# ----------------------------------------------------------------------------- dataset & models
with st.container(border=True):
    c1, c2, c3 = st.columns([1.3, 1.3, 0.9], gap="medium")
    with c1:
        kind = st.radio("Dataset", ["Bundled samples", "Phantoms", "Upload (zip)"], horizontal=True,
                        key="eval_kind")
        dataset, roi, ds_error = None, None, None
        try:
            if kind == "Bundled samples":
                dataset, roi = _samples(), "none"
                st.caption("The two public study ROI images with labels (LC (1), LC (11)).")
                st.caption(f":material/warning: {pck_view.TRAINING_IMAGES_NOTE}")
            elif kind == "Phantoms":
                p1, p2 = st.columns(2)
                n = p1.number_input("Number of phantoms", 6, 2000, 24, step=6, key="eval_n")
                seed = p2.number_input("Seed", 0, 10**6, 1, key="eval_seed")
                with st.spinner(f"Rendering {int(n)} phantoms (once)…"):
                    dataset, roi = _phantoms(int(n), int(seed)), "none"
                st.caption("Synthetic ROIs with exact landmarks and the stage they were generated for.")
            else:
                up = st.file_uploader("Dataset zip", type=["zip"], key="eval_zip",
                                      help="A study CSV (image_name,1_x,…,19_y; optional cs_stage) and its images, "
                                           "landmarks in the ROI frame. Extracted safely (no absolute paths or "
                                           "'..', size and compression-ratio limits).")
                full = st.toggle("Images are full cephalograms (cut the study ROI)", key="eval_zip_full")
                roi = "seed" if full else "none"
                if up is not None:
                    sig = (up.name, up.size, getattr(up, "file_id", None))
                    if ss.get("eval_zip_sig") != sig:
                        ss.pop("eval_zip_paths", None)
                        ss["eval_zip_paths"] = extract_dataset_zip(up.getvalue())
                        ss["eval_zip_sig"] = sig
                    csv_path, img_dir = ss["eval_zip_paths"]
                    dataset = evaluate.load_dataset(csv_path, img_dir)
                    dataset.source = up.name
                    for w in dataset.warnings[:5]:
                        st.caption(f":material/info: {w}")
        except Exception as exc:  # noqa: BLE001 - a bad dataset shows the library's message
            ss.pop("eval_zip_sig", None)
            ds_error = exc
            ui.show_error("Could not load the dataset", exc)
    with c2:
        picked = st.multiselect("Models", names, default=ui.default_models(names), key="eval_models")
        spacing = st.number_input("Pixel spacing (mm per ROI px)", 0.01, 2.0, 0.25, 0.01, format="%.3f",
                                  key="eval_spacing", help="Nominal 0.25 mm/px for the study's 250×600 ROI.")
    with c3:
        if dataset is not None:
            st.metric("images", len(dataset))
            st.caption(f"source: {safe_markdown(dataset.source)}" + (" · ROI: study preset" if roi == "seed" else ""))

if dataset is None or not picked:
    if dataset is None and ds_error is None:
        st.info("Upload a dataset zip to start.", icon=":material/upload:")
    elif not picked:
        st.info("Pick at least one model.", icon=":material/model_training:")
    st.stop()

fingerprint = dataset.fingerprint()


def _key(model: str) -> tuple:
    return (ui.model_version(model), fingerprint, json.dumps(roi))


missing = [m for m in picked if _key(m) not in preds_store]
if missing:
    run_now = len(dataset) * len(missing) <= AUTO_RUN_MAX
    if not run_now:
        run_now = st.button(f"Run {', '.join(missing)} on {len(dataset)} images", type="primary",
                            icon=":material/play_arrow:", key="eval_run")
        st.caption("Predictions are cached on disk per model version and dataset, so a second run is instant.")
    if not run_now:
        st.stop()
    bar = st.progress(0.0, text="starting…")
    for j, m in enumerate(missing):
        try:
            predictor = ui.get_predictor(m)

            def progress(done, total, _m=m, _j=j):
                frac = (_j + done / max(total, 1)) / len(missing)
                bar.progress(min(frac, 1.0), text=f"{_m}: {done}/{total} images")

            with limits.job_slot(ui.job_owner()):
                preds_store[_key(m)] = evaluate.predict_dataset(predictor, dataset, roi=roi, progress=progress)
        except Exception as exc:  # noqa: BLE001
            ui.show_error(f"{m} failed on this dataset", exc)
    bar.empty()

psets = {m: preds_store[_key(m)] for m in picked if _key(m) in preds_store}
if not psets:
    st.stop()
if dataset.landmarks is None:
    st.warning("This dataset has no labels, so nothing can be scored.")
    st.stop()
colors = {m: viz.MODEL_COLORS[i % len(viz.MODEL_COLORS)] for i, m in enumerate(psets)}


def _score(m):
    ps = psets[m]
    k = (ps.key, float(spacing))
    if k not in scores_store:
        scores_store[k] = pck_view.score_model(ps, float(spacing))
    return scores_store[k]


scores = {m: _score(m) for m in psets}


# ----------------------------------------------------------------------------- threshold (a fragment)
@st.fragment
def threshold_section():
    """Only this part re-runs when the unit or the threshold changes (no dataset, no models)."""
    st.subheader("PCK at a threshold")
    u1, u2 = st.columns([1, 2.2], vertical_alignment="bottom")
    unit = u1.radio("Threshold in", list(pck_view.UNITS), horizontal=True, key="eval_unit",
                    format_func=pck_view.UNIT_NAMES.get)
    label, lo, hi, default, step = pck_view.UNITS[unit]
    threshold = u2.slider(f"Threshold ({label})", lo, hi, default, step, key=f"eval_t_{unit}")

    def _sorted(m):
        k = (psets[m].key, unit, float(spacing))
        if k not in sorted_store:
            sorted_store[k] = pck_view.sorted_errors(scores[m], unit, float(spacing), dataset.landmarks)
        return sorted_store[k]

    se = {m: _sorted(m) for m in psets}
    mcols = st.columns(len(psets))
    for col, m in zip(mcols, psets):
        s = scores[m].summary
        with col.container(border=True):
            st.markdown(f"<span style='color:{colors[m]};font-weight:600'>● {safe_label(m)}</span>",
                        unsafe_allow_html=True)
            k1, k2, k3 = st.columns(3)
            k1.metric(f"PCK @ {threshold:g} {label}", f"{se[m].pck(threshold) * 100:.1f}%")
            k2.metric("MRE (mm)", f"{s['mre_mm']:.2f}" if s["mre_mm"] is not None else "—",
                      help=f"{s['mre_px']:.2f} ROI px ± {s['sd_px']:.2f}" if s["mre_px"] is not None else None)
            k3.metric("SDR @ 2 mm", f"{s['sdr']['2.0'] * 100:.1f}%")

    grid = pck_view.curve_grid(unit, threshold)
    f1, f2 = st.columns([1, 1.25])
    with f1:
        st.plotly_chart(viz.pck_curve_figure({m: (grid, se[m].curve(grid)) for m in psets}, threshold, label,
                                             colors=colors), key="eval_curve", config={"displayModeBar": False})
    with f2:
        st.plotly_chart(viz.per_landmark_figure({m: se[m].pck_per_landmark(threshold) for m in psets},
                                                colors=colors), key="eval_bars", config={"displayModeBar": False})
    st.caption(f"Each predicted landmark is compared with the same-index true landmark; a landmark a model did not "
               f"find counts as a miss. mm at {spacing:g} mm per ROI px (nominal unless you changed it).")


threshold_section()

# ----------------------------------------------------------------------------- tables
st.subheader("Metrics next to the study's table")
ours = pck_view.metrics_table(scores)
pct = {c: st.column_config.NumberColumn(c, format="percent") for c in pck_view.PERCENT_COLUMNS}
num = {c: st.column_config.NumberColumn(c, format="%.3f") for c in pck_view.NUMBER_COLUMNS}
st.markdown("**This evaluation**")
st.dataframe(ours, hide_index=True, width="stretch", column_config={**pct, **num})
st.markdown("**The study reported** (400 private images)")
st.dataframe(viz.STUDY_TABLE, hide_index=True, width="stretch")
st.caption("The study's PCKs are *legacy* definitions, reproduced here only to compare: the U-Net one ignores "
           "landmark identity (a predicted blob within 5 px of any true blob) and can exceed 100 %; the "
           "Inception one counts a landmark within 40 ROI px (≈ 10 mm). Dice and Dice loss are computed on the "
           "study's 256×256 square masks rendered from the landmarks, so every model gets one. "
           "Compare the legacy columns with the study, and SDR / MRE with the literature "
           "(CVnet 2025: MRE 0.66 mm, 98.1 % within 2 mm).")

st.subheader("CVM stage agreement")
st.dataframe(pck_view.stage_agreement_table(scores), hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(c, format="percent") for c in pck_view.AGREEMENT_COLUMNS})
st.caption("Share of images whose stage from predicted landmarks equals the reference. Phantoms carry the stage "
           "they were generated for; real images only the stage computed from their annotated landmarks. "
           "Published automatic staging reaches 70–78 %; human raters agree less than half of the time.")

# ----------------------------------------------------------------------------- worst images
st.subheader("Worst images")
g1, g2 = st.columns([1, 3])
gm = g1.selectbox("Model", list(psets), key="eval_gallery_model")
k = g1.slider("How many", 1, min(12, len(dataset)), min(4, len(dataset)), key="eval_gallery_n")
worst = pck_view.worst_images(scores[gm], k)
g1.download_button("per-image metrics (CSV)", pck_view.per_image_csv(scores),
                   file_name="per_image.csv", mime="text/csv", icon=":material/table:", on_click="ignore",
                   key="eval_dl_csv")
g1.download_button("summary (JSON)", pck_view.summary_json(scores),
                   file_name="summary.json", mime="application/json", icon=":material/data_object:",
                   on_click="ignore", key="eval_dl_json")


@st.cache_data(show_spinner=False, max_entries=64)
def _thumb(key: str, path: str, roi_json: str, color: str, _pred, _true) -> bytes:
    return pck_view.thumbnail(path, json.loads(roi_json), _pred, _true, color)


with g2:
    gcols = st.columns(4)
    idx_of = {n: i for i, n in enumerate(dataset.names)}
    ps = psets[gm]
    for j, item in enumerate(worst):
        i = idx_of[item["image_name"]]
        thumb = _thumb(f"{ps.key}:{i}", str(dataset.image_paths[i]), json.dumps(roi), colors[gm], ps.pred[i], ps.true[i])
        gcols[j % len(gcols)].image(thumb, caption=item["caption"], width="stretch")
