"""The dashboard's optional login, checked before any page runs a query, and who is logged in.

Which login applies is read on every run, the first that is configured winning:

1. ``oidc``: an ``[auth]`` section in ``.streamlit/secrets.toml`` means Streamlit's OIDC login
   (``st.login``). A person whose e-mail (else name, else subject) is the user name of a
   dashboard account has that account's role; anyone else is a viewer.
2. ``accounts``: once any dashboard account exists (`iotp users create`; a disabled one
   counts, so that disabling the last account never opens the dashboard), a user name and
   password, checked against the account's argon2id hash in the write store.
3. ``password``: ``IOTP_DASHBOARD_PASSWORD``, one shared password.
4. ``none``: no login, which is safe only while the dashboard listens on 127.0.0.1.

The shared password and no login cannot name a person: their sessions act as the person
"dashboard", with the admin role (as before accounts existed). A session's account is
re-checked at most IOTP_DASHBOARD_ACCOUNT_CHECK_SECONDS after the last check, on every run and,
on an idle page, by a timer (:func:`watch_account`): a disabled account is logged out and a
changed role applies within twice that time. A locked session renders the login and nothing
else, and a login lives only in that session's ``st.session_state`` (a reload or a new tab
asks again). A login that is configured but cannot work (the write store does not answer,
Authlib is missing) fails closed with a message.
"""

from __future__ import annotations

import hmac
import importlib.util
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import streamlit as st
from streamlit.errors import StreamlitAuthError

from dashboard import accounts
from dashboard.accounts import AccountsUnavailable
from dashboard.data import settings
from iotp.auth_throttle import FailureThrottle
from iotp.commands import DASHBOARD_PASSWORD_MAX_LENGTH
from iotp.dashboard_accounts import Account, is_username
from iotp.model import Role
from iotp.permissions import ROLES_OF, Permission

logger = logging.getLogger(__name__)

# session_state keys
UNLOCKED = "iotp_login_unlocked"  # this session gave the shared password
SIGNED_IN = "iotp_login_account"  # {"username", "role", "logged_in_at"} of an account login
ENDED = "iotp_login_ended"  # why this session's account login was ended, shown once
PERSON = "iotp_login_person"  # the Person of this run, set by require_login
MODE = "iotp_login_mode"  # the LoginMode of this run, set by require_login

LoginMode = Literal["none", "password", "accounts", "oidc"]


@dataclass(frozen=True)
class Person:
    """Who uses this dashboard session, with which role (iotp.permissions), and the account
    the command API is told they act as (None: the shared password, or no login)."""

    name: str
    role: Role
    username: str | None = None

    def may(self, permission: Permission) -> bool:
        return self.role in ROLES_OF[permission]


# Who the shared password and no login act as: no person can be named.
SHARED_PERSON = Person("dashboard", Role.ADMIN)


def current_person() -> Person:
    """The person logged in to this session (call after :func:`require_login` passed)."""
    person = st.session_state.get(PERSON)
    if isinstance(person, Person):
        return person
    # A page run on its own, without the entry point (tests): only the logins that cannot
    # name anyone act as the dashboard; otherwise the least a role may do.
    if login_mode() in ("none", "password"):
        return SHARED_PERSON
    return Person("nobody", Role.VIEWER)


def login_mode() -> LoginMode:
    """The login this dashboard asks for (the module's docstring has the rule).

    Raises :class:`AccountsUnavailable` when the write store cannot say whether accounts exist.
    """
    if st.secrets.load_if_toml_exists() and "auth" in st.secrets:
        return "oidc"
    if accounts.accounts_in_use():
        return "accounts"
    if settings().dashboard_password is not None:
        return "password"
    return "none"


def require_login() -> bool:
    """Show the configured login when the session has not passed it; True when it has."""
    st.session_state.pop(PERSON, None)
    st.session_state.pop(MODE, None)
    try:
        mode = login_mode()
        person = _person_of(mode)
    except AccountsUnavailable as exc:
        st.error(f"{exc} Nobody can log in until it does.")
        return False
    if person is None:
        return False
    st.session_state[PERSON], st.session_state[MODE] = person, mode
    return True


def _person_of(mode: LoginMode) -> Person | None:
    if mode == "oidc":
        return _oidc_login()
    if mode == "accounts":
        return _account_login()
    if mode == "password":
        return SHARED_PERSON if _password_login() else None
    return SHARED_PERSON


def logout_control() -> None:
    """A sidebar button that ends this session's login (nothing when there is no login)."""
    mode, person = st.session_state.get(MODE), current_person()
    if mode in ("oidc", "accounts"):
        st.sidebar.caption(f"Signed in as {person.name} ({person.role})")
    if mode == "none" or not st.sidebar.button(
        "Log out", key="iotp_logout", icon=":material/logout:"
    ):
        return
    if mode == "oidc":
        st.logout()
    else:
        st.session_state.pop(SIGNED_IN if mode == "accounts" else UNLOCKED, None)
        st.rerun()


def watch_account() -> None:
    """On a page left open, rerun the whole app once this session's account is disabled or
    has another role (pages refresh only their fragments, which skip the login check)."""
    person = current_person()
    username = person.username
    if username is None:
        return

    @st.fragment(run_every=settings().dashboard_account_check_seconds, key="iotp_account_watch")
    def check() -> None:
        try:
            found = accounts.account(username)
        except AccountsUnavailable:
            found = None  # fail closed: the full run says why
        if found is None or found.disabled or found.role != person.role:
            st.rerun()

    with st.sidebar:
        check()


def _account_login() -> Person | None:
    signed = st.session_state.get(SIGNED_IN)
    if isinstance(signed, dict):
        username = str(signed["username"])
        found = accounts.account(username)
        if found is not None and not found.disabled:
            st.session_state[SIGNED_IN] = {**signed, "role": found.role.value}
            return Person(username, found.role, username)
        st.session_state.pop(SIGNED_IN, None)
        st.session_state[ENDED] = f"The account {username} is disabled: this session has ended."
        logger.info("dashboard session of %r ended: its account is disabled or gone", username)
    return _account_form()


def _account_form() -> Person | None:
    st.title("iotp")
    ended = st.session_state.get(ENDED)
    if ended:
        st.warning(ended)
    with st.form("iotp_account_login", clear_on_submit=True):
        given_name = st.text_input("User name", key="iotp_login_username", autocomplete="username")
        given = st.text_input(
            "Password",
            type="password",
            key="iotp_login_password",
            autocomplete="current-password",
            max_chars=DASHBOARD_PASSWORD_MAX_LENGTH,
        )
        submitted = st.form_submit_button("Log in")
    if not submitted:
        return None
    username = given_name.strip().lower()  # user names are lower case; people type "Ada"
    guesses = _guesses(f"user:{username}")
    if guesses.slowed():
        return None
    found = accounts.log_in(username, given) if username and given else None
    if found is None:
        guesses.failed()
        logger.warning(
            "dashboard login refused for %r (client %s)",
            username,
            st.context.ip_address or "unknown",
        )
        st.error("Wrong user name or password.")
        return None
    st.session_state.pop(ENDED, None)
    st.session_state[SIGNED_IN] = {
        "username": found.username,
        "role": found.role.value,
        "logged_in_at": datetime.now(UTC).isoformat(),
    }
    logger.info("dashboard login of %r (%s)", found.username, found.role)
    st.rerun()
    return None  # st.rerun() does not return


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
    guesses = _guesses()
    if guesses.slowed():
        return False
    # Bytes, because compare_digest refuses non-ASCII str; constant time either way.
    if hmac.compare_digest(given.encode(), expected.encode()):
        st.session_state[UNLOCKED] = True
        st.rerun()
    guesses.failed()
    logger.warning(
        "dashboard login refused: wrong password (client %s)", st.context.ip_address or "unknown"
    )
    st.error("Wrong password.")
    return False


@st.cache_resource
def _login_failures() -> FailureThrottle:
    """Refused logins of this dashboard process, per client address and per account, in the
    APIs' window and limit (IOTP_AUTH_FAILURE_LIMIT, IOTP_AUTH_FAILURE_WINDOW_SECONDS)."""
    config = settings()
    return FailureThrottle(config.auth_failure_limit, config.auth_failure_window_seconds)


@dataclass(frozen=True)
class _Guesses:
    """One login attempt's standing: its client address, and the account it names."""

    throttle: FailureThrottle
    keys: tuple[str, ...]

    def slowed(self) -> bool:
        """Whether to refuse this attempt unheard (shown to the person with the wait)."""
        waits = [w for w in map(self.throttle.retry_after, self.keys) if w is not None]
        if not waits:
            return False
        st.error(f"Too many refused logins: try again in {max(waits)} s.")
        return True

    def failed(self) -> None:
        for key in self.keys:
            self.throttle.failed(key)


def _guesses(*accounts_named: str) -> _Guesses:
    address = f"address:{st.context.ip_address or 'unknown'}"
    return _Guesses(_login_failures(), (address, *accounts_named))


def _oidc_login() -> Person | None:
    if st.user.get("is_logged_in") is True:
        return _oidc_person()
    st.title("iotp")
    if importlib.util.find_spec("authlib") is None:
        st.error(
            "The [auth] section of .streamlit/secrets.toml asks for Streamlit's login, which"
            " needs the Authlib package: `pip install 'Authlib>=1.3.2'`, or remove [auth] to"
            " use dashboard accounts or IOTP_DASHBOARD_PASSWORD."
        )
        return None
    for provider in _oidc_providers():
        label = "Log in" if provider is None else f"Log in with {provider}"
        if st.button(label, key=f"iotp_oidc_login_{provider or 'default'}"):
            try:
                st.login(provider)
            except StreamlitAuthError as exc:
                st.error(f"Streamlit's login is misconfigured in .streamlit/secrets.toml: {exc}")
    return None


def _oidc_person() -> Person | None:
    """The OIDC user as a person: their account's role when one has their e-mail (else name,
    else subject) as its user name, a viewer otherwise; None when that account is disabled."""
    found = _oidc_account()
    if found is None:
        return Person(_oidc_user_name(), Role.VIEWER)
    if found.disabled:
        st.title("iotp")
        st.error(f"The dashboard account {found.username} is disabled.")
        if st.button("Log out", key="iotp_logout_disabled", icon=":material/logout:"):
            st.logout()
        return None
    return Person(found.username, found.role, found.username)


def _oidc_account() -> Account | None:
    for field in ("email", "name", "sub"):
        value = st.user.get(field)
        if isinstance(value, str) and is_username(value.strip().lower()):
            found = accounts.account(value.strip().lower())
            if found is not None:
                return found
    return None


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
