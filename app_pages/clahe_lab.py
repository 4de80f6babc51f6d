"""CLAHE lab: contrast settings before/after, histograms, difference, optional live re-prediction."""
from __future__ import annotations

import streamlit as st

from app_pages import ui
from cvs_core import lab as lablib
from cvs_core import viz

ui.page_header("CLAHE lab", "Contrast-limited adaptive histogram equalisation decides what the models see. "
               "Move the sliders and watch the image, its histogram and (optionally) the landmarks change.",
               ":material/tune:")

ss = st.session_state
DISPLAY_MAX_SIDE = 960  # full cephalograms are filtered at full resolution, shown downscaled

# ----------------------------------------------------------------------------- source
with st.container():
    options = ["Sample ROI", "Sample full cephalogram", "Phantom"]
    if ss.get("cmp_uploaded") is not None:
        options.append("Uploaded image (Compare)")
    source = st.radio("Image", options, horizontal=True, key="lab_source")
    if source in ("Sample ROI", "Sample full cephalogram"):
        kind = "roi" if source == "Sample ROI" else "full"
        name = st.selectbox("Sample", ui.sample_names(), key="lab_sample", label_visibility="collapsed")
        src = ui.load_sample(name, kind)
        src_key = f"sample:{kind}:{name}"
    elif source == "Phantom":
        p1, p2 = st.columns(2)
        seed = p1.number_input("Seed", 0, 10**6, 7, key="lab_seed")
        stage = p2.selectbox("Stage", [1, 2, 3, 4, 5, 6], index=2, key="lab_stage", format_func=lambda s: f"CS{s}")
        src, _, _ = ui.load_phantom(int(seed), int(stage))
        kind, src_key = "roi", f"phantom:{int(seed)}:{stage}"
    else:
        up = ss["cmp_uploaded"]
        src, kind, src_key = up.image, up.kind, f"upload:{up.key}"

@st.cache_data(show_spinner=False, max_entries=8)
def _display_source(key: str, _image):
    """Downscaled display copy and its JPEG, computed once per source."""
    small, scale = viz.downscale(_image, DISPLAY_MAX_SIDE)
    return small, scale, viz.encode_image(small, "jpeg", 85)


# ----------------------------------------------------------------------------- the lab (a fragment)
def _settings_box():
    stored = ss.get("lab_preprocess")
    with st.container(border=True, key="lab_in_use"):
        st.markdown("**Settings in use elsewhere**")
        if stored:
            st.caption("Compare and Training can use: " + ", ".join(f"`{k}={v}`" for k, v in stored.items()))
            if st.button("Forget them", icon=":material/delete:", key="lab_forget"):
                ss.pop("lab_preprocess", None)
                st.rerun(scope="fragment")
        else:
            st.caption("None yet — press **Use these settings** to hand the current ones to Compare and Training.")


@st.fragment
def lab(src, kind: str, src_key: str):
    # Sliders start from the saved settings, so coming back to the page shows what is in use.
    d0 = lablib.settings_from(ss.get("lab_preprocess"))
    ctl, view = st.columns([1, 3.2], gap="medium")
    with ctl:
        with st.container(border=True):
            clahe_on = st.toggle("CLAHE", d0["clahe"], key="lab_clahe")
            clip = st.slider("Clip limit", 0.5, 10.0, float(d0["clahe_clip"]), 0.25, key="lab_clip",
                             disabled=not clahe_on, help="How much contrast a tile may gain (the study used 2.0).")
            tile = st.slider("Tile grid", 1, 32, int(d0["clahe_tile"]), 1, key="lab_tile", disabled=not clahe_on,
                             help="The image is split into tile × tile regions, each equalised (study: 8).")
            show_grid = st.toggle("Show the tile grid", False, key="lab_grid", disabled=not clahe_on)
        with st.container(border=True):
            bil_on = st.toggle("Bilateral filter", d0["bilateral"], key="lab_bilateral",
                               help="Edge-preserving smoothing after CLAHE (the study's InceptionResNetV2 used 9/75/75).")
            d = st.slider("Diameter d", 3, 15, int(d0["bilateral_d"]), 2, key="lab_d", disabled=not bil_on)
            s_color = st.slider("σ colour", 5, 150, int(d0["bilateral_sigma_color"]), 5, key="lab_sc",
                                disabled=not bil_on)
            s_space = st.slider("σ space", 5, 150, int(d0["bilateral_sigma_space"]), 5, key="lab_ss",
                                disabled=not bil_on)
        settings = dict(clahe=bool(clahe_on), clahe_clip=float(clip), clahe_tile=int(tile), bilateral=bool(bil_on),
                        bilateral_d=int(d), bilateral_sigma_color=float(s_color), bilateral_sigma_space=float(s_space))
        if st.button("Use these settings", type="primary", icon=":material/check:", key="lab_use", width="stretch"):
            ss["lab_preprocess"] = settings
            st.toast("Saved — Compare and Training can now use these settings.", icon=":material/check:")
        _settings_box()
        live = st.toggle("Live re-prediction", False, key="lab_live",
                         help="Run a model on this image with these settings (and with its own, for comparison).")

    before, scale, before_jpeg = _display_source(src_key, src)
    res = lablib.lab_view(src, settings, DISPLAY_MAX_SIDE, before_display=before)

    with view:
        zoom = st.toggle("Magnify C2–C4", False, key="lab_zoom",
                         help="Show only the region of the three vertebrae (where the landmarks are).")
        box = lablib.vertebra_box(kind, res.before.shape) if zoom else None
        c1, c2, c3 = st.columns(3)
        with c1.container(key="lab_before"):
            st.image(viz.encode_image(lablib.crop(res.before, box), "jpeg", 85) if zoom else before_jpeg,
                     caption="before", width="stretch")
        with c2.container(key="lab_after"):
            shown = lablib.draw_tile_grid(res.after, int(tile)) if show_grid and clahe_on else res.after
            st.image(viz.encode_image(lablib.crop(shown, box) if zoom else shown, "jpeg", 85),
                     caption="after" + (f" · {int(tile)}×{int(tile)} tiles" if show_grid and clahe_on else ""),
                     width="stretch")
        with c3.container(key="lab_diff"):
            st.image(viz.encode_image(lablib.crop(res.diff, box) if zoom else res.diff, "jpeg", 85),
                     caption="difference (orange brighter, blue darker)", width="stretch")
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("filter time", f"{res.ms_filter:.1f} ms",
                  help=f"CLAHE{' + bilateral' if bil_on else ''} at full resolution ({src.shape[1]}×{src.shape[0]} px)")
        m2.metric("global contrast (SD)", f"{res.sd_after:.1f}", f"{res.sd_after - res.sd_before:+.1f}")
        m3.metric("local contrast", f"{res.local_after:.1f}", f"{res.local_after - res.local_before:+.1f}",
                  help="Mean grey-level SD inside 15×15-px windows: edge contrast, what CLAHE is for.")
        m4.metric("mean grey", f"{res.mean_after:.0f}", f"{res.mean_after - res.mean_before:+.0f}")
        with st.container(key="lab_hist"):
            st.image(viz.encode_image(viz.histogram_image({"before": res.before, "after": res.after}), "png"),
                     caption="grey-level histograms", width="stretch")
        with st.expander("What the clip limit does", icon=":material/school:"):
            st.markdown(lablib.CLIP_EXPLAINED)

    if live:
        names = ui.model_names()
        if not names:
            ui.no_models_message()
            return
        m = st.selectbox("Model", names, index=names.index(ui.default_models(names, 1)[0]), key="lab_model")
        inp = ui.InputImage(image=src, name=src_key, kind=kind, source="lab", key=src_key)
        roi = "seed" if kind == "full" else "none"
        try:
            own = ui.predict(m, inp, roi)
            mine = ui.predict(m, inp, roi, settings)
        except Exception as exc:  # noqa: BLE001
            ui.show_error(f"{m} could not run", exc)
            return
        f1, f2 = st.columns([1.4, 1])
        with f1:
            fig = viz.landmark_figure(
                lablib.filtered(mine.preprocessed.roi_image, settings),
                [viz.PointLayer(f"{m} · lab settings", mine.landmarks_roi, viz.MODEL_COLORS[0], mine.confidence),
                 viz.PointLayer(f"{m} · its own settings", own.landmarks_roi, viz.MODEL_COLORS[1], own.confidence)],
                height=560, title="what the model sees with the lab settings")
            st.plotly_chart(fig, key="lab_pred_fig", config={"scrollZoom": True, "displaylogo": False})
        with f2:
            st.metric("mean shift vs its own settings", f"{lablib.mean_shift_px(mine.landmarks_roi, own.landmarks_roi):.2f} px",
                      help="Distance between the landmarks found with the lab settings and with the model's manifest settings.")
            st.metric("inference", f"{mine.ms['total']:.0f} ms")
            st.caption(f"The model was trained with: CLAHE {own.preprocessed.config.clahe} "
                       f"(clip {own.preprocessed.config.clahe_clip}, tile {own.preprocessed.config.clahe_tile}), "
                       f"bilateral {own.preprocessed.config.bilateral}. Settings far from its training data "
                       "usually move the landmarks.")


lab(src, kind, src_key)
