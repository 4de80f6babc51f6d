"""Models: registered model folders with their manifests; upload a .keras / study .h5; delete user models."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import ui

ui.page_header("Models", "Every registered model is a folder with `model.keras` and a `manifest.json` that records "
               "its architecture, preprocessing, codec, training data, metrics and weights checksum.",
               ":material/deployed_code:")

from cvs_core import model_view, registry, viz  # noqa: E402
from cvs_core.access import safe_label, safe_markdown  # noqa: E402

ss = st.session_state
infos = ui.model_infos()

# ----------------------------------------------------------------------------- table
if not infos:
    st.info("No model is registered yet. Run `make run` (prepares the demo models), train one on the Training "
            "page, or upload one below.", icon=":material/info:")
else:
    rows = []
    for m in infos:
        man = m.manifest
        pre = man.get("preprocess", {})
        size = man.get("input_size") or pre.get("input_size")
        best = viz.headline_mre_px(man.get("metrics"))
        rows.append({
            "name": m.name, "kind": "shipped" if m.shipped else "user",
            "architecture": man.get("architecture"), "codec": (man.get("codec") or {}).get("kind"),
            "input (h×w×c)": f"{size[0]}×{size[1]}×{pre.get('channels', 1)}" if size else "—",
            "CLAHE": f"{pre.get('clahe_clip')}/{pre.get('clahe_tile')}" if pre.get("clahe") else "off",
            "params": man.get("n_params"), "MRE px": best,
            "ImageNet": man.get("imagenet_weights"), "created": (man.get("created") or "")[:19],
        })
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
        "params": st.column_config.NumberColumn(format="%,d"),
        "MRE px": st.column_config.NumberColumn(format="%.2f", help="Held-out phantoms when measured, else "
                                                "the best validation MRE while training (ROI px)."),
        "ImageNet": st.column_config.CheckboxColumn("ImageNet")})

    st.subheader("Details")
    pick = st.selectbox("Model", [m.name for m in infos], key="models_pick")
    info = next(m for m in infos if m.name == pick)
    man = info.manifest
    c1, c2 = st.container(), st.container()  # full width: the manifest's JSON lines need it
    with c1:
        training = man.get("training") or {}
        data = training.get("data") or {}
        st.markdown(f"**Architecture** `{man.get('architecture')}` · builder `{json.dumps(man.get('builder_kwargs', {}))}`")
        st.markdown(f"**Codec** `{json.dumps(man.get('codec'))}`")
        st.markdown(f"**Preprocessing** `{json.dumps(man.get('preprocess'))}`")
        if (inference := model_view.describe_inference(man)):
            st.markdown(f"**Inference** {inference}")
        st.markdown(f"**Training** preset `{training.get('preset', '—')}`, epochs run {training.get('epochs_run', '—')}")
        st.markdown("\n".join(f"- {line}" for line in model_view.describe_training_data(data)))
        if training.get("recipe"):
            st.caption(f":material/science: {training['recipe']}")
        table = viz.manifest_metrics_table(man.get("metrics"))
        if len(table):
            st.markdown("**Measured accuracy** (nominal 0.25 mm/px)")
            st.dataframe(table, hide_index=True, width="stretch", column_config={
                "MRE px": st.column_config.NumberColumn(format="%.2f"),
                "MRE mm": st.column_config.NumberColumn(format="%.2f"),
                "SDR 2 mm": st.column_config.NumberColumn(format="percent"),
                "stage agreement": st.column_config.NumberColumn(format="percent")})
        with st.expander("All metrics (JSON)"):
            st.json(man.get("metrics", {}))
        st.markdown(f"**Weights sha256** {model_view.weights_checksum(man)}")
        st.markdown(f"**ImageNet backbone weights** {'yes' if man.get('imagenet_weights') else 'no'} · "
                    f"backend `{man.get('backend')}` · Keras {man.get('keras_version')} · schema "
                    f"`{man.get('landmark_schema')}`")
        st.caption(f"Folder: `{model_view.display_folder(info.folder, info.shipped)}`")
        if not info.shipped and not ui.can("delete_model"):
            st.caption(f":material/lock: {ui.denied_note('delete_model')}")
        elif not info.shipped:
            with st.popover("Delete this model", icon=":material/delete:"):
                st.write(f"Delete the user model **{safe_markdown(pick)}** and its files?")
                if st.button("Yes, delete", type="primary", key="models_delete"):
                    try:
                        ui.require("delete_model")
                        version = ui.model_version(pick)
                        registry.delete_model(pick)
                        ui.forget_model(pick, version)  # only this model: the others stay loaded
                        st.rerun()
                    except Exception as exc:  # noqa: BLE001
                        ui.show_error("Could not delete", exc)
        else:
            st.caption("Shipped models cannot be deleted from the app.")
    with c2:
        with st.expander("manifest.json", expanded=False, icon=":material/data_object:"):
            st.json(man, expanded=2)

# ----------------------------------------------------------------------------- upload
st.subheader("Upload a model")
st.caption("A Keras 3 `.keras` file (loaded in safe mode — no arbitrary code) or one of the study's `.h5` files "
           "(full model or weights only). Say how it was trained; the manifest is written from your answers.")
from cvs_core.architectures import ARCHITECTURES, CODEC_FACTORIES  # noqa: E402

with st.form("model_upload"):
    u1, u2, u3 = st.columns(3, gap="medium")
    with u1:
        # no type filter: a wrong file gets a sentence from model_view.check_model_file, not just a red icon
        up = st.file_uploader("Model file (.keras or .h5)", key="models_file")
        new_name = st.text_input("Name", key="models_name", placeholder="e.g. study_unet")
    with u2:
        arch = st.selectbox("Architecture", list(ARCHITECTURES), key="models_arch",
                            format_func=lambda a: f"{a} — {ARCHITECTURES[a].help}")
        preset = st.radio("Preprocessing preset", ["seed", "improved"], horizontal=True, key="models_preset",
                          help="seed: exactly the study's preprocessing for this architecture.")
    with u3:
        codec_kind = st.selectbox("Codec (output → landmarks)", ["auto (from architecture)", *CODEC_FACTORIES],
                                  key="models_codec")
        builder = st.text_input("Builder arguments (JSON, weights-only .h5)", "{}", key="models_builder")
    may_upload = ui.can("upload_model")
    go = st.form_submit_button("Register uploaded model", type="primary", icon=":material/upload:",
                               disabled=not may_upload)
if not may_upload:
    st.caption(f":material/lock: {ui.denied_note('upload_model')}")


def _register_upload(up, name: str, arch: str, preset: str, codec_kind: str, builder_json: str) -> Path:
    """Check the upload's first bytes (a sentence for a wrong file), then register it through
    ``registry.register_model_file`` (safe-mode load, output shape checked against the codec)."""
    ui.require("upload_model")
    if up is None:
        raise ValueError("choose a .keras or .h5 file")
    model_view.check_model_file(up.name, up.getvalue()[:16])
    if not name:
        raise ValueError("give the model a name")
    return registry.register_model_file(up.getvalue(), name, arch, preset, codec=codec_kind,
                                        builder_kwargs=builder_json or "{}", source_name=up.name)


if go:
    try:
        with st.spinner("Loading and checking the model…"):
            dst = _register_upload(up, new_name.strip(), arch, preset, codec_kind, builder)
        st.success(f"Registered **{safe_markdown(new_name)}** in `{dst}`", icon=":material/check:")
    except Exception as exc:  # noqa: BLE001
        ui.show_error("Could not register the uploaded model", exc)

# ----------------------------------------------------------------------------- caches (admin)
st.subheader("Caches")
loaded = ui.loaded_models()
st.caption("Loaded models are held by the server process, outside Streamlit's caches, so the page menu's "
           "“Clear cache” (any browser can send it) does not unload them for everyone. Loaded now: "
           + (", ".join(f"`{safe_label(n)}`" for n in sorted(loaded)) or "none") + ".")
if ui.can("clear_cache"):
    if st.button("Clear caches and unload models", icon=":material/mop:", key="models_clear_cache"):
        try:
            ui.require("clear_cache")
            st.cache_data.clear()
            st.cache_resource.clear()
            n = ui.unload_all_models()
            st.toast(f"Caches cleared; {n} model(s) unloaded (they load again on first use).",
                     icon=":material/check:")
        except Exception as exc:  # noqa: BLE001
            ui.show_error("Could not clear the caches", exc)
else:
    st.caption(f":material/lock: {ui.denied_note('clear_cache')}")
