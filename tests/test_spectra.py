"""Spectra against numpy's SVD, summary-number edge cases and the two spectrum views."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from nora_core import AdapterConfig, adapter_parameters, inject_adapters
from nora_core.spectra import (Spectrum, average_normalised_spectrum, effective_rank,
                               lowrank_singular_values, output_view, singular_values,
                               stable_rank, variance_dimension, weight_view)

# float64 SVDs of small matrices agree with numpy to ~1e-12; QR adds a few ulps more.
SVD_TOL = 1e-9


def test_singular_values_match_numpy():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(30, 12))
    np.testing.assert_allclose(singular_values(torch.tensor(matrix)),
                               np.linalg.svd(matrix, compute_uv=False), atol=SVD_TOL)


@pytest.mark.parametrize(("d_out", "d_in", "r"), [(40, 25, 5), (8, 50, 8), (16, 16, 3)])
def test_lowrank_matches_full_product(d_out, d_in, r):
    generator = torch.Generator().manual_seed(d_out + r)
    B = torch.randn(d_out, r, generator=generator, dtype=torch.float64)
    A = torch.randn(r, d_in, generator=generator, dtype=torch.float64)
    expected = np.linalg.svd((0.5 * B @ A).numpy(), compute_uv=False)[:r]
    np.testing.assert_allclose(lowrank_singular_values(B, A, scale=0.5), expected, atol=SVD_TOL)


def test_nonfinite_reported():
    spectra = weight_view(nn.Sequential())
    assert spectra == {}
    with pytest.raises(ValueError, match="NaN or infinite"):
        singular_values(np.array([[1.0, math.nan]]))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.0, 0.0], 0.0),
        ([], 0.0),
        ([5.0], 1.0),
        ([2.0, 2.0, 2.0, 2.0], 4.0),
        ([1.0, 0.0, 0.0], 1.0),
    ],
)
def test_effective_rank_cases(values, expected):
    result = effective_rank(np.array(values))
    assert not math.isnan(result)
    assert result == pytest.approx(expected, abs=1e-12)


def test_effective_rank_between_one_and_k():
    rng = np.random.default_rng(1)
    sv = np.sort(rng.uniform(0.1, 3.0, size=10))[::-1]
    assert 1.0 < effective_rank(sv) < 10.0


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([3.0, 1.0], 0.9, 1),  # 9 / 10 of the energy sits in the first value
        ([1.0, 1.0, 1.0, 1.0], 0.9, 4),
        ([1.0, 1.0, 1.0, 1.0], 0.5, 2),
        ([0.0, 0.0], 0.9, 0),
        ([2.0, 1.0, 1.0], 1.0, 3),
    ],
)
def test_variance_dimension_cases(values, fraction, expected):
    assert variance_dimension(np.array(values), fraction) == expected


def test_stable_rank_cases():
    assert stable_rank(np.array([2.0, 2.0])) == pytest.approx(2.0)
    assert stable_rank(np.array([2.0, 1.0])) == pytest.approx(1.25)
    assert stable_rank(np.zeros(3)) == 0.0


def _model_with_adapter(method: str, r: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = inject_adapters(nn.Sequential(nn.Linear(16, 24)), AdapterConfig(method=method, r=r))
    with torch.no_grad():
        for param in adapter_parameters(model):
            param.normal_()
    return model


def test_weight_view_equals_delta_w():
    model = _model_with_adapter("lora")
    layer = model[0]
    spectra = weight_view(model)
    expected = np.linalg.svd(layer.delta_weight().detach().double().numpy(), compute_uv=False)[:4]
    np.testing.assert_allclose(spectra["0"].values, expected, rtol=1e-5)  # float32 factors


def test_weight_view_skips_nonlinear():
    assert weight_view(_model_with_adapter("nora")) == {}


def test_output_view_matches_manual_svd():
    model = _model_with_adapter("nora")
    model[0].lora_dropout.p = 0.5  # output view must run in eval mode, so dropout is off
    x = torch.randn(200, 16)
    spectra = output_view(model, lambda m: m(x))
    layer = model[0]
    with torch.no_grad():
        delta = 1.0 * nn.functional.silu(x @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
    delta = delta.double() - delta.double().mean(0)
    expected = np.linalg.svd(delta.numpy(), compute_uv=False)[:4]
    np.testing.assert_allclose(spectra["0"].values, expected, rtol=1e-5)
    assert model.training  # the previous mode is restored


def test_output_view_at_init_is_zero():
    torch.manual_seed(0)
    model = inject_adapters(nn.Sequential(nn.Linear(8, 8)), AdapterConfig(method="nora", r=2))
    spectrum = output_view(model, lambda m: m(torch.randn(50, 8)))["0"]
    assert spectrum.is_zero
    assert spectrum.effective_rank == 0.0


def test_output_view_nonfinite_not_plotted():
    model = _model_with_adapter("lora")
    with torch.no_grad():
        model[0].lora_B.weight[0, 0] = math.inf
    spectrum = output_view(model, lambda m: m(torch.randn(20, 16)))["0"]
    assert not spectrum.finite
    assert spectrum.effective_rank is None


def test_average_normalised_spectrum_pads():
    spectra = {"a": Spectrum("a", np.array([3.0, 1.0])), "b": Spectrum("b", np.array([1.0])),
               "c": Spectrum("c", None)}
    average = average_normalised_spectrum(spectra)
    np.testing.assert_allclose(average, [(0.75 + 1.0) / 2, 0.25 / 2])
