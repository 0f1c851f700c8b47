"""Language model: LoRA and NoRA fine-tune a small causal LM live, side by side."""

import streamlit as st

from app.ui import lm_actions, lm_controls, lm_explain, lm_live, lm_panels, lm_session, url_state

st.title("Language model: LoRA vs NoRA")
lm_session.init_state()
lm_explain.show_intro()

requested = lm_controls.settings_form()
lm_session.sync_trainer(requested)
lm_actions.run_buttons(requested)
lm_actions.settings_notices(requested)
lm_live.live_fragment(lm_panels.render_live)
st.subheader("Sample generations")
lm_panels.render_samples()
lm_panels.render_answer_check()
url_state.prune()
