"""Training: start background runs (separate processes), watch them live, cancel, register the result."""
from __future__ import annotations

import streamlit as st

from app_pages import ui
from cvs_core import runs, viz
from cvs_core import train_request as tr
from cvs_core.access import safe_markdown

ui.page_header("Training", "Train a landmark model in the background. Each run is a separate process writing to its "
               "folder under `runs/` in the lab's data directory, so it survives page refreshes and app restarts.",
               ":material/model_training:")

ss = st.session_state


def _apply_defaults():
    """Epochs, learning rate, batch size and augmentation follow the chosen architecture and preset."""
    d = tr.form_defaults(ss["tr_arch"], ss["tr_preset"])
    ss.update(tr_epochs=d["epochs"], tr_lr=d["lr"], tr_batch=d["batch_size"], tr_augment=d["augment"])


# ----------------------------------------------------------------------------- the form
with st.expander("Start a new run", expanded=not runs.list_runs(), icon=":material/play_circle:"):
    a1, a2 = st.columns([2, 1], gap="medium")
    arch = a1.selectbox("Architecture", tr.architectures(), key="tr_arch", on_change=_apply_defaults,
                        format_func=lambda a: f"{a} — {tr.ARCH_HELP.get(a, '')}")
    preset = a2.radio("Preset", ["improved", "seed"], horizontal=True, key="tr_preset", on_change=_apply_defaults,
                      help="seed: the study's settings (1000/600 epochs, no augmentation); improved: ours.")
    if "tr_epochs" not in ss:
        _apply_defaults()
    with st.form("train_form", border=False):
        c1, c2, c3 = st.columns(3, gap="medium")
        with c1:
            size = st.selectbox("Network size (U-Nets)", list(tr.SIZES), key="tr_size",
                                help="Base filters / depth, for the architectures whose builder takes them (unet_heatmap); ignored by the others.")
            name = st.text_input("Model name (when registered)", key="tr_name", placeholder="e.g. my_unet")
            seed = st.number_input("Random seed", 0, 10**6, 0, key="tr_seed")
        with c2:
            data = st.radio("Training data", tr.DATA_OPTIONS, key="tr_data")
            phantoms = st.number_input("Phantoms per epoch (fresh each epoch)", 0, 20000, 64, step=16, key="tr_phantoms")
            val_phantoms = st.number_input("Validation phantoms (fixed)", 0, 2000, 16, step=4, key="tr_val")
            zip_up = st.file_uploader("Dataset zip (CSV + images, ROI frame)", type=["zip"], key="tr_zip")
        with c3:
            d = tr.form_defaults(arch, preset)
            epochs = st.number_input("Epochs", 1, 5000, key="tr_epochs", help=f"preset default {d['epochs']}")
            lr = st.number_input("Learning rate", 1e-6, 1.0, format="%.0e", step=1e-4, key="tr_lr",
                                 help=f"preset default {d['lr']:g}")
            batch = st.number_input("Batch size", 1, 256, key="tr_batch", help=f"preset default {d['batch_size']}")
            augment = st.toggle("Augmentation", key="tr_augment", help="Random rotation, scale, shift, gamma and noise.")
            lab = ss.get("lab_preprocess")
            use_lab = st.toggle("CLAHE-lab preprocessing", False, key="tr_use_lab", disabled=not lab,
                                help=(f"{lab}" if lab else "Press 'Use these settings' in the CLAHE lab first."))
        may_start = ui.can("start_run")
        submitted = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:",
                                          disabled=not may_start)
    if not may_start:
        st.caption(f":material/lock: {ui.denied_note('start_run')}")

    if submitted:
        try:
            ui.require("start_run")
            req = tr.TrainRequest(arch=arch, preset=preset, size=size, name=name, data=data, phantoms=int(phantoms),
                                  val_phantoms=int(val_phantoms), epochs=int(epochs), lr=float(lr),
                                  batch_size=int(batch), augment=bool(augment), seed=int(seed),
                                  lab=lab if (use_lab and lab) else None,
                                  zip_bytes=zip_up.getvalue() if zip_up is not None else None)
            run_id = runs.start_run(tr.build_config(req, ui.SAMPLES.parent), owner=ui.current_user().id)
            ss["tr_selected"] = run_id
            st.success(f"Started run **{run_id}**", icon=":material/rocket_launch:")
        except Exception as exc:  # noqa: BLE001
            ui.show_error("Could not start the run", exc)

# ----------------------------------------------------------------------------- runs table
all_runs = runs.list_runs()
if not all_runs:
    st.info("No runs yet. Start one above — for a quick try keep the tiny U-Net and set a few epochs.",
            icon=":material/info:")
    st.stop()

STATUS_ICON = {"starting": ":material/hourglass_top:", "running": ":material/autorenew:",
               "succeeded": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/stop_circle:",
               "interrupted": ":material/power_off:"}
st.subheader("Runs")
st.dataframe(tr.runs_table(all_runs), hide_index=True, width="stretch", column_config={
    "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
    "best val MRE px": st.column_config.NumberColumn(format="%.2f")})

ids = [r["id"] for r in all_runs]
if ss.get("tr_selected") not in ids:
    ss["tr_selected"] = ids[0]
selected = st.selectbox("Run", ids, key="tr_selected")
any_active = any(r["status"] in runs.ACTIVE for r in all_runs)
shown_status = {r["id"]: r["status"] for r in all_runs}


@st.cache_data(show_spinner=False)
def _baseline() -> float:
    return tr.mean_shape_baseline_px()


def _guarded(action: str, owner, fn, *args, **kwargs) -> bool:
    """Check the action again at the moment it runs (a button shown earlier is no permission), then
    call ``fn``; a refusal or a library error is shown, never raised."""
    try:
        ui.require(action, owner)
        fn(*args, **kwargs)
        return True
    except Exception as exc:  # noqa: BLE001 - AccessDenied, RunLimitError, ValueError: one sentence each
        ui.show_error(f"Could not {action.replace('_', ' ')}", exc)
        return False


@st.fragment(run_every=2 if any_active else None)
def run_panel(run_id: str, was_active: bool):
    try:
        info = runs.run_info(run_id)
    except ValueError as exc:
        st.warning(str(exc))
        return
    if info["status"] != shown_status.get(run_id):
        st.rerun(scope="app")  # the table above says otherwise (starting → running → done): refresh it
    head, actions = st.columns([3, 1.2], vertical_alignment="center")
    with head:
        st.markdown(f"**{run_id}** · {STATUS_ICON.get(info['status'], '')} `{info['status_text']}` · "
                    f"epoch {info['epoch']}/{info['epochs']}"
                    + (f" · best val MRE **{info['best']:.2f} px**" if info["best"] is not None else ""))
        st.progress(info["progress"])
    with actions:
        owner = info.get("owner")
        if info["status"] in runs.ACTIVE and ui.can("cancel_run", owner):
            if st.button("Cancel run", icon=":material/stop_circle:", key=f"cancel_{run_id}", width="stretch"):
                _guarded("cancel_run", owner, runs.cancel, run_id)
                st.toast("Cancel requested — the run stops after the current batch.")
        elif info["status"] == "succeeded" and not info.get("registered_as") and ui.can("upload_model"):
            with st.form(f"register_{run_id}", border=False):
                default = tr.free_model_name(info.get("name") or f"{info['model']}_{run_id.split('-')[-1]}")
                reg_name = st.text_input("Register as", default, key=f"reg_name_{run_id}")
                registered = st.form_submit_button("Register as model", icon=":material/deployed_code:",
                                                   type="primary")
            if registered:
                try:
                    ui.require("upload_model")
                    runs.register_run_model(run_id, reg_name.strip())
                    st.toast(f"Registered **{safe_markdown(reg_name)}** — it is now in Compare, Evaluation and Models.",
                             icon=":material/check:")
                    st.rerun(scope="app")  # the runs table shows "registered as"
                except Exception as exc:  # noqa: BLE001
                    ui.show_error("Could not register the model", exc)
        elif info.get("registered_as"):
            st.success(f"Registered as **{safe_markdown(info['registered_as'])}**", icon=":material/check:")
            if st.button("Use in Compare", icon=":material/compare:", key=f"use_{run_id}", width="stretch"):
                ss["cmp_model_a"] = info["registered_as"]
                st.switch_page("app_pages/compare.py")
        if info.get("resumable") and ui.can("resume_run", owner):
            if st.button("Resume run", icon=":material/resume:", key=f"resume_{run_id}", width="stretch",
                         type="primary", help="Continue from the last checkpoint (epochs done and the best "
                                              "checkpoint are kept)."):
                if _guarded("resume_run", owner, runs.resume_run, run_id, owner=ui.current_user().id):
                    st.rerun(scope="app")
        if info["status"] in runs.FINAL and ui.can("delete_run", owner):
            if st.button("Delete run", icon=":material/delete:", key=f"delete_{run_id}", width="stretch"):
                if _guarded("delete_run", owner, runs.delete_run, run_id):
                    st.rerun(scope="app")
        if info["status"] in runs.ACTIVE + runs.FINAL and not ui.can("delete_run", owner):
            st.caption(f":material/lock: {ui.denied_note('delete_run', owner)}")
    if info["status"] == "failed" and info.get("error"):
        st.error(f"Run failed: {info['error']}", icon=":material/error:")
    if info["status"] == "interrupted":
        st.warning(f"The training process stopped without a final status ({info.get('error') or 'killed'}). "
                   "Resume it here or from a shell:", icon=":material/power_off:")
    if info.get("resumable"):
        st.caption("Resume from a shell (same run folder, continues from the last checkpoint):")
        st.code(info["resume_command"], language="bash")
    df = runs.read_metrics(run_id)
    left, right = st.columns([1.6, 1])
    with left:
        if len(df):
            st.plotly_chart(viz.training_curves_figure(df), key=f"curves_{run_id}",
                            config={"displayModeBar": False})
            st.caption(f"Baseline: always answering the mean shape scores {_baseline():.1f} px MRE on phantoms; a "
                       "model below that has learnt something from the image.")
        else:
            st.caption("Curves appear after the first epoch.")
    with right:
        st.markdown("**Log**")
        st.code(tr.clean_log(runs.log_tail(run_id, 60)) or "(empty)", language=None, height=300, wrap_lines=True)


with st.container(border=True):
    run_panel(selected, any_active)
