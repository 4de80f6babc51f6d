"""Annotate: correct a model's landmarks image by image, save every change, fine-tune on the result.

All state lives in the dataset folder (``cvs_core.annotation_store``); this page only draws it and
forwards clicks, so a reload or a server restart resumes where the user was.
"""
from __future__ import annotations

import streamlit as st

from cvs_components.landmark_editor import landmark_editor, trigger
from cvs_core import annotation_store as astore
from cvs_core.access import safe_markdown
from cvs_core.landmarks import LANDMARKS
from app_pages import ui

ui.page_header("Annotate", "Correct the model's 19 landmarks on your own images — drag a point, or pick its number "
               "and click where it belongs. Every change is saved at once; the corrected images can fine-tune "
               "a model.", ":material/edit_location_alt:")

ss = st.session_state
STATUS_ICON = {"corrected": "✓", "predicted": "○", "skipped": "×", None: "·"}  # plain glyphs: render in any font


# ----------------------------------------------------------------------------- helpers
def _add_samples() -> str:
    """A dataset "samples" with the bundled public ROI images (made once)."""
    name = "samples"
    if name not in astore.list_datasets():
        store = astore.AnnotationStore.create(name, roi="none")
        for p in sorted((ui.SAMPLES / "roi").glob("*.jpg")):
            store.add_image(p.name, p.read_bytes())
    return name


def _run_status(run_id: str) -> str | None:
    from cvs_core import runs

    try:
        return runs.run_info(run_id)["status"]
    except ValueError:
        return None


def _go(store: astore.AnnotationStore, name: str | None):
    if name:
        ss[f"ann_cur::{store.name}"] = name
        store.set_position(name)


def _apply(store: astore.AnnotationStore, image: str, result, who: str) -> bool:
    """Apply the editor's edit / undo trigger once (deduplicated by nonce). True when applied."""
    applied = ss.setdefault("ann_applied", set())
    changed = False
    edit = trigger(result, "edit")
    if isinstance(edit, dict) and edit.get("nonce") not in applied:
        applied.add(edit.get("nonce"))
        try:
            store.move_landmark(image, int(edit["index"]), float(edit["x"]), float(edit["y"]), who=who)
            changed = True
        except (astore.AnnotationStoreError, KeyError, TypeError, ValueError) as exc:
            ui.show_error("Could not save the move", exc)
    undo = trigger(result, "undo")
    if undo is not None and ("undo", undo) not in applied:
        applied.add(("undo", undo))
        changed = store.undo(image) or changed
    return changed


@st.cache_data(show_spinner=False, max_entries=64)
def _read(path: str, mtime: float):
    from cvs_core.imaging import read_image

    return read_image(path).as_uint8()


@st.cache_data(show_spinner=False)
def _diagram() -> bytes:
    """A phantom's C2–C4 with the 19 numbered landmarks and outlines (PNG)."""
    from cvs_core import viz

    image, lms, _ = ui.load_phantom(11, 4)
    crop, lms_crop = astore.crop_around_landmarks(image, lms, margin=25)
    return viz.overlay_png(crop, [viz.PointLayer("landmarks", lms_crop, "#4fc3f7")], scale=2.6)


# ----------------------------------------------------------------------------- dataset
with st.container(border=True):
    c1, c2, c3 = st.columns([1.2, 1.4, 1], gap="medium")
    datasets = astore.list_datasets()
    with c1:
        if ss.get("ann_dataset_new") in datasets:
            ss["ann_dataset"] = ss.pop("ann_dataset_new")
        dataset = st.selectbox("Dataset", datasets, key="ann_dataset",
                               placeholder="no dataset yet — create one →",
                               help="Folders under `datasets/` in the lab's data directory: images + labels.csv + "
                                    "state.json.")
        who = st.text_input("Your name (saved with every correction)", key="ann_who", placeholder="e.g. A. Student")
    with c2:
        with st.expander("New dataset / add images", expanded=not datasets, icon=":material/add_photo_alternate:"):
            new_name = st.text_input("Dataset name", key="ann_new_name", placeholder="e.g. clinic_2026")
            kind = st.radio("Images are", ["ROI crops (C2–C4 region)", "Full cephalograms (study crop)"],
                            key="ann_new_kind", horizontal=True)
            files = st.file_uploader("Images or a zip of images", type=["png", "jpg", "jpeg", "tif", "tiff", "bmp",
                                                                       "dcm", "zip"],
                                     accept_multiple_files=True, key="ann_files")
            b1, b2 = st.columns(2)
            if b1.button("Create / add", key="ann_create", icon=":material/upload:"):
                try:
                    target = new_name.strip() or dataset
                    if not target:
                        raise astore.AnnotationStoreError("give the new dataset a name")
                    if target in datasets:
                        store_new = astore.AnnotationStore.open(target)
                    else:
                        store_new = astore.AnnotationStore.create(
                            target, roi="none" if kind.startswith("ROI") else "seed")
                    added, notes = [], []
                    for f in files or []:
                        try:
                            if f.name.lower().endswith(".zip"):
                                a, n = store_new.add_zip(f.getvalue())
                                added += a
                                notes += n
                            else:
                                added.append(store_new.add_image(f.name, f.getvalue()))
                        except astore.AnnotationStoreError as exc:
                            notes.append(str(exc))
                    st.success(f"{store_new.name}: added {len(added)} image(s).")
                    for n in notes[:10]:
                        st.caption(n)
                    ss["ann_dataset_new"] = store_new.name
                except astore.AnnotationStoreError as exc:
                    ui.show_error("Could not create the dataset", exc)
            if b2.button("Use the bundled samples", key="ann_samples", icon=":material/photo_library:"):
                ss["ann_dataset_new"] = _add_samples()
                st.rerun()
    if not dataset:
        st.info("Create a dataset (upload images or a zip) or use the bundled samples to start.",
                icon=":material/info:")
        st.stop()
    try:
        store = astore.AnnotationStore.open(dataset)
    except astore.AnnotationStoreError as exc:
        ui.show_error(f"Dataset {dataset} cannot be opened", exc)
        st.stop()
    # The editor's trigger (a drag, an undo) is in session state before the widget mounts: apply it
    # first, so the counter, the stage card and the editor's own points already show the change.
    _prev = ss.get(f"ann_cur::{store.name}")
    if _prev:
        _apply(store, _prev, ss.get(f"ann_editor::{store.name}::{_prev}"), ss.get("ann_who", ""))
    with c3:
        names = ui.model_names()
        if not names:
            ui.no_models_message()
            st.stop()
        model = st.selectbox("Model for new predictions", names, key="ann_model",
                             index=names.index("unet_heatmap") if "unet_heatmap" in names else 0,
                             help="Runs once on images without landmarks; its landmarks are the starting point.")
        counts = store.counts()
        done = counts["corrected"] + counts["skipped"]
        st.progress(done / max(1, counts["total"]),
                    text=f"**{counts['corrected']}** corrected · {counts['skipped']} skipped · "
                         f"{counts['predicted'] + counts['unlabelled']} to check · {counts['total']} images")

images = store.image_names()
if not images:
    st.info("This dataset has no images yet: add some above.", icon=":material/info:")
    st.stop()

todo = store.unpredicted()
if todo:
    bar = st.progress(0.0, text=f"Running **{model}** on {len(todo)} new image(s)…")
    try:
        predictor = ui.get_predictor(model)
        astore.predict_missing(store, predictor, progress=lambda d, t: bar.progress(d / t, text=f"{d}/{t} predicted"))
    except Exception as exc:  # noqa: BLE001 - a model that cannot run: say so, keep the page
        ui.show_error(f"{model} could not run on the new images", exc)
    bar.empty()

# ----------------------------------------------------------------------------- current image
cur_key = f"ann_cur::{store.name}"
current = ss.get(cur_key)
if current not in images:
    current = store.position or store.next_image() or images[0]
    _go(store, current)

pick_key = f"ann_pick::{store.name}"
if ss.get(pick_key) != current:  # follow Next / Accept / Skip (set before the widget exists)
    ss[pick_key] = current


def _on_pick():
    if ss.get(pick_key) in store.image_names():
        _go(store, ss[pick_key])


# Option labels must not change when an image's status changes (the browser sends the label back),
# so the status is shown in the caption under the image, not in the list.
nav1, nav2, nav3, nav4, nav5 = st.columns([1.5, 1.45, 1.2, 0.8, 0.8], vertical_alignment="bottom")
nav1.selectbox("Image", images, key=pick_key, on_change=_on_pick)
if nav2.button("Next (least confident)", key="ann_next", icon=":material/skip_next:", width="stretch",
               help="Images not yet checked, least confident prediction first."):
    nxt = store.next_image(exclude=current)
    if nxt is None or nxt == current:
        st.toast("Every image is corrected or skipped.", icon=":material/done_all:")
    else:
        _go(store, nxt)
        st.rerun()
if nav3.button("Accept & next", key="ann_accept", icon=":material/check:", type="primary", width="stretch",
               help="The landmarks are right as shown: mark the image corrected and go to the next one."):
    try:
        store.accept(current, who=who)
        _go(store, store.next_image(exclude=current))
        st.rerun()
    except astore.AnnotationStoreError as exc:
        ui.show_error("Could not accept", exc)
if nav4.button("Skip", key="ann_skip", icon=":material/block:", width="stretch",
               help="Unusable or unclear: mark skipped (undoable) and go on."):
    store.skip(current, who=who)
    _go(store, store.next_image(exclude=current))
    st.rerun()
if nav5.button("Undo", key="ann_undo", icon=":material/undo:", width="stretch",
               disabled=store.undo_depth(current) == 0):
    store.undo(current)
    st.rerun()

editor_key = f"ann_editor::{store.name}::{current}"

rec = store.record(current)
path = store.image_path(current)
image = _read(str(path), path.stat().st_mtime)

left, right = st.columns([1.35, 1], gap="large")
with left:
    if rec.landmarks is None:
        st.warning("No landmarks for this image yet (the model could not run on it).", icon=":material/warning:")
    revision = f"{rec.when}|{rec.status}|{store.undo_depth(current)}"
    result = landmark_editor(image, rec.landmarks, key=editor_key, revision=revision,
                             can_undo=store.undo_depth(current) > 0, height_px=620)
    if _apply(store, current, result, who):
        st.rerun()
    st.caption(f"{current} · {image.shape[1]}×{image.shape[0]} px · status "
               f"{STATUS_ICON.get(rec.status, '·')} **{rec.status or 'no landmarks'}**"
               + (f" by {safe_markdown(rec.who)} at {rec.when}" if rec.who else "")
               + (f" · prediction confidence {rec.confidence:.2f}" if rec.has_confidence else ""))
    with st.expander("Type a position instead (keyboard)", icon=":material/keyboard:"):
        k1, k2, k3, k4 = st.columns([1.4, 1, 1, 1], vertical_alignment="bottom")
        idx = k1.selectbox("Landmark", list(range(19)), key="ann_kb_idx",
                           format_func=lambda i: f"{i + 1} {LANDMARKS[i].name}")
        base = rec.point(idx)
        kx = k2.number_input("x", -1e4, 1e5, float(round(base[0], 1)), step=1.0, key=f"ann_kb_x::{current}::{idx}")
        ky = k3.number_input("y", -1e4, 1e5, float(round(base[1], 1)), step=1.0, key=f"ann_kb_y::{current}::{idx}")
        if k4.button("Move", key="ann_kb_move", disabled=rec.landmarks is None):
            store.move_landmark(current, idx, kx, ky, who=who)
            st.rerun()

with right:
    from cvs_core.staging import CAVEAT, stage_landmarks

    if rec.complete:
        try:
            title = {"corrected": "Corrected landmarks", "predicted": f"Prediction ({rec.model or 'model'})",
                     "skipped": "Skipped image"}.get(rec.status, "Landmarks")
            ui.stage_card(title, stage_landmarks(rec.landmarks), color="#81c784" if rec.status == "corrected"
                          else "#4fc3f7")
        except ValueError as exc:
            ui.show_error("No stage for these landmarks", exc)
    st.caption(CAVEAT)
    with st.expander("Which landmark is which?", expanded=False, icon=":material/help:"):
        st.image(_diagram(), caption="A phantom's C2–C4 with the 19 landmarks (x to the front, right).")
        st.dataframe([{"#": lm.index, "name": lm.name, "where": lm.description} for lm in LANDMARKS],
                     hide_index=True, width="stretch", height=300)

# ----------------------------------------------------------------------------- export & fine-tune
st.divider()
e1, e2 = st.columns(2, gap="large")
with e1:
    st.markdown("#### :material/download: Export")
    d1, d2 = st.columns(2)
    d1.download_button("labels.csv", store.export_csv(), file_name=f"{store.name}_labels.csv", mime="text/csv",
                       key="ann_dl_csv", icon=":material/table:", width="stretch",
                       help="Study format (image_name, 1_x … 19_y) + status, confidence, model, who, when.")
    if d2.button("Prepare zip", key="ann_zip_prep", icon=":material/folder_zip:", width="stretch"):
        ss["ann_zip"] = (store.name, store.export_zip())
    if ss.get("ann_zip") and ss["ann_zip"][0] == store.name:
        d2.download_button("Download zip", ss["ann_zip"][1], file_name=f"{store.name}.zip", mime="application/zip",
                           key="ann_dl_zip", width="stretch")
    st.caption(f"Saved continuously to the dataset **{safe_markdown(store.name)}** (its folder under "
               "`datasets/` in the lab's data directory).")

with e2:
    from cvs_core import runs

    st.markdown("#### :material/model_training: Fine-tune on the corrected images")
    base_names = [n for n in names if n.startswith("unet")] or names
    base = st.selectbox("Start from", base_names, key="ann_ft_base",  # full width: model names are long
                        index=base_names.index("unet_heatmap") if "unet_heatmap" in base_names else 0)
    f2, f3 = st.columns([1, 2])
    epochs = f2.number_input("Epochs", 1, 500, 10, key="ann_ft_epochs")
    ft_name = f3.text_input("New model name", f"{store.name}_ft", key="ann_ft_name")
    n_corr = store.counts()["corrected"]
    if st.button(f"Fine-tune on {n_corr} corrected image(s)", key="ann_ft_start", icon=":material/play_arrow:",
                 disabled=n_corr == 0):
        try:
            run_id = astore.start_finetune(store, astore.FinetuneSettings(base=base, epochs=int(epochs),
                                                                         name=ft_name.strip() or None))
            st.success(f"Started run `{run_id}` — follow it here or on the Training page.")
        except (ValueError, OSError) as exc:
            ui.show_error("Could not start fine-tuning", exc)
    ft_runs = store.finetune_runs()[-5:]
    active = any(_run_status(e["run"]) in runs.ACTIVE for e in ft_runs)

    @st.fragment(run_every=4 if active else None)
    def _runs_panel():
        for entry in reversed(store.finetune_runs()[-5:]):
            try:
                info = astore.finish_finetune(entry["run"], entry["name"], entry.get("base"))
            except ValueError as exc:
                st.caption(f"`{entry['run']}`: {exc}")
                continue
            line = f"`{entry['run']}` · {info['status_text']} · epoch {info['epoch']}/{info['epochs']}"
            if info.get("registered_as"):
                line += f" · registered as **{info['registered_as']}** — pick it on Compare"
            st.caption(line)
            if info["status"] in runs.ACTIVE:
                st.progress(info["progress"])

    _runs_panel()
