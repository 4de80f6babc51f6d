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



def sign_in_box():
    """Who is using the lab (``cvs_core.access``): sign-in (OpenID Connect, ``[auth]`` in the secrets),
    one shared password (``[access] password``) or single-user local mode. Viewing and comparing stay
    open; training, model management and clearing caches need a role. Sets ``session_state.cvs_user``."""
    from cvs_core import access

    ss = st.session_state
    try:
        cfg = access.load_access_config(ui.secrets())
    except ValueError as exc:  # a typo in a role name: nobody gets a role until it is fixed
        st.sidebar.error(f"Access configuration: {exc}", icon=":material/error:")
        cfg = access.AccessConfig(mode="password")
    if cfg.mode == "oidc":
        logged_in = bool(st.user.get("is_logged_in", False))  # absent when no auth cookie was read
        user = access.resolve_user(cfg, email=st.user.get("email") if logged_in else None, logged_in=logged_in,
                                   server_address=st.get_option("server.address"))
    else:
        user = access.resolve_user(cfg, password_ok=bool(ss.get("cvs_password_ok")),
                                   server_address=st.get_option("server.address"))
    ss["cvs_user"] = user
    with st.sidebar.container(key="sign_in"):
        if user.authenticated:
            who = "local user" if user.mode == "local" else access.safe_markdown(user.id)
            st.caption(f":material/person: {who} · role **{user.role}**")
            if cfg.mode == "oidc" and st.button("Sign out", key="sign_out", icon=":material/logout:"):
                st.logout()
            elif cfg.mode == "password" and st.button("Lock", key="lock", icon=":material/lock:"):
                ss["cvs_password_ok"] = False
                st.rerun()
        elif cfg.mode == "oidc":
            if st.button("Sign in", key="sign_in_button", icon=":material/login:"):
                st.login()
        elif cfg.mode == "password":
            with st.form("password_form", border=False):
                entered = st.text_input("Lab password", type="password", key="cvs_password")
                if st.form_submit_button("Unlock", icon=":material/lock_open:"):
                    ss["cvs_password_ok"] = access.check_password(cfg, entered)
                    if not ss["cvs_password_ok"]:
                        st.error("Wrong password.", icon=":material/error:")
                    else:
                        st.rerun()
        if user.note and not (user.authenticated and user.mode == "local"):
            st.caption(user.note)
        elif user.note:
            st.caption(f":material/info: {user.note}")
    return user


page = st.navigation(PAGES)
with st.sidebar:
    st.markdown("### :material/skeleton: CVS Staging Lab")
    st.caption("C2–C4 landmarks · U-Net vs InceptionResNetV2 · CVM stage")
sign_in_box()
try:
    page.run()
finally:  # also after st.stop(): the sidebar lists the models this page run loaded
    ui.sidebar()
