"""Playground: LoRA and NoRA train live, side by side, on a toy task."""

import streamlit as st

from app.ui import controls, explain, panels, session

st.title("Playground: LoRA vs NoRA")
session.init_state()
explain.show_intro()

requested = controls.settings_form()
session.sync_trainer(requested)
controls.run_buttons(requested)
controls.settings_notices(requested)
session.live_fragment(panels.render_live)
