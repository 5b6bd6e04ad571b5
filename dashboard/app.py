"""Entry point: `iotp dashboard` runs `streamlit run` on this file.

Every page runs through here, so the optional login (dashboard.login) is checked before any
page's code: a locked session is sent no data and shows no page menu.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard.login import current_person, logout_control, require_login, watch_account
from iotp.permissions import Permission

PAGES = Path(__file__).parent / "views"  # not "pages": Streamlit would list those itself


def main() -> None:
    st.set_page_config(page_title="iotp", page_icon="📡", layout="wide")
    allowed = require_login()
    # Registered even when locked, so that a deep link (/device?device=…) survives the login.
    pages = [
        st.Page(PAGES / "fleet.py", title="Fleet", url_path="fleet", default=True),
        st.Page(PAGES / "device.py", title="Device", url_path="device"),
        st.Page(PAGES / "alarms.py", title="Alarms", url_path="alarms"),
        st.Page(PAGES / "pipeline.py", title="Pipeline", url_path="pipeline"),
        st.Page(PAGES / "notifications.py", title="Notifications", url_path="notifications"),
    ]
    # Listed only to those who may read it (the page refuses the others all the same).
    if not allowed or current_person().may(Permission.AUDIT_READ):
        pages.append(st.Page(PAGES / "audit.py", title="Audit", url_path="audit"))
    navigation = st.navigation(pages, position="sidebar" if allowed else "hidden")
    if not allowed:
        return
    logout_control()
    watch_account()
    navigation.run()


main()
