"""Lessons: guided experiments that open the Playground with the settings they need."""

import streamlit as st

from app.ui import lesson_ui

st.title("Lessons")
lesson_ui.show_catalogue()
