"""The dashboard's optional login, checked before any page runs a query.

Which login applies is read from configuration on every run: an ``[auth]`` section in
``.streamlit/secrets.toml`` means Streamlit's OIDC login (``st.login``, one identity per user);
otherwise ``IOTP_DASHBOARD_PASSWORD`` means one shared password; neither means no login, which is
safe only while the dashboard listens on 127.0.0.1. A locked session renders the login and
nothing else, and an unlock lives only in that session's ``st.session_state`` (a reload or a new
tab asks again). A login that is configured but cannot work fails closed with a message.
"""

from __future__ import annotations

import hmac
import importlib.util
import logging
from dataclasses import dataclass
from typing import Literal

import streamlit as st
from streamlit.errors import StreamlitAuthError

from dashboard.data import settings
from iotp.model import Role

logger = logging.getLogger(__name__)

UNLOCKED = "iotp_login_unlocked"  # session_state key: this session gave the right password

LoginMode = Literal["none", "password", "oidc"]


@dataclass(frozen=True)
class Person:
    """Who uses this dashboard session, and with which role (iotp.permissions)."""

    name: str
    role: Role


def current_person() -> Person:
    """The person logged in to this session (call after :func:`require_login` passed)."""
    return Person("dashboard", Role.ADMIN)


def login_mode() -> LoginMode:
    """The login this dashboard asks for: OIDC when configured, else a password when set."""
    if st.secrets.load_if_toml_exists() and "auth" in st.secrets:
        return "oidc"
    if settings().dashboard_password is not None:
        return "password"
    return "none"


def require_login() -> bool:
    """Show the configured login when the session has not passed it; True when it has."""
    mode = login_mode()
    if mode == "oidc":
        return _oidc_login()
    if mode == "password":
        return _password_login()
    return True


def logout_control() -> None:
    """A sidebar button that ends this session's login (nothing when there is no login)."""
    mode = login_mode()
    if mode == "oidc":
        st.sidebar.caption(f"Signed in as {_oidc_user_name()}")
        if st.sidebar.button("Log out", key="iotp_logout", icon=":material/logout:"):
            st.logout()
    elif mode == "password" and st.sidebar.button(
        "Log out", key="iotp_logout", icon=":material/logout:"
    ):
        st.session_state.pop(UNLOCKED, None)
        st.rerun()


def _password_login() -> bool:
    if st.session_state.get(UNLOCKED) is True:
        return True
    secret = settings().dashboard_password
    expected = secret.get_secret_value() if secret is not None else ""
    if not expected:
        # An empty setting is a mistake, not a request for no login: say so and show nothing.
        st.error("IOTP_DASHBOARD_PASSWORD is set but empty: set a password or unset it.")
        return False
    st.title("iotp")
    with st.form("iotp_login", clear_on_submit=True):
        given = st.text_input(
            "Password", type="password", key="iotp_login_password", autocomplete="current-password"
        )
        submitted = st.form_submit_button("Log in")
    if not submitted:
        return False
    # Bytes, because compare_digest refuses non-ASCII str; constant time either way.
    if hmac.compare_digest(given.encode(), expected.encode()):
        st.session_state[UNLOCKED] = True
        st.rerun()
    logger.warning(
        "dashboard login refused: wrong password (client %s)", st.context.ip_address or "unknown"
    )
    st.error("Wrong password.")
    return False


def _oidc_login() -> bool:
    if st.user.get("is_logged_in") is True:
        return True
    st.title("iotp")
    if importlib.util.find_spec("authlib") is None:
        st.error(
            "The [auth] section of .streamlit/secrets.toml asks for Streamlit's login, which"
            " needs the Authlib package: `pip install 'Authlib>=1.3.2'`, or remove [auth] to"
            " use IOTP_DASHBOARD_PASSWORD."
        )
        return False
    for provider in _oidc_providers():
        label = "Log in" if provider is None else f"Log in with {provider}"
        if st.button(label, key=f"iotp_oidc_login_{provider or 'default'}"):
            try:
                st.login(provider)
            except StreamlitAuthError as exc:
                st.error(f"Streamlit's login is misconfigured in .streamlit/secrets.toml: {exc}")
    return False


def _oidc_providers() -> list[str | None]:
    """The providers named in ``[auth.<name>]`` sections, or [None] for one unnamed provider."""
    named: list[str | None] = [
        key for key, value in st.secrets["auth"].items() if hasattr(value, "items")
    ]
    return named or [None]


def _oidc_user_name() -> str:
    for field in ("name", "email", "sub"):
        value = st.user.get(field)
        if isinstance(value, str) and value:
            return value
    return "an unnamed user"
