"""Playground: LoRA and NoRA train live, side by side, on a toy task."""

import streamlit as st

from app.ui import (classroom, controls, explain, export, lesson_ui, live, panels, session,
                    url_state)

st.title("Playground: LoRA vs NoRA")
classroom.show_limits_error()
session.init_state()
lesson = lesson_ui.active_lesson()
starting = lesson is not None and lesson_ui.take_pending(lesson)
if lesson is not None:
    lesson_ui.show_box(lesson)
explain.show_intro()

requested = controls.settings_form(use_running=not starting)
session.sync_trainer(requested, force=starting)
controls.run_buttons(requested)
controls.settings_notices(requested)
live.live_fragment(panels.render_live)
export.export_panel()
url_state.share_box()
url_state.prune()
