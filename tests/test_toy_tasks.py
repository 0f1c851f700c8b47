"""Tests of the toy tasks: determinism, batch shapes, theory floors checked against
independent least-squares and SVD fits, the 2-D classification helpers, and config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nora_core import AdapterConfig, adapter_parameters, inject_adapters
from nora_core.tasks.base import Task
from nora_core.tasks.classification import Classification2DConfig, Classification2DTask
from nora_core.tasks.teachers import (LinearTeacherConfig, LinearTeacherTask,
                                      NonlinearTeacherConfig, NonlinearTeacherTask)
from nora_core.tasks.toy import TOY_TASK_DESCRIPTIONS, TOY_TASKS, make_toy_task

# Small settings keep every task cheap to build; the floors do not depend on size.
SMALL = {
    "linear_teacher": {"d": 16},
    "nonlinear_teacher": {"d": 16, "hidden_width": 4},
    "classification_2d": {"n_train": 256, "n_val": 256},
}

# A validation mean lies within 5 standard errors of its expectation except with
# probability below 1e-6 for a normal sampling distribution.
SE_FACTOR = 5.0


@pytest.fixture(autouse=True)
def single_thread():
    # These models are tiny: one thread avoids thread start-up and contention costs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mse_and_error(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Return the mean squared error and its standard error over the rows."""
    per_row = ((prediction - target) ** 2).mean(axis=1)  # (N,)
    return float(per_row.mean()), float(per_row.std(ddof=1) / math.sqrt(len(per_row)))


def _fit_least_squares(task, n: int, seed: int) -> np.ndarray:
    """Fit the teacher's update on x by least squares without intercept; return M (d_out, d_in)."""
    batch = task.sample_batch(torch.Generator().manual_seed(seed), n)
    x = batch["x"].double().numpy()
    update = task.update(batch["x"]).double().numpy()
    coefficients, *_ = np.linalg.lstsq(x, update, rcond=None)  # (d_in, d_out)
    return coefficients.T


def _validation_arrays(task) -> tuple[np.ndarray, np.ndarray]:
    batch = task.validation_batches()[0]
    return batch["x"].double().numpy(), task.update(batch["x"]).double().numpy()


@pytest.mark.parametrize("name", sorted(TOY_TASKS))
def test_task_protocol_and_description(name):
    task = make_toy_task(name, **SMALL[name])
    assert isinstance(task, Task)
    assert task.kind == "toy"
    assert task.name == name
    assert 20 < len(TOY_TASK_DESCRIPTIONS[name]) < 400
    module_names = dict(task.base_model().named_modules())
    for target in task.target_modules:
        assert isinstance(module_names[target], torch.nn.Linear)


@pytest.mark.parametrize("name", sorted(TOY_TASKS))
def test_same_seed_same_task(name):
    first = make_toy_task(name, **SMALL[name], seed=3)
    second = make_toy_task(name, **SMALL[name], seed=3)
    for key, value in first.base_model().state_dict().items():
        assert torch.equal(value, second.base_model().state_dict()[key]), key
    for key in ("x", "y"):
        assert torch.equal(first.validation_batches()[0][key], second.validation_batches()[0][key])
        assert torch.equal(first.spectrum_batch()[key], second.spectrum_batch()[key])
        batch_a = first.sample_batch(torch.Generator().manual_seed(7), 32)
        batch_b = second.sample_batch(torch.Generator().manual_seed(7), 32)
        assert torch.equal(batch_a[key], batch_b[key])


@pytest.mark.parametrize("name", sorted(TOY_TASKS))
def test_other_seed_other_task(name):
    first = make_toy_task(name, **SMALL[name], seed=3)
    second = make_toy_task(name, **SMALL[name], seed=4)
    assert not torch.equal(first.validation_batches()[0]["x"], second.validation_batches()[0]["x"])
    weights_a = list(first.base_model().parameters())[0]
    weights_b = list(second.base_model().parameters())[0]
    assert not torch.equal(weights_a, weights_b)


@pytest.mark.parametrize("name", sorted(TOY_TASKS))
def test_validation_independent_of_trainer(name):
    # A trainer seeded with the task seed must not redraw the validation inputs.
    task = make_toy_task(name, **SMALL[name], seed=5)
    validation = task.validation_batches()[0]["x"]
    batch = task.sample_batch(torch.Generator().manual_seed(5), len(validation))
    assert not torch.equal(batch["x"], validation)
    assert not torch.equal(task.spectrum_batch()["x"], validation[: len(task.spectrum_batch()["x"])])


@pytest.mark.parametrize("name", sorted(TOY_TASKS))
def test_batch_shapes_and_dtypes(name):
    task = make_toy_task(name, **SMALL[name])
    batch = task.sample_batch(torch.Generator().manual_seed(0), 37)
    model = task.base_model()
    assert model.training
    assert batch["x"].dtype == torch.float32
    assert batch["x"].shape[0] == 37
    if name == "classification_2d":
        assert batch["x"].shape == (37, 2)
        assert batch["y"].dtype == torch.int64
        assert batch["y"].shape == (37,)
    else:
        assert batch["x"].shape == (37, 16)
        assert batch["y"].dtype == torch.float32
        assert batch["y"].shape == (37, 16)
    loss = task.loss(model, batch)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())


@pytest.mark.parametrize("name", sorted(TOY_TASKS))
def test_base_model_fresh_copy(name):
    task = make_toy_task(name, **SMALL[name])
    model = task.base_model()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    fresh = task.base_model()
    changed = list(model.parameters())[0]
    assert not torch.equal(changed, list(fresh.parameters())[0])


def test_fixed_training_set_rows():
    task = LinearTeacherTask(LinearTeacherConfig(d=8, n_train=32))
    train = task.training_set()
    batch = task.sample_batch(torch.Generator().manual_seed(0), 200)
    # Every drawn row must equal one of the 32 stored rows, targets included.
    same_x = (batch["x"][:, None, :] == train["x"][None, :, :]).all(dim=2)  # (200, 32)
    same_y = (batch["y"][:, None, :] == train["y"][None, :, :]).all(dim=2)  # (200, 32)
    assert bool((same_x & same_y).any(dim=1).all())
    assert len(torch.unique(batch["x"], dim=0)) <= 32


SPECTRUM_CASES = [
    {"spectrum": "power_law", "decay": 1.0},
    {"spectrum": "exponential", "decay": 0.3},
    {"spectrum": "flat", "true_rank": 8},
    {"spectrum": "power_law", "decay": 0.5, "normalize": False, "sigma_1": 3.0},
]


@pytest.mark.parametrize("case", SPECTRUM_CASES)
@pytest.mark.parametrize("r", [1, 4, 12])
def test_eckart_young_floor(case, r):
    task = LinearTeacherTask(LinearTeacherConfig(d=32, **case))
    delta = task.delta_weight.double().numpy()
    u, s, vt = np.linalg.svd(delta)
    truncated = (u[:, :r] * s[:r]) @ vt[:r]  # best rank-r approximation of ΔW*

    # With E[x xᵀ] = I the expected squared error of a map is ‖ΔW* − ΔW_r‖_F² per sample;
    # the tolerance covers float32 storage of ΔW*.
    expected = float(np.sum((delta - truncated) ** 2)) / 32
    assert task.floor(r) == pytest.approx(expected, rel=1e-4, abs=1e-9)

    x, update = _validation_arrays(task)
    mse, error = _mse_and_error(x @ truncated.T, update)
    assert abs(mse - task.floor(r)) <= SE_FACTOR * error + 1e-9


def test_linear_floor_with_noise():
    task = LinearTeacherTask(LinearTeacherConfig(d=16, noise_std=0.5))
    assert task.floor(None) == pytest.approx(0.25)
    assert task.floor(0) == pytest.approx(1.25)

    # The teacher itself scores the noise variance on the validation set.
    batch = task.validation_batches()[0]
    prediction = task.target(batch["x"]).double().numpy()
    mse, error = _mse_and_error(prediction, batch["y"].double().numpy())
    assert abs(mse - 0.25) <= SE_FACTOR * error


@pytest.mark.parametrize("case", [
    {"family": "silu_mlp"},
    {"family": "silu_mlp", "center": True},
    {"family": "relu_mlp"},
    {"family": "sin", "gain": 1.5},
])
def test_linear_ceiling_matches_least_squares(case):
    task = NonlinearTeacherTask(NonlinearTeacherConfig(d=32, hidden_width=8, **case))
    coefficients = _fit_least_squares(task, 20000, seed=1)
    x, update = _validation_arrays(task)
    mse, error = _mse_and_error(x @ coefficients.T, update)
    # Fitting 32×32 coefficients on 20k samples adds about d/N = 0.16 % of the residual.
    assert abs(mse - task.floor(None)) <= SE_FACTOR * error + 0.002 * task.floor(None)
    assert task.floor(None) < 0.95

    # Each fitted coefficient has standard error sqrt(residual / N) ≈ 0.006 here.
    assert np.abs(coefficients - task.best_linear_update()).max() < 0.04


@pytest.mark.parametrize("r", [1, 3, 6])
def test_rank_floor_matches_reduced_rank_fit(r):
    task = NonlinearTeacherTask(NonlinearTeacherConfig(d=32, hidden_width=8))
    batch = task.sample_batch(torch.Generator().manual_seed(2), 20000)
    x = batch["x"].double().numpy()
    update = task.update(batch["x"]).double().numpy()

    # Reduced-rank regression for any input covariance: project the least-squares fit
    # onto the top-r right singular vectors of the fitted values.
    coefficients, *_ = np.linalg.lstsq(x, update, rcond=None)  # (d_in, d_out)
    _, _, vt = np.linalg.svd(x @ coefficients, full_matrices=False)
    reduced = coefficients @ vt[:r].T @ vt[:r]  # (d_in, d_out), rank r

    # A large held-out sample, not the validation set, keeps the standard error near 0.002
    # so that an off-by-one rank in the floor would show.
    held_out = task.sample_batch(torch.Generator().manual_seed(3), 40000)
    x_test = held_out["x"].double().numpy()
    mse, error = _mse_and_error(x_test @ reduced, task.update(held_out["x"]).double().numpy())
    assert abs(mse - task.floor(r)) <= SE_FACTOR * error + 0.002
    assert task.floor(r) > task.floor(None) + 0.01


FLOOR_CASES = [
    ("linear_teacher", {"d": 16}),
    ("linear_teacher", {"d": 16, "spectrum": "flat", "true_rank": 5, "noise_std": 0.1}),
    ("nonlinear_teacher", {"d": 16, "hidden_width": 6}),
    ("nonlinear_teacher", {"d": 16, "hidden_width": 16, "family": "sin", "noise_std": 0.2}),
]


@pytest.mark.parametrize("name, kwargs", FLOOR_CASES)
def test_floor_monotone_in_rank(name, kwargs):
    task = make_toy_task(name, **kwargs)
    floors = [task.floor(r) for r in range(0, 18)]
    noise = kwargs.get("noise_std", 0.0) ** 2
    assert floors[0] == pytest.approx(1.0 + noise)  # rank 0 leaves the base loss
    assert all(later <= earlier + 1e-12 for earlier, later in zip(floors, floors[1:]))
    assert all(value >= task.floor(None) - 1e-12 for value in floors)
    assert floors[-1] == pytest.approx(task.floor(None))
    assert floors[1] > floors[-1]


@pytest.mark.parametrize("family", ["silu_mlp", "relu_mlp", "sin", "quadratic"])
def test_nonlinear_base_loss_is_one(family):
    task = NonlinearTeacherTask(NonlinearTeacherConfig(family=family))
    batch = task.validation_batches()[0]
    with torch.no_grad():
        prediction = task.base_model()(batch["x"]).double().numpy()
    mse, error = _mse_and_error(prediction, batch["y"].double().numpy())
    assert abs(mse - 1.0) <= SE_FACTOR * error


def test_quadratic_teacher_has_no_linear_part():
    task = NonlinearTeacherTask(NonlinearTeacherConfig(d=32, hidden_width=8, family="quadratic"))
    assert task.floor(None) == pytest.approx(1.0, abs=1e-9)
    coefficients = _fit_least_squares(task, 20000, seed=3)
    # E[((v·x)² − 1) x] = 0, so the fit is sampling noise of size about 1/sqrt(N) = 0.007.
    assert np.abs(coefficients).max() < 0.05


def test_adapters_against_linear_ceiling():
    torch.manual_seed(0)
    task = NonlinearTeacherTask(NonlinearTeacherConfig(d=32, hidden_width=8))
    results = {}
    for method, r in [("lora", 32), ("nora", 8)]:
        model = inject_adapters(task.base_model(), AdapterConfig(method=method, r=r))
        optimizer = torch.optim.Adam(adapter_parameters(model), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        for _ in range(400):
            loss = task.loss(model, task.sample_batch(generator, 256))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        batch = task.validation_batches()[0]
        with torch.no_grad():
            prediction = model(batch["x"]).double().numpy()
        results[method] = _mse_and_error(prediction, batch["y"].double().numpy())

    ceiling = task.floor(None)
    lora_mse, lora_error = results["lora"]
    # A full-rank linear update cannot beat the ceiling in expectation; the validation
    # estimate may dip below it by sampling error only.
    assert lora_mse >= ceiling - SE_FACTOR * lora_error
    assert lora_mse < ceiling + 0.05  # and Adam gets close to it
    nora_mse, _ = results["nora"]
    assert nora_mse < ceiling - 0.1


@pytest.mark.parametrize("dataset, n_classes, minimum", [
    ("moons", 2, 0.97),
    ("circles", 2, 0.97),
    ("spirals", 3, 0.85),
])
def test_classification_trainable_copy_learns(dataset, n_classes, minimum):
    task = Classification2DTask(Classification2DConfig(dataset=dataset, n_classes=n_classes))
    validation = task.validation_batches()[0]
    model = task.base_model()
    assert task.accuracy(model, validation) < 0.7  # the base starts poor on these labels

    model.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        loss = task.loss(model, task.sample_batch(generator, 128))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert task.accuracy(model, validation) >= minimum


def test_half_plane_base_is_poor_on_target():
    task = Classification2DTask(Classification2DConfig(base_init="half_plane", n_train=256))
    random_task = Classification2DTask(Classification2DConfig(base_init="random", n_train=256))
    assert task.accuracy(task.base_model(), task.validation_batches()[0]) < 0.75
    pretrained = task.base_model().state_dict()["head.weight"]
    assert not torch.equal(pretrained, random_task.base_model().state_dict()["head.weight"])


@pytest.mark.parametrize("dataset, n_classes", [("moons", 2), ("circles", 2), ("spirals", 4)])
def test_classification_points(dataset, n_classes):
    task = Classification2DTask(Classification2DConfig(dataset=dataset, n_classes=n_classes))
    x, y = task.train_points()
    assert x.shape == (1024, 2)
    assert np.bincount(y, minlength=n_classes).max() - np.bincount(y).min() <= 1
    assert np.abs(x).max() < 3.5
    x_val, y_val = task.validation_points()
    assert x_val.shape == (1024, 2)
    assert set(np.unique(y_val)) == set(range(n_classes))
    assert task.floor(None) is None
    assert task.floor(4) is None


def test_decision_grid_probabilities():
    task = Classification2DTask(Classification2DConfig(dataset="spirals", n_classes=3, n_train=64))
    model = task.base_model()
    xx, yy, probs = task.decision_grid(model, resolution=20)
    assert xx.shape == (20,)
    assert yy.shape == (20,)
    assert probs.shape == (20, 20, 3)
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, atol=1e-5)  # softmax in float32
    low, high = task.plot_bounds()
    assert xx[0] == pytest.approx(low[0])
    assert yy[-1] == pytest.approx(high[1])
    assert model.training  # the grid evaluation restores train mode

    # probs[i, j] belongs to the point (xx[j], yy[i]).
    point = torch.tensor([[xx[3], yy[11]]], dtype=torch.float32)
    with torch.no_grad():
        direct = torch.softmax(model(point), dim=1).numpy()[0]
    np.testing.assert_allclose(probs[11, 3], direct, atol=1e-5)


BAD_CONFIGS = [
    (LinearTeacherConfig, {"d": 0}, "d"),
    (LinearTeacherConfig, {"d": 64.0}, "d"),
    (LinearTeacherConfig, {"spectrum": "cubic"}, "spectrum"),
    (LinearTeacherConfig, {"sigma_1": float("nan")}, "sigma_1"),
    (LinearTeacherConfig, {"decay": -1.0}, "decay"),
    (LinearTeacherConfig, {"true_rank": 65}, "true_rank"),
    (LinearTeacherConfig, {"normalize": "yes"}, "normalize"),
    (LinearTeacherConfig, {"noise_std": -0.1}, "noise_std"),
    (LinearTeacherConfig, {"n_train": 0}, "n_train"),
    (LinearTeacherConfig, {"seed": -1}, "seed"),
    (NonlinearTeacherConfig, {"family": "cubic"}, "family"),
    (NonlinearTeacherConfig, {"hidden_width": 65}, "hidden_width"),
    (NonlinearTeacherConfig, {"gain": 0.0}, "gain"),
    (NonlinearTeacherConfig, {"n_val": 10}, "n_val"),
    (Classification2DConfig, {"dataset": "blobs"}, "dataset"),
    (Classification2DConfig, {"dataset": "moons", "n_classes": 3}, "n_classes"),
    (Classification2DConfig, {"width": 2}, "width"),
    (Classification2DConfig, {"noise": True}, "noise"),
]


@pytest.mark.parametrize("config_class, kwargs, field_name", BAD_CONFIGS)
def test_bad_config_names_field(config_class, kwargs, field_name):
    with pytest.raises(ValueError, match=rf"\.{field_name} must"):
        config_class(**kwargs)


def test_float_field_stores_float():
    config = LinearTeacherConfig(sigma_1=2)
    assert isinstance(config.sigma_1, float)
    assert config == LinearTeacherConfig(sigma_1=2.0)


@pytest.mark.parametrize("name, kwargs, message", [
    ("no_such_task", {}, "unknown toy task"),
    ("linear_teacher", {"width": 3}, "unknown field"),
    ("nonlinear_teacher", {"d": 8, "hidden_width": 9}, "hidden_width"),
])
def test_make_toy_task_rejects(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_toy_task(name, **kwargs)


@pytest.mark.parametrize("name", sorted(TOY_TASKS))
def test_bad_method_arguments(name):
    task = make_toy_task(name, **SMALL[name])
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="batch_size"):
        task.sample_batch(generator, 0)
    with pytest.raises(ValueError, match="r must be"):
        task.floor(-1)
