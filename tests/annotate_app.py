"""A one-page router for the Annotate page, used by its tests until the page is in streamlit_app.py."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="Annotate · CVS Staging Lab", layout="wide")
page = st.navigation([st.Page(str(ROOT / "pages" / "annotate.py"), title="Annotate", url_path="annotate",
                              default=True)])
page.run()
