"""The lessons: the catalogue on the Lessons page, and the open lesson's box on its page.

Starting a lesson switches to its page with the lesson's settings as query parameters,
plus `lesson=<id>`. The page's controls read their starting values from those parameters
(see `app.ui.url_state`), the page rebuilds its runs from them once, and from then on
the student can change anything. Because the settings travel in the URL, the link of a
lesson in progress opens the same lesson, with the same settings, in any browser.
"""

from __future__ import annotations

import streamlit as st

from nora_core.lessons import LESSONS, Lesson, lesson_by_id

from app.ui import url_state

LESSON_PARAM = "lesson"
# Session-state entry: the id of a lesson whose settings are still to be applied.
PENDING = "lesson_pending"
PAGE_FILES = {"playground": "views/playground.py"}


def _settings_text(lesson: Lesson) -> str:
    return ", ".join(f"{key} = {url_state.encode(value) or 'empty'}"
                     for key, value in lesson.settings)


def start(lesson: Lesson) -> None:
    """Open `lesson`'s page with its settings; the rest of the controls start at defaults."""
    st.session_state[PENDING] = lesson.id
    params = {key: url_state.encode(value) for key, value in lesson.settings}
    params[LESSON_PARAM] = lesson.id
    st.switch_page(PAGE_FILES[lesson.page], query_params=params)


def show_catalogue() -> None:
    """Draw every lesson with its explanation and a button that starts it."""
    st.markdown("Each lesson opens the Playground with settings that show one effect, and "
                "says what to look for. Everything stays adjustable; your earlier runs stay "
                "on the loss chart, dimmed.")
    for number, lesson in enumerate(LESSONS, start=1):
        with st.container(border=True):
            st.subheader(f"{number}. {lesson.title}")
            st.markdown(lesson.explanation)
            st.caption(f"Sets {_settings_text(lesson)}; every other setting starts at its "
                       "default.")
            if st.button("Start this lesson", key=f"lesson.start.{lesson.id}",
                         icon=":material/play_lesson:", type="primary"):
                start(lesson)


def active_lesson() -> Lesson | None:
    """Return the lesson named by the URL's `lesson` parameter, or None.

    An unknown id gives a warning and is removed from the URL.
    """
    text = st.query_params.get(LESSON_PARAM)
    if not text:
        return None
    try:
        return lesson_by_id(text)
    except ValueError as error:
        st.warning(f"Link parameter {LESSON_PARAM}={text!r} is invalid: {error}. The page "
                   "opens without a lesson.", icon=":material/link_off:")
        del st.query_params[LESSON_PARAM]
        return None


def take_pending(lesson: Lesson) -> bool:
    """Return True once, on the first run after `lesson` was started from the Lessons page."""
    if st.session_state.get(PENDING) != lesson.id:
        return False
    st.session_state[PENDING] = None
    return True


def _leave() -> None:
    st.query_params.pop(LESSON_PARAM, None)


def show_box(lesson: Lesson) -> None:
    """Draw the open lesson: its explanation, what to look for, and a way to leave it."""
    with st.container(border=True):
        st.markdown(f"**Lesson: {lesson.title}**")
        st.markdown(lesson.explanation)
        st.markdown(f"**What should you see?** {lesson.look_for}")
        st.button("Leave the lesson", key="lesson.leave", on_click=_leave,
                  icon=":material/close:", help="Hide this box; the settings stay as they are.")
