"""Entry point: `iotp dashboard` runs `streamlit run` on this file."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).parent / "views"  # not "pages": Streamlit would list those itself


def main() -> None:
    st.set_page_config(page_title="iotp", page_icon="📡", layout="wide")
    navigation = st.navigation(
        [
            st.Page(PAGES / "fleet.py", title="Fleet", url_path="fleet", default=True),
            st.Page(PAGES / "device.py", title="Device", url_path="device"),
            st.Page(PAGES / "pipeline.py", title="Pipeline", url_path="pipeline"),
        ]
    )
    navigation.run()


main()
