"""Entry point of the NoRA Lab app: `streamlit run app/main.py`.

Sets the page config and the navigation. A page is listed once its file exists under
app/views, so adding a page is one line in `PAGES`.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
ROOT = APP_DIR.parent
# `streamlit run` puts only app/ on sys.path; pages import `app.ui` and `nora_core` from the root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

# Page files live in app/views, not app/pages: Streamlit treats a folder named "pages"
# beside the entry script as an old-style page list and serves deep links from it
# before this script has run.
# (file under app/views, title, Material icon); the first existing page is the default.
PAGES = [
    ("playground.py", "Playground", ":material/science:"),
    ("sweep.py", "Rank sweep", ":material/stacked_line_chart:"),
    ("lm.py", "Language model", ":material/article:"),
    ("lessons.py", "Lessons", ":material/school:"),
]


def available_pages() -> list[st.Page]:
    """Return an `st.Page` for every entry of `PAGES` whose file exists."""
    existing = [(APP_DIR / "views" / name, title, icon) for name, title, icon in PAGES
                if (APP_DIR / "views" / name).is_file()]
    return [st.Page(path, title=title, icon=icon, default=index == 0)
            for index, (path, title, icon) in enumerate(existing)]


# An emoji favicon is drawn locally; a Material icon favicon would be fetched from Google.
st.set_page_config(page_title="NoRA Lab", page_icon="🧪", layout="wide")
st.navigation(available_pages()).run()
