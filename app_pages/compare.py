"""Compare: both models on the same image — overlay, side by side, per-landmark table, CVM stage, downloads."""
from __future__ import annotations

import json

import streamlit as st

from app_pages import ui

ui.page_header("Compare models", "Run two landmark models on the same image and compare where they put the "
               "19 points, how confident they are, and which CVM stage follows.", ":material/compare:")

names = ui.model_names()
if not names:
    ui.no_models_message()
    st.stop()

from cvs_core import access, compare, limits, viz  # noqa: E402
from cvs_core.preprocess import SEED_ROI_BOX  # noqa: E402
from cvs_core import staging  # noqa: E402
from cvs_core.staging import CAVEAT  # noqa: E402

ss = st.session_state
lab_settings = ss.get("lab_preprocess")

# ----------------------------------------------------------------------------- input
with st.container(border=True):
    c_in, c_roi, c_models = st.columns([1.0, 1.35, 1.05], gap="medium")
    with c_in:
        source = st.radio("Input", ["Sample", "Phantom", "Upload"], horizontal=True, key="cmp_source",
                          help="Bundled public study images, a synthetic phantom with exact landmarks, or "
                               "your own PNG / JPEG / TIFF / BMP / DICOM.")
        inp: compare.InputImage | None = None
        input_errors = []
        if source == "Sample":
            samples = ui.sample_names()
            name = st.selectbox("Sample", samples, key="cmp_sample",
                                 format_func=lambda n: n.rsplit(".", 1)[0] + (" ✓" if n in ui.sample_truth() else ""),
                                 help="✓ = annotated: ground truth and errors are shown (LC (1), LC (11)).")
            kind = st.radio("Image", ["ROI", "Full cephalogram"], key="cmp_sample_kind", horizontal=True,
                             help="The 250×600 vertebral ROI, or the 1804×2136 original (the ROI is then cut "
                                  "with the study preset or your box).")
            kind = "roi" if kind == "ROI" else "full"
            inp = compare.sample_input(name, kind, ui.load_sample(name, kind), ui.sample_truth().get(name))
        elif source == "Phantom":
            pc1, pc2 = st.columns(2)
            seed = pc1.number_input("Seed", 0, 10**6, 7, step=1, key="cmp_seed")
            stage_opt = pc2.selectbox("Generated stage", ["random", 1, 2, 3, 4, 5, 6], index=3, key="cmp_stage",
                                      format_func=lambda s: s if s == "random" else f"CS{s}")
            image, lms, gen_stage = ui.load_phantom(int(seed), None if stage_opt == "random" else int(stage_opt))
            inp = compare.InputImage(image=image, name=f"phantom_seed{int(seed)}_cs{gen_stage}.png", kind="roi",
                                     source="phantom", key=f"phantom:{int(seed)}:{stage_opt}", truth=lms,
                                     true_stage=gen_stage)
        else:
            up = st.file_uploader("Image", type=["png", "jpg", "jpeg", "tif", "tiff", "bmp", "dcm", "dicom"],
                                  key="cmp_upload", help="Decoded and downscaled at once; only the small "
                                  "greyscale array is kept.")
            kind = st.radio("The image is", ["ROI", "Full cephalogram"], horizontal=True, key="cmp_up_kind")
            kind = "roi" if kind == "ROI" else "full"
            if up is not None:
                sig = (up.name, up.size, getattr(up, "file_id", None), kind)
                cached = ss.get("cmp_uploaded")
                if cached is None or ss.get("cmp_uploaded_sig") != sig:
                    ss.pop("cmp_uploaded", None)
                    try:
                        cached = compare.decode_upload(up.name, up.getvalue(), kind=kind)
                        ss["cmp_uploaded"], ss["cmp_uploaded_sig"] = cached, sig
                    except ValueError as exc:
                        input_errors.append((f"Could not read {up.name}", exc))
                        cached = None
                inp = cached
            elif ss.get("cmp_uploaded") is not None and ss.get("cmp_uploaded_sig") is None:
                inp = ss["cmp_uploaded"]  # injected (tests, other pages)
            else:
                ss.pop("cmp_uploaded", None)
            if inp is not None:
                # One ground-truth uploader per image: a CSV never stays attached to the next image.
                csv_up = st.file_uploader("Ground truth (optional study CSV)", type=["csv"],
                                          key=f"cmp_truth_csv_{inp.key}",
                                          help="image_name,1_x,1_y,…,19_x,19_y in this image's pixel frame.")
                inp.truth = None
                if csv_up is not None:
                    try:
                        inp.truth = limits.check_landmarks(
                            compare.read_truth_csv(csv_up.getvalue(), inp.name) * inp.scale, inp.image.shape[:2],
                            label="ground truth")
                    except ValueError as exc:
                        input_errors.append(("Could not use the ground-truth CSV", exc))
        if inp is not None:
            for note in inp.notes:
                st.caption(f":material/info: {note}")

    with c_roi:
        roi = "none"
        roi_mode = None
        if inp is None:
            st.info("Upload an image to start.", icon=":material/upload:")
        elif inp.kind == "full":
            roi_labels = {"auto": "Find C2–C4 (auto)", "seed": "Study crop", "none": "Whole image"}
            roi_mode = st.radio("Region of interest", list(roi_labels), format_func=roi_labels.get,
                                key="cmp_roi_mode", horizontal=True,
                                help="Auto: the U-Net finds C2–C4 (drag the box to move it, or drag outside it "
                                     "to draw a new one; both models re-run). Study crop: half-size image cut "
                                     "to the box x 0–500, y 800–2000 of the original. Whole image: no crop.")
            h, w = inp.image.shape[:2]
            if roi_mode == "seed":
                roi = "seed"
            elif roi_mode == "none":
                roi = [0, 0, w, h]
            if roi_mode != "auto":
                preview_box = list(SEED_ROI_BOX) if roi == "seed" else roi
                st.image(viz.encode_image(viz.draw_box(inp.image, preview_box), "jpeg", 80, max_side=420),
                         caption=f"{w}×{h} px · ROI box {preview_box}", width=200)
        else:
            st.markdown("**Region of interest**")
            st.caption(f"The input is already the vertebral ROI ({inp.image.shape[1]}×{inp.image.shape[0]} px); "
                       "it is used as is.")
            st.image(viz.encode_image(inp.image, "jpeg", 80, max_side=300), width=110)
        roi_slot = st.container()  # the auto box editor (needs the spacing, chosen on the right)

    with c_models:
        defaults = ui.default_models(names)
        model_a = st.selectbox("Model A", names, index=names.index(defaults[0]), key="cmp_model_a")
        b_options = ["— none —"] + names
        b_default = defaults[1] if len(defaults) > 1 else "— none —"
        model_b = st.selectbox("Model B", b_options, index=b_options.index(b_default), key="cmp_model_b")
        models = [model_a] + ([model_b] if model_b != "— none —" and model_b != model_a else [])
        if model_b == model_a:
            st.caption(":material/info: Model B is the same as model A: only A is run.")
        spacing_default = inp.nominal_spacing() if inp is not None else compare.NOMINAL_ROI_SPACING
        spacing_in = st.number_input(
            "Pixel spacing of the input (mm/px)", 0.01, 2.0, float(spacing_default), step=0.005, format="%.3f",
            # keyed by image *and* kind: switching ROI ↔ full cephalogram gets that kind's spacing
            key=f"cmp_spacing_{inp.key if inp else 'none'}_{inp.kind if inp else ''}",
            help="Nominal: 0.25 mm/px for the 250×600 ROI, 0.125 mm/px for full cephalograms (the study "
                 "published none). DICOM files give their own.")
        staging_labels = {"default": "calibrated", "textbook": "textbook", "learned": "learned"}
        staging_choice = st.radio("Staging rules", list(staging_labels), format_func=staging_labels.get,
                                  horizontal=True, key="cmp_staging",
                                  help="Calibrated (default): cut-offs fitted to 720 expert-staged cases. "
                                       "Textbook: the published rules as written. Learned: an ordinal model "
                                       "on the same measurements. Each stage shows how often experts agreed.")
        use_lab = False
        if lab_settings:
            use_lab = st.toggle("Use the CLAHE-lab settings", key="cmp_use_lab",
                                help=f"Override the models' CLAHE/bilateral settings with "
                                     f"{json.dumps(lab_settings)}")


@st.cache_resource(show_spinner=False, max_entries=16)
def _find_roi(finder: str, version: str, key: str, spacing: float, _image):
    """The auto ROI of one full cephalogram (one search, shared by both models)."""
    return compare.find_roi(ui.get_predictor(finder), _image, spacing)


@st.cache_resource(show_spinner=False, max_entries=48)
def _predict_roi(model: str, version: str, key: str, roi_key: str, spacing: float, overrides_json: str,
                 _image, _roi):
    """One model through a found / moved ROI (cached per model version, image, box and overrides)."""
    predictor = ui.with_preprocess(ui.get_predictor(model), json.loads(overrides_json) or None)
    return predictor.predict(_image, roi=_roi, spacing_mm=spacing)


# ----------------------------------------------------------------------------- auto ROI of a full cephalogram
found = roi_obj = None
if inp is not None and roi_mode == "auto":
    spacing_val = float(spacing_in)
    try:
        ui.get_predictor(model_a)
        with st.spinner("Finding C2–C4…"):
            found = _find_roi(model_a, ui.model_version(model_a), inp.key, spacing_val, inp.image)
    except Exception as exc:  # noqa: BLE001 - say why, fall back to the study crop
        input_errors.append(("Could not find C2–C4 automatically — the study crop is used instead", exc))
        roi, roi_mode = "seed", "seed"
    if found is not None:
        from cvs_components.landmark_editor import roi_box_editor, trigger

        auto_box = compare.roi_box(found)
        box_key, editor_key = f"cmp_box::{inp.key}::{spacing_val}", f"cmp_roi_box::{inp.key}"
        got = trigger(ss.get(editor_key), "rect")  # a move / new box, before the editor mounts again
        if isinstance(got, dict) and got.get("nonce") != ss.get("cmp_box_nonce"):
            ss["cmp_box_nonce"] = got.get("nonce")
            ss[box_key] = [int(got["x0"]), int(got["y0"]), int(got["x1"]), int(got["y1"])]
        box = ss.get(box_key) or auto_box
        with roi_slot:
            roi_box_editor(inp.image, key=editor_key, rect=box, height_px=360)
            moved = box != auto_box
            try:
                roi_obj = compare.moved_roi(inp.image, box, found, spacing_val) if moved else found
                used = compare.roi_box(roi_obj)
                if max(abs(a - b) for a, b in zip(used, box)) > 2:  # a drawn box: the study's 250:600 shape
                    ss[box_key] = box = used
                    st.rerun()  # show the box the models get
            except ValueError as exc:  # keep the found box
                input_errors.append(("This ROI box cannot be used — the found box is used", exc))
                ss.pop(box_key, None)
                box, moved, roi_obj = auto_box, False, found
            st.caption(f"{'Moved' if moved else 'Found'} box **{box}**"
                       + (f" · found {auto_box}" if moved else f" · confidence {found.confidence:.2f}")
                       + (" · mirrored (patient faces left)" if found.mirrored else "")
                       + f" · search {found.ms:.0f} ms")
            if st.button("Back to the found box", key="cmp_box_reset", icon=":material/restart_alt:",
                         disabled=not moved, help="Undo your moves: use the box the search found."):
                ss.pop(box_key, None)
                st.rerun()
            roi = {"mode": "moved" if moved else "auto", "box": box}

for title, exc in input_errors:  # full width, below the inputs
    ui.show_error(title, exc)
if inp is None:
    st.stop()

# ----------------------------------------------------------------------------- predictions and headline
# Each model's card is drawn as soon as that model is done (the first result shows while the second
# model still loads or runs); the views below need both.
overrides = lab_settings if use_lab else None
colors = {m: viz.MODEL_COLORS[i] for i, m in enumerate(models)}
has_truth = inp.truth is not None
warning_slot = st.container()  # filled once every model has run (some warnings compare them)
cols = st.columns(len(models) + (1 if has_truth else 0))


def _predict(m: str):
    if roi_obj is not None:
        ui.get_predictor(m)  # shows the loading spinner the first time
        return _predict_roi(m, ui.model_version(m), inp.key, json.dumps([model_a, roi]), float(spacing_in),
                            json.dumps(overrides or {}, sort_keys=True), inp.image, roi_obj)
    return ui.predict(m, inp, roi, overrides)


def _model_card(m: str, r):
    """One model's headline: stage, MRE or time, fit check, warnings, expert agreement."""
    with st.container(border=True):
        st.markdown(f"<span style='color:{colors[m]};font-weight:600'>● {access.safe_label(m)}</span>",
                    unsafe_allow_html=True)
        k1, k2 = st.columns(2)
        stage_value = "—" if not r.stage else (r.stage.label if r.fit_ok else f"{r.stage.label}?")
        k1.metric("CVM stage", stage_value, help=r.stage.confidence if r.stage else r.stage_error)
        if r.summary is not None:
            s = r.summary
            k2.metric("MRE (mm)", f"{s['mre_mm']:.2f}" if s["mre_mm"] is not None else "—",
                      help=f"{s['mre_px']:.1f} ROI px; {s['within_2mm'] * 100:.0f}% of landmarks within 2 mm"
                      if s["mre_px"] is not None else None)
        else:
            k2.metric("time (ms)", f"{r.ms:.0f}")
        copies = ui.tta_copies(m)
        st.caption(f"{r.n_found}/19 landmarks · {r.codec_kind} · {r.input_size[1]}×{r.input_size[0]} input · "
                   + (f"{copies} shifted copies, median · " if copies > 1 else "") + f"{r.ms:.0f} ms",
                   help="Test-time shifts: the model runs on the image as given and moved by a few pixels; "
                        "the landmarks are the median of the copies (more accurate, slower)." if copies > 1 else None)
        if not r.fit_ok:
            st.warning(f"Unreliable — {r.fit_message}", icon=":material/warning:")
        elif r.fit_message:
            st.caption(f":material/check: {r.fit_message}")
        for w in r.warnings:
            st.warning(w, icon=":material/warning:")
        if r.stage is not None and r.fit_ok and (agree := staging.agreement_text(r.stage)):
            st.caption(agree)


preds = {}
for col, m in zip(cols, models):
    with col:
        try:
            with st.spinner(f"{m}: finding landmarks…"):
                preds[m] = _predict(m)
        except Exception as exc:  # noqa: BLE001 - show the library's message, keep the page alive
            ui.show_error(f"{m} could not run on this image", exc)
            continue
        alone = compare.analyse(inp, {m: preds[m]}, {m: ui.codec_kind(m)}, roi, float(spacing_in),
                                staging_config=staging_choice)
        _model_card(m, alone.models[m])
if not preds:
    st.stop()

comp = compare.analyse(inp, preds, {m: ui.codec_kind(m) for m in preds}, roi, float(spacing_in),
                       staging_config=staging_choice)
roi_image, spacing = comp.roi_image, comp.roi_spacing_mm
with warning_slot:
    for w in comp.warnings:
        st.warning(w, icon=":material/warning:")
if has_truth:
    with cols[-1].container(border=True):
        st.markdown(f"<span style='color:{viz.TRUTH_COLOR};font-weight:600'>✕ ground truth</span>",
                    unsafe_allow_html=True)
        k1, k2 = st.columns(2)
        k1.metric("CVM stage", comp.truth_stage.label if comp.truth_stage else "—", help="from the true landmarks")
        if inp.true_stage:
            k2.metric("generated as", f"CS{inp.true_stage}")
        st.caption("phantom: exact landmarks" if inp.source == "phantom" else "annotated landmarks")
st.caption(f":material/warning: {CAVEAT}")
st.caption(comp.spacing_caption())

# ----------------------------------------------------------------------------- views
layers = [viz.PointLayer(m, r.landmarks, colors[m], r.confidence) for m, r in comp.models.items()]
truth_layer = viz.PointLayer("ground truth", comp.truth, viz.TRUTH_COLOR, truth=True) if has_truth else None
heat_model = comp.response_model

# Only the open tab is drawn (each figure or report costs tens of ms of the server's CPU, for every
# user, on every rerun); the overlay tab always is, so its controls keep their values.
tab_overlay, tab_side, tab_table, tab_stage, tab_export = st.tabs(
    [":material/layers: Overlay", ":material/view_column: Side by side", ":material/table: Landmarks",
     ":material/timeline: CVM stage", ":material/download: Export"], key="cmp_tab", on_change="rerun")

with tab_overlay:
    c_fig, c_ctl = st.columns([3, 1])
    with c_ctl:
        opacity = 0.0
        if heat_model:
            opacity = st.slider(f"Heatmap opacity ({heat_model})", 0.0, 1.0, 0.45, 0.05, key="cmp_opacity",
                                help="The U-Net's predicted mask / max over its 19 heatmaps, warped onto the ROI.")
        else:
            st.caption("No heatmap: neither model predicts a mask/heatmap.")
        numbers = st.radio("Landmark numbers", ["model A", "all", "none"], horizontal=True, key="cmp_numbers",
                           help="Numbers of both models overlap where they agree; model A's alone are easier to read.")
        show_numbers = {"model A": "first", "all": True, "none": False}[numbers]
        zoom = st.toggle("Zoom to the vertebrae", True, key="cmp_zoom")
        show_truth = st.toggle("Ground truth", True, key="cmp_truth", disabled=truth_layer is None)
        show_input = st.toggle("What the models see", False, key="cmp_model_input",
                               help="Each model's preprocessed input: ROI, CLAHE/bilateral, resized to its input size.")
        st.caption("Hover a point for its name, position and confidence. Scroll to zoom, drag to pan, "
                   "double-click to reset.")
        st.markdown("**Legend**")
        for m in preds:
            st.markdown(f"<span style='color:{colors[m]}'>●</span> {access.safe_label(m)}", unsafe_allow_html=True)
        if truth_layer is not None:
            st.markdown(f"<span style='color:{viz.TRUTH_COLOR}'>✕</span> ground truth", unsafe_allow_html=True)
    response = preds[heat_model].response_map_roi() if heat_model and opacity > 0 else None
    overlay_layers = layers + ([truth_layer] if truth_layer is not None and show_truth else [])
    with c_fig:
        fig = viz.landmark_figure(roi_image, overlay_layers, response=response, response_opacity=opacity,
                                  response_name=f"{heat_model} heatmap", show_numbers=show_numbers, height=680,
                                  zoom_margin=45 if zoom else None)
        st.plotly_chart(fig, key="cmp_overlay_fig", config={"scrollZoom": True, "displaylogo": False})
    if show_input:
        icols = st.columns(max(len(preds), 3))
        for col, (m, p) in zip(icols, preds.items()):
            size = p.preprocessed.image.shape
            col.image(viz.encode_image(compare.model_input_preview(p), "png"), width="stretch",
                      caption=f"{m}: {size[1]}×{size[0]} px, {size[2] if len(size) == 3 else 1} channel(s)")

if tab_side.open:
    with tab_side:
        side = st.columns(len(preds))
        for col, (m, p), layer in zip(side, preds.items(), layers):
            with col:
                resp = p.response_map_roi() if comp.models[m].has_response else None
                lay = [layer] + ([truth_layer] if truth_layer is not None else [])
                st.markdown(f"<span style='color:{colors[m]};font-weight:600'>● {access.safe_label(m)}</span> · "
                            f"{p.ms['total']:.0f} ms",
                            unsafe_allow_html=True)
                f = viz.landmark_figure(roi_image, lay, response=resp, response_opacity=0.35 if resp is not None else 0,
                                        height=640, zoom_margin=45, legend=False)
                st.plotly_chart(f, key=f"cmp_side_{m}", config={"scrollZoom": True, "displaylogo": False})

if tab_table.open:
    with tab_table:
        table = comp.table
        st.dataframe(table, hide_index=True, width="stretch", height=38 + 35 * 19)
        st.caption(f"x, y in ROI pixels; confidence is the heatmap peak (heatmap/mask models only); "
                   f"mm at {spacing:.4g} mm/px. A↔B: distance between the two models' points.")

if tab_stage.open:
    with tab_stage:
        scols = st.columns(len(preds) + (1 if comp.truth_stage else 0))
        for col, (m, r) in zip(scols, comp.models.items()):
            with col:
                if r.stage:
                    ui.stage_card(m, r.stage, colors[m], true_stage=inp.true_stage,
                                  unreliable=None if r.fit_ok else r.fit_message, warnings=r.warnings)
                else:
                    st.warning(f"**{m}**: no stage — {r.stage_error}")
        if comp.truth_stage:
            with scols[-1]:
                ui.stage_card("from the true landmarks", comp.truth_stage, viz.TRUTH_COLOR, true_stage=inp.true_stage)

if tab_export.open:
    with tab_export:
        base = inp.name.rsplit(".", 1)[0]
        st.markdown("**Landmarks (study CSV format)** — coordinates in the frame of the input image "
                    f"`{inp.name}`" + (" (full cephalogram)" if inp.kind == "full" else ""))
        ecols = st.columns(len(preds) + 3)
        for col, m in zip(ecols, preds):
            col.download_button(f"{m}.csv", comp.landmarks_csv(m, preds), file_name=f"{base}_{m}.csv",
                                mime="text/csv", icon=":material/table:", on_click="ignore", key=f"dl_csv_{m}")
        overlay = viz.overlay_png(roi_image, overlay_layers,
                                  response=preds[heat_model].response_map_roi() if heat_model and opacity > 0 else None,
                                  response_opacity=opacity)
        ecols[-3].download_button("overlay.png", overlay, file_name=f"{base}_overlay.png", mime="image/png",
                                  icon=":material/image:", on_click="ignore", key="dl_png")
        report = comp.report(preds, CAVEAT)
        ecols[-2].download_button("report.json", json.dumps(report, indent=2), file_name=f"{base}_report.json",
                                  mime="application/json", icon=":material/data_object:", on_click="ignore",
                                  key="dl_json")
        ecols[-1].download_button("report.html", comp.html_report(overlay, CAVEAT), file_name=f"{base}_report.html",
                                  mime="text/html", icon=":material/description:", on_click="ignore", key="dl_html",
                                  help="One self-contained page; print it to PDF from the browser.")
        st.image(overlay, caption="overlay.png preview", width=260)
