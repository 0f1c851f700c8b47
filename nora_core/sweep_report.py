"""Charts, tables and files of a rank sweep: Plotly figures shared by the app and the CLI,
a Markdown table, and the sweep.csv / sweep.json / sweep.html outputs.
"""

from __future__ import annotations

import csv
import datetime
import html
import io
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch

from nora_core.sweep import SweepConfig

ROW_COLUMNS = ("task", "variant", "method", "r", "seed", "scaling", "lora_alpha", "activation",
               "lora_dropout", "targets", "lr", "steps", "val_loss", "val_perplexity", "train_loss",
               "trainable_params", "effective_rank", "wall_time_s", "diverged", "floor_r",
               "floor_linear")

LORA_COLORS = ("#1f77b4", "#17becf", "#7f7f7f", "#9edae5")
NORA_COLORS = ("#d62728", "#ff7f0e", "#9467bd", "#e377c2")
CHART_HEIGHT = 420


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def variant_colors(summary: Sequence[dict]) -> dict[str, str]:
    """Give every variant a colour: blues for LoRA variants, reds for NoRA, in order of appearance."""
    colors: dict[str, str] = {}
    counts = {"lora": 0, "nora": 0}
    for entry in summary:
        name = entry["variant"]
        if name in colors:
            continue
        palette = LORA_COLORS if entry["method"] == "lora" else NORA_COLORS
        colors[name] = palette[counts[entry["method"]] % len(palette)]
        counts[entry["method"]] += 1
    return colors


def _by_variant(summary: Sequence[dict]) -> dict[str, list[dict]]:
    lines: dict[str, list[dict]] = {}
    for entry in summary:
        lines.setdefault(entry["variant"], []).append(entry)
    for entries in lines.values():
        entries.sort(key=lambda e: e["r"])
    return lines


def _loss_label(summary: Sequence[dict]) -> str:
    task = summary[0]["task"] if summary else ""
    if task in ("linear_teacher", "nonlinear_teacher"):
        return "final validation MSE"
    return "final validation cross-entropy"


def loss_figure(summary: Sequence[dict], x: str = "r", log_y: bool = False,
                show_floors: bool = True) -> go.Figure:
    """Plot mean final validation loss (± std over seeds) per variant against r or parameters.

    Args:
        summary: rows from `summarise`.
        x: "r" (log₂ axis) or "trainable_params" (log₁₀ axis).
        log_y: use a logarithmic loss axis.
        show_floors: draw the theory floors of toy tasks (linear ceiling, best rank-r linear map).
    """
    if x not in ("r", "trainable_params"):
        raise ValueError(f"x must be 'r' or 'trainable_params', got {x!r}")
    fig = go.Figure()
    colors = variant_colors(summary)
    ranks: set[int] = set()
    for name, entries in _by_variant(summary).items():
        points = [e for e in entries if _finite(e["val_loss_mean"])]
        ranks.update(e["r"] for e in points)
        std = [e["val_loss_std"] if _finite(e["val_loss_std"]) else 0.0 for e in points]
        hover = [f"r={e['r']}, lr={e['lr']:g}, seeds={e['seeds']}, diverged={e['diverged']}"
                 for e in points]
        fig.add_trace(go.Scatter(
            x=[e[x] for e in points], y=[e["val_loss_mean"] for e in points], name=name,
            mode="lines+markers", line=dict(color=colors[name]),
            error_y=dict(type="data", array=std, visible=True), text=hover,
            hovertemplate="%{y:.4g}<br>%{text}<extra>" + html.escape(name) + "</extra>"))

    if show_floors:
        _add_floors(fig, summary, x)
    fig.update_layout(height=CHART_HEIGHT, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0.0),
                      yaxis_title=_loss_label(summary) + " (mean ± std over seeds)")
    if x == "r":
        ticks = sorted(ranks)
        fig.update_xaxes(type="log", title="rank r (log₂ axis)", tickvals=ticks,
                         ticktext=[str(t) for t in ticks])
    else:
        fig.update_xaxes(type="log", title="trainable adapter parameters (log axis)")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def _add_floors(fig: go.Figure, summary: Sequence[dict], x: str) -> None:
    floors: dict[int, tuple[Any, Any]] = {}
    for entry in summary:
        floors.setdefault(entry["r"], (entry["floor_r"], entry["trainable_params"]))
    rank_floor = sorted((r, floor, params) for r, (floor, params) in floors.items() if _finite(floor))
    if rank_floor:
        fig.add_trace(go.Scatter(
            x=[r if x == "r" else params for r, _, params in rank_floor],
            y=[floor for _, floor, _ in rank_floor], name="best rank-r linear map (Eckart–Young)",
            mode="lines", line=dict(color="#333333", dash="dot")))
    ceiling = next((e["floor_linear"] for e in summary if _finite(e["floor_linear"])), None)
    if ceiling is not None:
        fig.add_hline(y=ceiling, line=dict(color="#333333", dash="dash"),
                      annotation_text="linear ceiling (best linear map of any rank)",
                      annotation_position="top right")


def effective_rank_figure(summary: Sequence[dict]) -> go.Figure:
    """Plot the mean output-view effective rank (± std over seeds) per variant against r."""
    fig = go.Figure()
    colors = variant_colors(summary)
    ranks: set[int] = set()
    for name, entries in _by_variant(summary).items():
        points = [e for e in entries if _finite(e["effective_rank_mean"])]
        ranks.update(e["r"] for e in points)
        std = [e["effective_rank_std"] if _finite(e["effective_rank_std"]) else 0.0 for e in points]
        fig.add_trace(go.Scatter(
            x=[e["r"] for e in points], y=[e["effective_rank_mean"] for e in points], name=name,
            mode="lines+markers", line=dict(color=colors[name]),
            error_y=dict(type="data", array=std, visible=True)))
    ticks = sorted(ranks)
    if ticks:
        fig.add_trace(go.Scatter(x=ticks, y=ticks, name="effective rank = r", mode="lines",
                                 line=dict(color="#bbbbbb", dash="dot")))
    fig.update_xaxes(type="log", title="rank r (log₂ axis)", tickvals=ticks,
                     ticktext=[str(t) for t in ticks])
    fig.update_yaxes(type="log", title="effective rank of Δy (output view, mean over layers)")
    fig.update_layout(height=CHART_HEIGHT, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0.0))
    return fig


def sweep_figures(summary: Sequence[dict], log_y: bool = False) -> dict[str, go.Figure]:
    """Return the three sweep charts by title: loss vs rank, loss vs parameters, effective rank."""
    return {
        "Final validation loss against rank": loss_figure(summary, "r", log_y),
        "Final validation loss against trainable parameters": loss_figure(summary, "trainable_params", log_y),
        "Effective rank against rank": effective_rank_figure(summary),
    }


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def summary_table(summary: Sequence[dict]) -> str:
    """Return the summary as a Markdown table, one row per variant and rank."""
    lm = any("val_perplexity_mean" in e for e in summary)
    header = ["variant", "r", "lr", "params", "val loss", "± std"]
    if lm:
        header.append("val ppl")
    header += ["eff. rank", "floor r", "diverged"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in sorted(summary, key=lambda e: (e["variant"], e["r"])):
        cells = [entry["variant"], str(entry["r"]), _cell(entry["lr"], 3), str(entry["trainable_params"]),
                 _cell(entry["val_loss_mean"]), _cell(entry["val_loss_std"], 2)]
        if lm:
            cells.append(_cell(entry.get("val_perplexity_mean")))
        cells += [_cell(entry["effective_rank_mean"], 3), _cell(entry["floor_r"]),
                  f"{entry['diverged']}/{entry['diverged'] + entry['seeds']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment_info() -> dict[str, Any]:
    """Describe the machine and software a sweep ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _json_value(value: Any) -> Any:
    # JSON has no NaN or infinity; they become null like a missing value.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _clean(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_clean(value) for value in data]
    return _json_value(data)


def rows_csv(rows: list[dict]) -> str:
    """Return the rows as CSV text, one line per run; missing values are empty cells."""
    columns = [c for c in ROW_COLUMNS if any(c in row for row in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in columns})
    return buffer.getvalue()


def sweep_json(config: SweepConfig, rows: list[dict], summary: list[dict],
               environment: dict[str, Any]) -> str:
    """Return the config, environment, rows and summary as JSON text (NaN and inf become null)."""
    document = {"config": config.to_dict(), "environment": environment, "rows": rows,
                "summary": summary}
    return json.dumps(_clean(document), indent=2) + "\n"


def write_outputs(out_dir: Path, config: SweepConfig, rows: list[dict], summary: list[dict],
                  environment: dict[str, Any]) -> dict[str, Path]:
    """Write sweep.csv (one row per run), sweep.json and a self-contained sweep.html.

    Args:
        out_dir: the output folder; created if missing.
        config: the sweep's config, stored in sweep.json.
        rows: rows from `run_sweep`.
        summary: rows from `summarise`.
        environment: from `environment_info`, plus anything else worth recording.

    Returns:
        The written paths by kind: "csv", "json", "html".
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "sweep.csv", "json": out_dir / "sweep.json", "html": out_dir / "sweep.html"}
    paths["csv"].write_text(rows_csv(rows), encoding="utf-8")
    paths["json"].write_text(sweep_json(config, rows, summary, environment), encoding="utf-8")
    paths["html"].write_text(figures_html(summary, f"Rank sweep: {config.task}"), encoding="utf-8")
    return paths


def figures_html(summary: Sequence[dict], title: str) -> str:
    """Return an HTML page with the sweep charts and the table; plotly.js is embedded, so the
    page works offline."""
    parts = []
    for index, (heading, fig) in enumerate(sweep_figures(summary).items()):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=index == 0))
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell.strip())}</td>" for cell in line.strip("|").split("|")) + "</tr>"
        for line in summary_table(summary).splitlines()[2:])
    header = "".join(f"<th>{html.escape(cell.strip())}</th>"
                     for cell in summary_table(summary).splitlines()[0].strip("|").split("|"))
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{''.join(parts)}<h2>Numbers</h2>"
            f"<table><tr>{header}</tr>{rows}</table></body></html>\n")
