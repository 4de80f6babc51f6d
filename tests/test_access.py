"""cvs_core.access: modes from secrets, roles from secrets and roles.toml, passwords, who can do what."""
from __future__ import annotations

import hashlib

import pytest

from cvs_core import access as A


def test_modes_from_secrets(tmp_path):
    none = tmp_path / "absent.toml"
    assert A.load_access_config(None, none).mode == "local"
    assert A.load_access_config({"access": {"password": "s3cret"}}, none).mode == "password"
    cfg = A.load_access_config({"auth": {"client_id": "x"}, "access": {"password": "s3cret"}}, none)
    assert cfg.mode == "oidc"  # [auth] wins


def test_roles_from_file_and_secrets(tmp_path):
    roles = tmp_path / "roles.toml"
    roles.write_text('default_role = "viewer"\n[roles]\n"Alice@Lab.org" = "admin"\n"bob@lab.org" = "trainer"\n')
    cfg = A.load_access_config({"auth": {}, "roles": {"bob@lab.org": "viewer"}}, roles)
    assert cfg.roles == {"alice@lab.org": "admin", "bob@lab.org": "viewer"}  # secrets override the file
    alice = A.resolve_user(cfg, email="alice@LAB.org", logged_in=True)
    assert (alice.id, alice.role) == ("alice@lab.org", "admin")
    carol = A.resolve_user(cfg, email="carol@x.org", logged_in=True)
    assert carol.role == "viewer"
    roles.write_text('[roles]\n"x@y" = "superuser"\n')
    with pytest.raises(ValueError, match="unknown role 'superuser'"):
        A.load_access_config({}, roles)


def test_anonymous_cannot_do_any_gated_action(tmp_path):
    for secrets in ({"auth": {}}, {"access": {"password": "pw"}}):
        cfg = A.load_access_config(secrets, tmp_path / "none.toml")
        anon = A.resolve_user(cfg, email=None, logged_in=False, password_ok=False)
        assert not anon.authenticated
        for action in A.ACTIONS:
            assert not A.can(anon, action)
            with pytest.raises(A.AccessDenied, match="not signed in"):
                A.require(anon, action)


def test_role_matrix():
    viewer, trainer, admin = (A.User(f"{r}@x", r, "oidc") for r in A.ROLES)
    assert not any(A.can(viewer, a) for a in A.ACTIONS)
    assert {a for a in A.ACTIONS if A.can(trainer, a, owner=trainer.id)} == {
        "start_run", "resume_run", "cancel_run", "delete_run", "upload_model"}
    assert all(A.can(admin, a, owner="someone@else") for a in A.ACTIONS)
    # trainers act on their own runs only
    assert not A.can(trainer, "cancel_run", owner="other@x")
    with pytest.raises(A.AccessDenied, match="belongs to other@x"):
        A.require(trainer, "delete_run", owner="other@x")
    with pytest.raises(A.AccessDenied, match="needs the admin role"):
        A.require(trainer, "clear_cache")
    assert not A.can(admin, "format_disk")


def test_password_mode(tmp_path):
    cfg = A.load_access_config({"access": {"password": "s3cret", "password_role": "trainer"}}, tmp_path / "n.toml")
    assert A.check_password(cfg, "s3cret") and not A.check_password(cfg, "S3cret") and not A.check_password(cfg, "")
    user = A.resolve_user(cfg, password_ok=True)
    assert (user.id, user.role) == ("shared", "trainer")
    hashed = A.load_access_config({"access": {"password": "sha256:" + hashlib.sha256(b"pw").hexdigest()}},
                                  tmp_path / "n.toml")
    assert A.check_password(hashed, "pw") and not A.check_password(hashed, "sha256:" + hashlib.sha256(b"pw").hexdigest())


def test_local_mode_only_on_loopback(tmp_path):
    cfg = A.load_access_config({}, tmp_path / "n.toml")
    for address in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert A.resolve_user(cfg, server_address=address).role == "admin"
    for address in ("0.0.0.0", "", None, "192.168.1.5", "::"):
        user = A.resolve_user(cfg, server_address=address)
        assert user.role is None and "no sign-in is configured" in user.note
        assert not A.can(user, "clear_cache")


def test_repo_streamlit_config_binds_loopback_and_hides_errors(repo_root):
    import tomllib

    conf = tomllib.loads((repo_root / ".streamlit" / "config.toml").read_text())
    assert A.is_loopback(conf["server"]["address"])
    assert conf["client"]["showErrorDetails"] == "none"
