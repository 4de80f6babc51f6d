"""A small router for the Annotate page's tests (the page alone, without the app's other pages): the
Annotate page (default) and a "roi_box" page that mounts the editor's rectangle mode on a sample
cephalogram and prints the box it returns (what Compare's auto-ROI box editor returns)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402


def roi_box_demo():
    from cvs_components.landmark_editor import roi_box_editor, trigger
    from cvs_core.imaging import read_image

    image = read_image(ROOT / "data" / "samples" / "original" / "LC (1).jpg").as_uint8()
    box = st.session_state.setdefault("demo_box", [0, 800, 500, 2000])
    result = roi_box_editor(image, key="demo_roi", rect=box, height_px=500)
    got = trigger(result, "rect")
    if got:
        st.session_state["demo_box"] = [got["x0"], got["y0"], got["x1"], got["y1"]]
    st.code("ROI box " + " ".join(str(v) for v in st.session_state["demo_box"]))


st.set_page_config(page_title="Annotate · CVS Staging Lab", layout="wide")
page = st.navigation([st.Page(str(ROOT / "app_pages" / "annotate.py"), title="Annotate", url_path="annotate", default=True),
                      st.Page(roi_box_demo, title="ROI box", url_path="roi_box")])
page.run()
