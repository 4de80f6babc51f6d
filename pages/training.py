"""Training: start background runs (separate processes), watch them live, cancel, register the result."""
from __future__ import annotations

import streamlit as st

from cvs_core import runs, viz
from cvs_core.train import ARCHITECTURES, TrainConfig, preset_defaults
from pages import ui

ui.page_header("Training", "Train a landmark model in the background. Each run is a separate process writing to "
               f"`{runs.runs_dir()}`, so it survives page refreshes and app restarts.", ":material/model_training:")

ss = st.session_state
ARCH_HELP = {
    "unet_heatmap": "U-Net with 19 Gaussian heatmaps (improved; keeps landmark identity)",
    "unet_seed": "the study's U-Net: one mask channel, Dice loss",
    "inception_gap": "InceptionResNetV2 + global pooling, normalised coordinates (improved)",
    "inception_seed": "the study's InceptionResNetV2: frozen backbone, Flatten head, raw pixel targets (215 M params)",
}
SIZES = {"tiny (fast demo)": dict(base_filters=8, depth=3), "small": dict(base_filters=16, depth=4),
         "full": {}}


def _samples_csv():
    """A CSV of the bundled samples that have images (LC (1), LC (11)), written once under CVS_HOME."""
    from cvs_core.annotations import write_annotations
    from cvs_core.evaluate import samples_dataset

    ds = samples_dataset()
    path = runs.runs_dir().parent / "uploads" / "bundled_samples" / "labels.csv"
    if not path.is_file():
        write_annotations((ds.names, ds.landmarks), path)
    return str(path), str(ui.SAMPLES / "roi")


# ----------------------------------------------------------------------------- the form
with st.expander("Start a new run", expanded=not runs.list_runs(), icon=":material/play_circle:"):
    with st.form("train_form", border=False):
        c1, c2, c3 = st.columns(3, gap="medium")
        with c1:
            arch = st.selectbox("Architecture", ARCHITECTURES, key="tr_arch",
                                format_func=lambda a: f"{a} — {ARCH_HELP.get(a, '')}")
            preset = st.radio("Preset", ["improved", "seed"], horizontal=True, key="tr_preset",
                              help="seed: the study's settings (1000/600 epochs, no augmentation); improved: ours.")
            size = st.selectbox("Network size (U-Nets)", list(SIZES), index=1, key="tr_size",
                                help="Base filters / depth of unet_heatmap; ignored by the other architectures.")
            name = st.text_input("Model name (when registered)", key="tr_name", placeholder="e.g. my_unet")
        with c2:
            data = st.radio("Training data", ["Phantoms", "Bundled samples + phantoms", "Uploaded zip + phantoms"],
                            key="tr_data")
            phantoms = st.number_input("Phantoms per epoch (fresh each epoch)", 0, 20000, 64, step=16, key="tr_phantoms")
            val_phantoms = st.number_input("Validation phantoms (fixed)", 0, 2000, 16, step=4, key="tr_val")
            zip_up = st.file_uploader("Dataset zip (CSV + images, ROI frame)", type=["zip"], key="tr_zip")
        with c3:
            d = preset_defaults(arch, preset)
            epochs = st.number_input("Epochs", 1, 5000, int(min(d["epochs"], 20)), key="tr_epochs",
                                     help=f"preset default {d['epochs']}")
            lr = st.number_input("Learning rate", 1e-6, 1.0, float(d["lr"]), format="%.0e", step=1e-4, key="tr_lr")
            batch = st.number_input("Batch size", 1, 256, int(d["batch_size"]), key="tr_batch")
            augment = st.toggle("Augmentation (rotation, scale, shift, gamma, noise)", bool(d["augment"]),
                                key="tr_augment")
            lab = ss.get("lab_preprocess")
            use_lab = st.toggle("Preprocessing from the CLAHE lab", False, key="tr_use_lab", disabled=not lab,
                                help=(f"{lab}" if lab else "Press 'Use these settings' in the CLAHE lab first."))
            seed = st.number_input("Random seed", 0, 10**6, 0, key="tr_seed")
        submitted = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")

    if submitted:
        try:
            kwargs = dict(model=arch, preset=preset, epochs=int(epochs), lr=float(lr), batch_size=int(batch),
                          augment=bool(augment), phantoms=int(phantoms), val_phantoms=int(val_phantoms),
                          seed=int(seed), name=name.strip() or None)
            if arch == "unet_heatmap":
                kwargs["builder_kwargs"] = dict(SIZES[size])
            if data == "Bundled samples + phantoms":
                kwargs["csv"], kwargs["images"] = _samples_csv()
                kwargs["repeat_csv"] = 8
            elif data == "Uploaded zip + phantoms":
                if zip_up is None:
                    raise ValueError("choose a dataset zip to upload (or pick another training data option)")
                csv_path, img_dir = runs.extract_dataset_zip(zip_up.getvalue())
                kwargs["csv"], kwargs["images"] = str(csv_path), str(img_dir)
            if use_lab and lab:
                pre = dict(preset_defaults(arch, preset)["preprocess"])
                pre.update(lab)
                kwargs["preprocess"] = pre
            config = TrainConfig(**kwargs)
            run_id = runs.start_run(config)
            ss["tr_selected"] = run_id
            st.success(f"Started run **{run_id}**", icon=":material/rocket_launch:")
        except Exception as exc:  # noqa: BLE001
            ui.show_error("Could not start the run", exc)

# ----------------------------------------------------------------------------- runs table
all_runs = runs.list_runs()
if not all_runs:
    st.info("No runs yet. Start one above — a tiny U-Net on 64 phantoms takes about a minute on a CPU.",
            icon=":material/info:")
    st.stop()

STATUS_ICON = {"starting": "⏳", "running": "🔄", "succeeded": "✅", "failed": "❌", "cancelled": "⏹️"}
st.subheader("Runs")
table = [{"run": r["id"], "status": f"{STATUS_ICON.get(r['status'], '')} {r['status_text']}", "model": r["model"],
          "progress": r["progress"], "epoch": f"{r['epoch']}/{r['epochs']}",
          "best val MRE px": r["best"], "registered as": r.get("registered_as") or "", "created": r["created"]}
         for r in all_runs]
st.dataframe(table, hide_index=True, width="stretch", column_config={
    "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
    "best val MRE px": st.column_config.NumberColumn(format="%.2f")})

ids = [r["id"] for r in all_runs]
if ss.get("tr_selected") not in ids:
    ss["tr_selected"] = ids[0]
selected = st.selectbox("Run", ids, key="tr_selected")
any_active = any(r["status"] in runs.ACTIVE for r in all_runs)


@st.fragment(run_every=2 if any_active else None)
def run_panel(run_id: str, was_active: bool):
    try:
        info = runs.run_info(run_id)
    except ValueError as exc:
        st.warning(str(exc))
        return
    if was_active and info["status"] in runs.FINAL:
        st.rerun(scope="app")  # refresh the table, stop polling
    head, actions = st.columns([3, 1.2], vertical_alignment="center")
    with head:
        st.markdown(f"**{run_id}** · {STATUS_ICON.get(info['status'], '')} `{info['status_text']}` · "
                    f"epoch {info['epoch']}/{info['epochs']}"
                    + (f" · best val MRE **{info['best']:.2f} px**" if info["best"] is not None else ""))
        st.progress(info["progress"])
    with actions:
        if info["status"] in runs.ACTIVE:
            if st.button("Cancel run", icon=":material/stop_circle:", key=f"cancel_{run_id}", width="stretch"):
                runs.cancel(run_id)
                st.toast("Cancel requested — the run stops after the current batch.")
        elif info["status"] == "succeeded" and not info.get("registered_as"):
            with st.form(f"register_{run_id}", border=False):
                default = info.get("name") or f"{info['model']}_{run_id.split('-')[-1]}"
                reg_name = st.text_input("Register as", default, key=f"reg_name_{run_id}")
                if st.form_submit_button("Register as model", icon=":material/deployed_code:", type="primary"):
                    try:
                        runs.register_run_model(run_id, reg_name.strip())
                        st.success(f"Registered **{reg_name}** — it is now in Compare, Evaluation and Models.")
                    except Exception as exc:  # noqa: BLE001
                        ui.show_error("Could not register the model", exc)
        elif info.get("registered_as"):
            st.success(f"Registered as **{info['registered_as']}**", icon=":material/check:")
        if info["status"] in runs.FINAL:
            if st.button("Delete run", icon=":material/delete:", key=f"delete_{run_id}", width="stretch"):
                runs.delete_run(run_id)
                st.rerun(scope="app")
    if info["status"] == "failed" and info.get("error"):
        st.error(f"Run failed: {info['error']}", icon=":material/error:")
    df = runs.read_metrics(run_id)
    left, right = st.columns([1.6, 1])
    with left:
        if len(df):
            st.plotly_chart(viz.training_curves_figure(df), key=f"curves_{run_id}",
                            config={"displayModeBar": False})
        else:
            st.caption("Curves appear after the first epoch.")
    with right:
        st.markdown("**Log**")
        st.code(runs.log_tail(run_id, 30) or "(empty)", language=None, height=300)


with st.container(border=True):
    run_panel(selected, any_active)
