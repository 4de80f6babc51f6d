"""Who may do what in the hosted lab: roles, sign-in modes, and escaping of user-supplied names.

Pure functions, no Streamlit import: the pages read ``st.secrets`` / ``st.user`` and pass plain
values in (see the README's *Hosting* section for the exact calls).

Three modes, chosen from the secrets (``.streamlit/secrets.toml``):

- ``oidc``: an ``[auth]`` section exists → users sign in with ``st.login()`` (OpenID Connect). Their
  role comes from ``[roles]`` in the secrets (``"alice@lab.org" = "admin"``) or from
  ``.streamlit/roles.toml`` (same ``[roles]`` table), else ``default_role`` (``viewer``).
- ``password``: no ``[auth]`` but ``[access] password = "…"`` (or ``"sha256:<hex>"``) → one shared
  password; whoever enters it gets ``[access] password_role`` (default ``trainer``).
- ``local``: neither → single-user local mode: the one user is ``admin``, but only while the server
  listens on a loopback address (``server.address = "127.0.0.1"`` in ``.streamlit/config.toml``);
  on any other address gated actions are refused until auth or a password is configured.

Viewing and comparing stay open in every mode; these actions are gated (:data:`ACTIONS`):
``start_run``, ``resume_run``, ``cancel_run``, ``delete_run`` (trainers: their own runs; admins: any),
``upload_model`` (trainer), ``delete_model`` and ``clear_cache`` (admin).
"""
from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

ROLES = ("viewer", "trainer", "admin")
RANK = {role: i for i, role in enumerate(ROLES)}
# action → least role allowed; "own" actions need admin for someone else's run
ACTIONS: dict[str, str] = {
    "start_run": "trainer",
    "resume_run": "trainer",
    "cancel_run": "trainer",
    "delete_run": "trainer",
    "upload_model": "trainer",
    "delete_model": "admin",
    "clear_cache": "admin",
}
OWN_ACTIONS = ("resume_run", "cancel_run", "delete_run")
ROLES_FILE = Path(__file__).resolve().parent.parent / ".streamlit" / "roles.toml"


@dataclass(frozen=True)
class AccessConfig:
    """How the lab decides who someone is and what they may do."""

    mode: str = "local"                       # oidc | password | local
    roles: dict = field(default_factory=dict)  # lower-cased email → role
    default_role: str = "viewer"               # signed-in users not listed in roles
    password: str | None = None                # shared password, plain or "sha256:<hex>"
    password_role: str = "trainer"


@dataclass(frozen=True)
class User:
    """The person behind a session. ``id``: email (oidc), ``"shared"`` (password), ``"local"``, or
    ``"anonymous"``; ``role``: one of :data:`ROLES` or ``None`` for anonymous."""

    id: str
    role: str | None
    mode: str
    note: str = ""

    @property
    def authenticated(self) -> bool:
        return self.role is not None


class AccessDenied(PermissionError):
    """An action the user may not take; the message says why and what would allow it."""


def _check_role(role: str, where: str) -> str:
    role = str(role).strip().lower()
    if role not in ROLES:
        raise ValueError(f"{where}: unknown role {role!r}; use one of {', '.join(ROLES)}")
    return role


def load_access_config(secrets: Mapping | None = None, roles_path: Path | None = None) -> AccessConfig:
    """Build the :class:`AccessConfig` from the app's secrets (a mapping like ``st.secrets``; ``None``
    = no secrets) and the optional roles file (default ``.streamlit/roles.toml``).

    Raises ``ValueError`` for an unknown role name (a typo must not silently demote or promote)."""
    secrets = secrets or {}
    roles: dict[str, str] = {}
    default_role = "viewer"
    path = Path(roles_path) if roles_path is not None else ROLES_FILE
    if path.is_file():
        data = tomllib.loads(path.read_text())
        for email, role in dict(data.get("roles", {})).items():
            roles[str(email).strip().lower()] = _check_role(role, f"{path.name} [roles] {email}")
        if "default_role" in data:
            default_role = _check_role(data["default_role"], f"{path.name} default_role")
    for email, role in dict(secrets.get("roles", {}) or {}).items():
        roles[str(email).strip().lower()] = _check_role(role, f"secrets [roles] {email}")
    access = dict(secrets.get("access", {}) or {})
    if "default_role" in access:
        default_role = _check_role(access["default_role"], "secrets [access] default_role")
    password = access.get("password")
    password_role = _check_role(access.get("password_role", "trainer"), "secrets [access] password_role")
    if "auth" in secrets:
        mode = "oidc"
    elif password:
        mode = "password"
    else:
        mode = "local"
    return AccessConfig(mode=mode, roles=roles, default_role=default_role,
                        password=str(password) if password else None, password_role=password_role)


def check_password(config: AccessConfig, attempt: str | None) -> bool:
    """Whether ``attempt`` is the shared password (constant-time; ``sha256:<hex>`` stored form allowed)."""
    if not config.password or not attempt:
        return False
    stored = config.password
    if stored.startswith("sha256:"):
        digest = hashlib.sha256(attempt.encode()).hexdigest()
        return hmac.compare_digest(digest, stored[len("sha256:"):].strip().lower())
    return hmac.compare_digest(attempt.encode(), stored.encode())


def is_loopback(address: str | None) -> bool:
    """Whether a server address only accepts connections from this machine (127.0.0.0/8, ::1, localhost).
    An empty address means "all interfaces" (Streamlit's default) → False."""
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_user(config: AccessConfig, *, email: str | None = None, logged_in: bool = False,
                 password_ok: bool = False, server_address: str | None = "127.0.0.1") -> User:
    """The :class:`User` of a session.

    email / logged_in: from ``st.user`` (oidc mode); password_ok: the session entered the shared
    password (:func:`check_password`); server_address: ``st.get_option("server.address")``."""
    if config.mode == "oidc":
        if logged_in and email:
            key = email.strip().lower()
            return User(key, config.roles.get(key, config.default_role), "oidc")
        return User("anonymous", None, "oidc", "sign in to train, manage models or clear caches")
    if config.mode == "password":
        if password_ok:
            return User("shared", config.password_role, "password")
        return User("anonymous", None, "password", "enter the lab password to train, manage models or clear caches")
    if is_loopback(server_address):
        return User("local", "admin", "local", "single-user local mode: the server only listens on this machine")
    return User("anonymous", None, "local",
                f"no sign-in is configured but the server listens on {server_address or 'all interfaces'}: "
                f"add [auth] or [access] password to .streamlit/secrets.toml, or bind to 127.0.0.1")


def can(user: User, action: str, owner: str | None = None) -> bool:
    """Whether ``user`` may take ``action`` (one of :data:`ACTIONS`); for run actions ``owner`` is the
    run's owner (trainers act on their own runs only, admins on all). Unknown actions: False."""
    need = ACTIONS.get(action)
    if need is None or user.role is None:
        return False
    if RANK[user.role] < RANK[need]:
        return False
    if action in OWN_ACTIONS and user.role != "admin" and owner is not None and owner != user.id:
        return False
    return True


def require(user: User, action: str, owner: str | None = None) -> None:
    """Raise :class:`AccessDenied` unless :func:`can` allows it (call it in the library-facing handler
    too, not only to hide a button)."""
    if can(user, action, owner):
        return
    if action not in ACTIONS:
        raise AccessDenied(f"unknown action {action!r}")
    if user.role is None:
        raise AccessDenied(f"{action.replace('_', ' ')}: not signed in — {user.note}")
    if action in OWN_ACTIONS and owner is not None and owner != user.id and RANK[user.role] >= RANK[ACTIONS[action]]:
        raise AccessDenied(f"{action.replace('_', ' ')}: this run belongs to {owner}; only an admin may do that")
    raise AccessDenied(f"{action.replace('_', ' ')}: needs the {ACTIONS[action]} role (you are {user.role})")


# ----------------------------------------------------------------------------- names shown to users
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def safe_label(name, max_len: int = 80) -> str:
    """A user-supplied name (model, run, file) made safe for HTML: control and bidi characters removed,
    NFC-normalised, shortened to ``max_len`` characters (…), then HTML-escaped (``<img src=x>`` →
    ``&lt;img src=x&gt;``). Use it whenever a name goes into ``unsafe_allow_html`` markup."""
    text = unicodedata.normalize("NFC", str(name))
    text = _CONTROL.sub("", text)
    if len(text) > max_len:
        text = text[: max_len - 1] + "…"
    return html.escape(text, quote=True)


def safe_markdown(name, max_len: int = 80) -> str:
    """A user-supplied name for ``st.markdown`` without HTML: :func:`safe_label`'s cleaning, plus
    Markdown's special characters backslash-escaped (so ``[x](javascript:…)`` shows as text)."""
    text = unicodedata.normalize("NFC", str(name))
    text = _CONTROL.sub("", text)
    if len(text) > max_len:
        text = text[: max_len - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
