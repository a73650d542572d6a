"""Property-based checks of every registry flow (hypothesis): random sizes, dtypes and scales.

For each flow, hypothesis draws the event dimension, the batch shape, the dtype, how far the
parameters are moved from their initialisation and the scale of the input, and checks that

* the log-determinant equals ``slogdet`` of the autograd Jacobian, point by point;
* the inverse (where the flow has one) returns the input, and its log-determinant is minus the
  forward one;
* bad input (NaN or inf, a wrong trailing dimension, another dtype than the parameters', no
  points, not a tensor) raises ``ValueError`` or ``TypeError`` with a message, never a NaN.

The examples are derandomized (the same ones every run) and bounded: ``EXAMPLES`` per flow and
property.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_cnf import Solver, flow_names, flow_spec, make_flow

EXAMPLES = 12
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# ODE flows: a solver tolerance near each dtype's resolution, so the checks test the flow
SOLVERS = {
    torch.float32: Solver(rtol=1e-6, atol=1e-6),
    torch.float64: Solver(rtol=1e-9, atol=1e-9, max_num_steps=100_000),
}
# tolerances of the checks, per dtype: (round trip, log-det vs autograd)
TOLERANCE = {torch.float32: (2e-3, 2e-3), torch.float64: (1e-6, 1e-6)}


def _build(name: str, dim: int, dtype: torch.dtype, scale: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    options = {}
    if name in ("cnf", "hybrid"):
        options = {"solver": SOLVERS[dtype], "hidden_dims": (8, 8)}
    flow = make_flow(name, dim, **options).to(dtype)
    with torch.no_grad():
        flow(torch.randn(16, dim, dtype=dtype))  # data-dependent initialisation (ActNorm)
        for parameter in flow.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return flow


def _case(name: str) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "dim": st.integers(max(2, flow_spec(name).min_dim), 5),
            "batch": st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple),
            "dtype": st.sampled_from([torch.float32, torch.float64]),
            "scale": st.floats(0.0, 0.1),
            "spread": st.floats(0.2, 2.0),
            "seed": st.integers(0, 2**16),
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", flow_names())
def test_log_det_and_round_trip_hold_for_random_settings(name):
    @SETTINGS
    @given(case=_case(name))
    def check(case):
        dtype = case["dtype"]
        flow = _build(name, case["dim"], dtype, case["scale"], case["seed"])
        x = case["spread"] * torch.randn(*case["batch"], case["dim"], dtype=dtype)
        y = flow(x)
        ladj = flow.log_abs_det_jacobian(x, y).detach()
        assert y.shape == x.shape and ladj.shape == case["batch"]
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        round_trip, logdet = TOLERANCE[dtype]
        point = x.reshape(-1, case["dim"])[0].double()
        flow64 = flow.double()  # the Jacobian in float64: the check's own error stays small
        jacobian = torch.autograd.functional.jacobian(lambda v: flow64(v.clone()), point)
        expected = torch.linalg.slogdet(jacobian)[1]
        assert abs(float(ladj.reshape(-1)[0]) - float(expected)) < logdet * (
            1 + abs(float(expected))
        )
        flow.to(dtype)
        if flow_spec(name).inverse == "none":
            return
        y = flow(x)
        x_back = flow.inv(y.clone()).detach()  # a new tensor: a real inverse, not the cache
        assert (x_back - x).abs().max() < round_trip * (1 + x.abs().max())
        inverse_ladj = flow.inv.log_abs_det_jacobian(y, x_back).detach()
        forward_ladj = flow.log_abs_det_jacobian(x, flow(x)).detach()
        assert (inverse_ladj + forward_ladj).abs().max() < logdet * 10

    check()


BAD_INPUTS = ["nan", "inf", "wrong dimension", "other dtype", "no points", "not a tensor"]


@pytest.mark.parametrize("name", flow_names())
def test_bad_input_raises_a_named_error_never_a_nan(name):
    @SETTINGS
    @given(case=_case(name), bad=st.sampled_from(BAD_INPUTS), inverse=st.booleans())
    def check(case, bad, inverse):
        dtype, dim = case["dtype"], case["dim"]
        flow = _build(name, dim, dtype, case["scale"], case["seed"])
        x = torch.randn(*case["batch"], dim, dtype=dtype)
        if bad == "nan":
            x[..., 0] = float("nan")
        elif bad == "inf":
            x[..., -1] = float("inf")
        elif bad == "wrong dimension":
            x = torch.randn(*case["batch"], dim + 1, dtype=dtype)
        elif bad == "other dtype":
            x = x.to(torch.float64 if dtype == torch.float32 else torch.float32)
        elif bad == "no points":
            x = torch.randn(0, dim, dtype=dtype)
        else:
            x = x.tolist()
        call = flow.inv if inverse and flow_spec(name).inverse != "none" else flow
        with pytest.raises((ValueError, TypeError)) as error:
            call(x)
        assert str(error.value)

    check()
