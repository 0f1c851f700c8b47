"""Rank sweep: final validation loss against rank and parameter count for LoRA and NoRA
variants, with the theory floors of the toy tasks."""

from __future__ import annotations

import dataclasses
import time

import streamlit as st

from app.ui import url_state, widgets
from nora_core.fields import field_specs
from nora_core.sweep import SweepConfig, run_sweep, summarise
from nora_core.sweep_presets import PRESETS
from nora_core.sweep_report import environment_info, rows_csv, summary_table, sweep_figures, sweep_json

RESULT = "sweep.result"
RANK_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SPECS = {spec.name: spec for spec in field_specs(SweepConfig)}



def parse_ranks(text: str, options: list[int]) -> list[int]:
    """Parse a comma-separated rank list from the URL; only offered ranks are valid."""
    ranks = [int(item) for item in text.split(",") if item.strip()]
    invalid = [r for r in ranks if r not in options]
    if not ranks or invalid:
        raise ValueError(f"ranks must be among {', '.join(map(str, options))}")
    return ranks


def parse_seed_count(text: str) -> int:
    """Parse the number of seeds from the URL: an integer from 1 to 10."""
    count = int(text)
    if not 1 <= count <= 10:
        raise ValueError("the number of seeds must be from 1 to 10")
    return count


st.title("Rank sweep: the linear ceiling, measured")
name = widgets.url_selectbox("Preset", list(PRESETS), "sweep.preset", default=list(PRESETS)[0],
                             format_func=lambda n: PRESETS[n].title)
preset = PRESETS[name]
base = preset.config()
st.markdown(preset.explanation)

# Widget keys carry the preset name, so each preset starts from its own values.
left, middle, right = st.columns(3)
with left:
    rank_options = sorted(set(RANK_CHOICES) | set(base.ranks))
    ranks_key, seeds_key = f"sweep.{name}.ranks", f"sweep.{name}.seeds"
    ranks = st.multiselect("ranks r", rank_options,
                           default=url_state.initial_value(
                               ranks_key, list(base.ranks),
                               lambda text: parse_ranks(text, rank_options), "ranks r"),
                           key=ranks_key, help=SPECS["ranks"].help)
    url_state.show_warning(ranks_key)
    url_state.remember(ranks_key, ranks)
    seeds = st.number_input("seeds", min_value=1, max_value=10,
                            value=url_state.initial_value(seeds_key, len(base.seeds),
                                                          parse_seed_count, "seeds"),
                            key=seeds_key, help=SPECS["seeds"].help)
    url_state.show_warning(seeds_key)
    url_state.remember(seeds_key, seeds)
with middle:
    steps = widgets.field_widget(SPECS["steps"], f"sweep.{name}.steps", default=base.steps)
    lr = widgets.field_widget(SPECS["lr"], f"sweep.{name}.lr", default=base.lr)
with right:
    tune_lr = widgets.field_widget(SPECS["tune_lr"], f"sweep.{name}.tune_lr", default=base.tune_lr)
    st.caption("Variants: " + ", ".join(v.label for v in base.all_variants()))
    if base.lr_grid:
        st.caption("Learning-rate grid: " + ", ".join(f"{v:g}" for v in base.lr_grid))
submitted = st.button("Run sweep", type="primary", key="sweep.run")

if submitted:
    try:
        config = dataclasses.replace(base, ranks=tuple(ranks), seeds=int(seeds), steps=steps, lr=lr,
                                     tune_lr=tune_lr)
    except ValueError as error:
        st.error(f"Invalid sweep settings: {error}")
        st.stop()
    bar = st.progress(0.0, text=f"starting {config.run_count()} runs")
    started = time.perf_counter()
    try:
        rows = run_sweep(config, progress=lambda fraction, text: bar.progress(min(fraction, 1.0), text=text))
    except ValueError as error:
        st.error(f"The sweep could not start: {error}")
        st.stop()
    finally:
        bar.empty()
    st.session_state[RESULT] = {"preset": name, "config": config, "rows": rows,
                                "summary": summarise(rows), "seconds": time.perf_counter() - started}

result = st.session_state.get(RESULT)
if result is None:
    st.info("Choose a preset, adjust ranks, seeds and steps, and press Run sweep.")
    st.stop()

config, summary = result["config"], result["summary"]
st.caption(f"Last sweep: {PRESETS[result['preset']].title}, {len(result['rows'])} runs of "
           f"{config.steps} steps, {result['seconds']:.1f} s.")
log_y = st.checkbox("Logarithmic loss axis", key="sweep.log_y")
for title, figure in sweep_figures(summary, log_y=log_y).items():
    st.subheader(title)
    st.plotly_chart(figure, key=f"sweep.chart.{title}")

st.subheader("Numbers")
st.markdown(summary_table(summary))
environment = environment_info()
left, right = st.columns(2)
left.download_button("Download CSV (one row per run)", rows_csv(result["rows"]), "sweep.csv",
                     "text/csv", key="sweep.download_csv")
right.download_button("Download JSON (rows, summary, config)",
                      sweep_json(config, result["rows"], summary, environment), "sweep.json",
                      "application/json", key="sweep.download_json")
