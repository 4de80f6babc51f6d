"""CVS Staging Lab — the Streamlit app's entry point: page router and sidebar.

Run with ``make run`` (or ``streamlit run streamlit_app.py``). Pages live in ``app_pages/`` (not
``pages/``, so Streamlit's automatic page discovery stays off and ``st.navigation`` alone routes);
they only call into ``cvs_core`` (the library never imports Streamlit).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app_pages import ui  # noqa: E402

st.set_page_config(page_title="CVS Staging Lab", page_icon=ui.FAVICON, layout="wide",
                   initial_sidebar_state="expanded")

PAGES = {
    "": [st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True)],
    "Analyse": [
        st.Page("app_pages/compare.py", title="Compare", icon=":material/compare:"),
        st.Page("app_pages/annotate.py", title="Annotate", icon=":material/edit_location_alt:"),
        st.Page("app_pages/clahe_lab.py", title="CLAHE lab", icon=":material/tune:"),
        st.Page("app_pages/evaluation.py", title="PCK evaluation", icon=":material/query_stats:"),
    ],
    "Models": [
        st.Page("app_pages/training.py", title="Training", icon=":material/model_training:"),
        st.Page("app_pages/models.py", title="Models", icon=":material/deployed_code:"),
    ],
}

page = st.navigation(PAGES)
with st.sidebar:
    st.markdown("### :material/skeleton: CVS Staging Lab")
    st.caption("C2–C4 landmarks · U-Net vs InceptionResNetV2 · CVM stage")
try:
    page.run()
finally:  # also after st.stop(): the sidebar lists the models this page run loaded
    ui.sidebar()
