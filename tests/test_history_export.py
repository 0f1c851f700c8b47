"""Run history on the loss chart, and the exports: curves as CSV and JSON, adapters that load
back with the same outputs, and LoRA in PEFT's format."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import zipfile

import numpy as np
import pytest
import torch

from app_helpers import start, trainer
from nora_core.io import PeftExportError, load_adapter
from nora_core.limits import ServerLimits
from nora_core.tasks.toy import make_toy_task

from app.ui import classroom, export, session

peft = pytest.importorskip("peft")


@pytest.fixture
def limits():
    """Let a test set the server limits; the file's limits come back afterwards."""
    yield classroom.reload_limits
    classroom.reload_limits()


def _values(array) -> list:
    """Decode a Plotly JSON array, which numpy data turn into {"dtype", "bdata"} base64."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def _loss_traces(app) -> list[dict]:
    chart = next(element for element in app.get("plotly_chart") if "chart_loss" in element.proto.id)
    return json.loads(chart.proto.spec)["data"]


def _past_names(app) -> list[str]:
    return [trace["name"] for trace in _loss_traces(app) if trace.get("legendgroup") == "past"]


def _trained(steps: int = 2, query: dict | None = None):
    app = start(query)
    for _ in range(steps):
        app.button(key="step").click().run()
    return app


def test_reset_keeps_history():
    app = _trained(query={"train.lr": "0.01"})

    app.button(key="reset").click().run()

    assert not app.exception, app.exception
    names = _past_names(app)
    assert names == ["#1 LoRA r=8, lr 0.01", "#1 NoRA r=8, lr 0.01"]
    past = [trace for trace in _loss_traces(app) if trace.get("legendgroup") == "past"]
    assert all(trace["opacity"] == pytest.approx(0.3) for trace in past)
    assert _values(past[0]["x"]) == [0, 10, 20]


def test_clear_history_button():
    app = _trained()
    app.button(key="reset").click().run()
    assert _past_names(app)

    app.button(key="clear_history").click().run()

    assert not app.exception, app.exception
    assert _past_names(app) == []
    assert app.button(key="clear_history").disabled is True


def test_history_keeps_last_runs(limits):
    limits(ServerLimits(history_size=2))
    app = start()
    for _ in range(3):
        app.button(key="step").click().run()
        app.button(key="reset").click().run()

    names = _past_names(app)
    assert [name.split()[0] for name in names] == ["#2", "#2", "#3", "#3"]


def test_history_only_same_task():
    app = _trained()
    app.button(key="reset").click().run()

    app.selectbox(key="task.name").set_value("linear_teacher").run()

    # The old run is an MSE on another task: kept, but not drawn on this task's chart.
    assert len(app.session_state[session.RESOURCES].history) == 1
    assert _past_names(app) == []


def test_curves_csv_rows():
    app = _trained()
    current = trainer(app)
    settings = app.session_state[session.RESOURCES].settings

    rows = list(csv.DictReader(io.StringIO(export.curves_csv(current).decode())))

    assert tuple(rows[0]) == export.CURVE_COLUMNS
    assert len(rows) == 2 * 21  # two runs, steps 0 to 20
    validation = [row for row in rows if row["run"] == "NoRA" and row["val_loss"]]
    assert [int(row["step"]) for row in validation] == [0, 10, 20]
    document = json.loads(export.curves_json(current, settings))
    assert document["settings"]["train"]["seed"] == 0
    assert document["step"] == 20
    assert len(document["runs"]["LoRA"]["history"]) == 21


def test_curves_json_nonfinite_is_null():
    app = _trained(steps=1)
    current = trainer(app)
    current.runs["LoRA"].model.layer.lora_B.weight.data.fill_(math.inf)
    app.button(key="step").click().run()
    settings = app.session_state[session.RESOURCES].settings

    text = export.curves_json(current, settings).decode()

    assert "NaN" not in text  # strict JSON
    assert "Infinity" not in text
    document = json.loads(text)
    assert document["runs"]["LoRA"]["diverged_at"] == 11
    assert document["runs"]["NoRA"]["diverged_at"] is None
    assert max(row["step"] for row in document["runs"]["LoRA"]["history"]) == 10


def _unzip(data: bytes, folder):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(folder)
    return json.loads((folder / export.TASK_FILE).read_text())


def _outputs(model, task) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(task.spectrum_batch()["x"])


@pytest.mark.parametrize("name, query", [
    ("LoRA", {}),
    ("NoRA", {}),
    ("NoRA", {"nora.glu_gate": "true", "nora.activation": "gelu"}),
])
def test_adapter_zip_round_trip(tmp_path, name, query):
    app = _trained(query=query)
    current = trainer(app)
    settings = app.session_state[session.RESOURCES].settings

    task_record = _unzip(export.adapter_zip(current, name, settings), tmp_path)
    task = make_toy_task(task_record["task"], **task_record["task_config"])
    loaded = load_adapter(task.base_model(), tmp_path, trainable=False)

    # The same tensors through the same float32 operations: outputs agree bit for bit.
    torch.testing.assert_close(_outputs(loaded, task), _outputs(current.runs[name].model, task),
                               atol=0.0, rtol=0.0)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "task.json"]


@pytest.mark.parametrize("task_name", ["nonlinear_teacher", "classification_2d"])
def test_peft_zip_loads_in_peft(tmp_path, task_name):
    app = _trained(query={"task.name": task_name, "adapter.lora_alpha": "12"})
    current = trainer(app)
    settings = app.session_state[session.RESOURCES].settings

    task_record = _unzip(export.peft_zip(current, "LoRA", settings), tmp_path)
    task = make_toy_task(task_record["task"], **task_record["task_config"])
    loaded = peft.PeftModel.from_pretrained(task.base_model(), str(tmp_path))

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["lora_alpha"] == 12
    assert config["r"] == 8
    # PEFT adds s·B(A x) in its own order of float32 operations; 1e-6 is far below the
    # 1e-2 effect of a wrong scale and above the rounding differences.
    torch.testing.assert_close(_outputs(loaded, task), _outputs(current.runs["LoRA"].model, task),
                               atol=1e-6, rtol=0.0)


def test_peft_zip_rejects_nora():
    app = _trained(steps=1)
    settings = app.session_state[session.RESOURCES].settings

    with pytest.raises(PeftExportError, match="silu"):
        export.peft_zip(trainer(app), "NoRA", settings)


def test_export_panel_buttons():
    app = _trained(steps=1)

    keys = {button.key for button in app.get("download_button")}
    assert {"export.csv", "export.json", "export.LoRA.adapter", "export.NoRA.adapter",
            "export.LoRA.peft"} <= keys
    assert "export.NoRA.peft" not in keys  # SiLU NoRA has no PEFT equivalent
