"""Home: what the app does, a picture, links to each page, caveats."""
import streamlit as st

from app_pages import ui

ui.page_header("CVS Staging Lab",
               "Cervical vertebral maturation from lateral cephalograms — 19 landmarks on C2–C4, "
               "two deep-learning approaches side by side, and the CS1–CS6 stage they imply.",
               ":material/skeleton:")

left, right = st.columns([1.05, 1], gap="large")  # the figure wide enough to read its labels
with left:
    st.markdown(
        """
Orthodontists time treatment by the patient's growth spurt, and the shape of the cervical vertebrae
on the routine cephalogram tells where the patient is on that curve (the **CVM stage**, McNamara &
Franchi). This lab reproduces and extends a published student study that compared a **U-Net**
(predicts a landmark mask/heatmap) with an **InceptionResNetV2** regressor (predicts the 38
coordinates directly):

- find the **19 landmarks** on C2–C4 with both models on the same image and compare them,
- turn landmarks into a **CVM stage** with the measurements and rule that decided it,
- see how **CLAHE** contrast settings change what the models see,
- score models with **PCK / MRE / SDR** at any threshold, next to the study's reported numbers,
- **train** new models in the background and manage the registered ones.
"""
    )
    st.markdown("#### Pages")
    links = [
        ("app_pages/compare.py", "Compare", ":material/compare:",
         "both models on a sample, a phantom or your image (C2–C4 found automatically in a full "
         "cephalogram); overlay, table, stage, downloads"),
        ("app_pages/annotate.py", "Annotate", ":material/edit_location_alt:",
         "correct the landmarks on your images, save every change, fine-tune on them"),
        ("app_pages/clahe_lab.py", "CLAHE lab", ":material/tune:",
         "contrast settings before/after, histograms, live re-prediction"),
        ("app_pages/evaluation.py", "PCK evaluation", ":material/query_stats:",
         "dataset metrics with an instant threshold slider, worst-image gallery"),
        ("app_pages/training.py", "Training", ":material/model_training:",
         "background training runs with live curves, cancel, register"),
        ("app_pages/models.py", "Models", ":material/deployed_code:",
         "manifests, metrics, upload a .keras / study .h5, delete"),
    ]
    for path, label, icon, what in links:
        c1, c2 = st.columns([0.42, 0.58], vertical_alignment="center")
        c1.page_link(path, label=label, icon=icon)
        c2.caption(what)

with right:
    st.image(str(ui.ROOT / "docs" / "phantoms_vs_real.png"),
             caption="Top: the study's five public ROI samples. Bottom: synthetic phantoms generated for "
                     "CS1–CS6, with exact landmarks and a known stage.",
             width="stretch")

st.markdown("#### How well it works on real images")
st.caption("Measured numbers (docs/benchmarks.md); small sets, so read the caveats under each.")
real_l, real_r = st.columns(2, gap="medium")
with real_l.container(border=True, height="stretch"):
    st.markdown(":material/location_searching: **Landmarks on another clinic's cephalograms** "
                "(10 ISBI-2015 images, 0.1 mm/px, C2–C4 found automatically)")
    st.markdown("- **U-Net: 85.6 %** of points within 2 mm of the expert's, median error **0.90 mm**, "
                "no image a vertebra off (0 / 10)\n"
                "- InceptionResNetV2: 43.2 % within 2 mm, median error 2.3 mm, 2 / 10 images a vertebra off "
                "(each image run as 5 shifted copies, median taken)")
    st.caption("118 annotated points (13 of the 19 landmarks); another machine and population, never "
               "trained on. **Caveat:** these ten "
               "images were also used to tune the automatic ROI search, so they are a development set, "
               "not an independent test; the target of 90 % within 2 mm is not met yet. The "
               "InceptionResNetV2 demo (no ImageNet weights; its integral head is not the study's) was "
               "trained on phantoms and the two labelled public images.")
with real_r.container(border=True, height="stretch"):
    st.markdown(":material/groups: **CVM stage against expert stages** (720 expert-staged cases, "
                "5-fold cross-validation)")
    st.markdown("- **Calibrated rules (default): 56.9 %** the expert's stage, **93.5 %** within one stage\n"
                "- Textbook rules (McNamara & Franchi): 49.0 % the expert's stage, 91.1 % within one stage")
    st.caption("iCVM-900 training cases, thresholds fitted inside each fold. **Caveat:** one dataset "
               "of all-female patients, staged from expert landmarks (not the models'); not checked "
               "on another clinic's expert stages. Each stage on Compare says how often experts "
               "agreed with that call.")

st.markdown("#### Read the results with care")
CAVEATS = [
    (":material/psychology_alt:", "The stage is an estimate",
     "CS1–CS6 is derived from landmark geometry with rules calibrated on expert stages; read it "
     "with age, sex and the radiograph. Human raters agree on the stage less than half of the time."),
    (":material/straighten:", "Nominal pixel spacing",
     "The study did not publish a pixel size. Millimetres use a nominal 0.25 mm/px in the "
     "250×600 ROI (0.125 mm/px in the full cephalogram) unless a DICOM header gives its own."),
    (":material/science:", "Phantoms are synthetic",
     "Only two labelled real images are public, so most training and testing uses generated "
     "phantoms. They look like the samples but are not patients."),
    (":material/model_training:", "Demo models",
     "The shipped models were trained on phantoms plus the 2 public images — a demonstration, "
     "not a clinical tool. Their numbers are not the study's."),
]
for column, (icon, title, text) in zip(st.columns(len(CAVEATS)), CAVEATS):
    with column.container(border=True, height="stretch"):
        st.markdown(f"{icon} **{title}**")
        st.caption(text)
