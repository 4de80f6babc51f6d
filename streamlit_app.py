"""CVS Staging Lab — the Streamlit app's entry point: page router and sidebar.

Run with ``make run`` (or ``streamlit run streamlit_app.py``). Pages live in ``pages/``; they only
call into ``cvs_core`` (the library never imports Streamlit).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from pages import ui  # noqa: E402

st.set_page_config(page_title="CVS Staging Lab", page_icon=":material/skeleton:", layout="wide",
                   initial_sidebar_state="expanded")

PAGES = {
    "": [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)],
    "Analyse": [
        st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
        st.Page("pages/clahe_lab.py", title="CLAHE lab", icon=":material/tune:"),
        st.Page("pages/evaluation.py", title="PCK evaluation", icon=":material/query_stats:"),
    ],
    "Models": [
        st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
        st.Page("pages/models.py", title="Models", icon=":material/deployed_code:"),
    ],
}

page = st.navigation(PAGES)
with st.sidebar:
    st.markdown("### :material/skeleton: CVS Staging Lab")
    st.caption("C2–C4 landmarks · U-Net vs InceptionResNetV2 · CVM stage")
ui.sidebar()
page.run()
