"""AppTest checks of the rank-sweep page: a small sweep draws its charts, table and
downloads; invalid settings show an error and the page keeps running."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = Path(__file__).resolve().parents[1] / "app" / "views" / "sweep.py"
# The first run imports torch and the tasks; the small sweep itself takes about a second.
TIMEOUT = 180


def _start() -> AppTest:
    app = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)
    app.run()
    assert not app.exception, app.exception
    return app


def _submit(app: AppTest) -> None:
    app.button(key="sweep.run").click().run()


def test_page_small_sweep_draws_charts():
    app = _start()
    assert len(app.get("plotly_chart")) == 0

    app.multiselect(key="sweep.linear_ceiling.ranks").set_value([1, 4])
    app.number_input(key="sweep.linear_ceiling.seeds").set_value(2)
    app.number_input(key="sweep.linear_ceiling.steps").set_value(30)
    _submit(app)

    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    assert len(app.get("plotly_chart")) == 3  # loss vs rank, loss vs parameters, effective rank
    assert len(app.get("download_button")) == 2
    table = next(m.value for m in app.markdown if m.value.startswith("| variant"))
    assert len(table.splitlines()) == 2 + 2 * 2  # header, rule, 2 methods × 2 ranks


def test_page_switches_preset_explanation():
    app = _start()

    app.selectbox(key="sweep.preset").set_value("linear_home_turf").run()

    assert not app.exception, app.exception
    assert any("Eckart–Young" in m.value for m in app.markdown)
    assert app.multiselect(key="sweep.linear_home_turf.ranks").value == [1, 2, 4, 8, 16, 32, 64]


def test_page_empty_ranks_shows_error():
    app = _start()

    app.multiselect(key="sweep.linear_ceiling.ranks").set_value([])
    _submit(app)

    assert not app.exception, app.exception
    assert any("ranks" in e.value for e in app.error)
    assert len(app.get("plotly_chart")) == 0


def test_link_sets_ranks_and_seeds():
    app = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)
    app.query_params["sweep.linear_ceiling.ranks"] = "1,4"
    app.query_params["sweep.linear_ceiling.seeds"] = "2"
    app.run()

    assert not app.exception, app.exception
    assert app.multiselect(key="sweep.linear_ceiling.ranks").value == [1, 4]
    assert app.number_input(key="sweep.linear_ceiling.seeds").value == 2
    assert app.query_params["sweep.preset"] == "linear_ceiling"


def test_bad_link_ranks_fall_back():
    app = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)
    app.query_params["sweep.linear_ceiling.ranks"] = "3,abc"
    app.run()

    assert not app.exception, app.exception
    assert "sweep.linear_ceiling.ranks='3,abc' is invalid" in app.warning[0].value
    assert app.multiselect(key="sweep.linear_ceiling.ranks").value == [1, 2, 4, 8, 16, 32, 64]
