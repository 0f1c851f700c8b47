"""Streamlit building blocks of NoRA Lab: controls built from config dataclasses, Plotly
charts, per-session state and the live-training loop. Pages import from here and stay thin.
"""
