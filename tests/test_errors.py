"""Bad input gets a clear exception that names the problem."""

import pytest
import torch
from torch import nn

from pyro_cnf import CNF, ConditionalCNF, Hutchinson, MLPField, Solver, SolverError, cnf


class Explosive(nn.Module):
    """dz/dt = z^2 blows up at t = 1/z(0): z(0) = 2 reaches infinity at t = 0.5."""

    def forward(self, t, z):
        return z * z


def test_wrong_trailing_dimension():
    flow = cnf(2, hidden_dims=(8,))
    with pytest.raises(ValueError, match="trailing dimension 2.*shape \\(3, 4\\)"):
        flow(torch.randn(3, 4))
    with pytest.raises(ValueError, match="trailing dimension 2"):
        flow.inv(torch.randn(3))
    with pytest.raises(ValueError, match="trailing dimension 2"):
        flow(torch.tensor(1.0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input(bad):
    flow = cnf(2, hidden_dims=(8,))
    x = torch.zeros(3, 2)
    x[1, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        flow(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        flow.inv(x)
    conditional = ConditionalCNF(2, 1)
    with pytest.raises(ValueError, match="context contains NaN or inf"):
        conditional.condition(torch.tensor([bad]))


def test_blow_up_with_an_adaptive_solver_hits_max_steps():
    flow = CNF(1, field=Explosive(), solver=Solver("dopri5", max_num_steps=50))
    with pytest.raises(SolverError, match="max_num_steps=50"):
        flow(torch.full((4, 1), 2.0))


def test_blow_up_with_a_fixed_grid_solver_is_not_finite():
    flow = CNF(1, field=Explosive(), solver=Solver("rk4", steps=4))
    with pytest.raises(SolverError, match="not finite"):
        flow(torch.full((4, 1), 100.0))


def test_unknown_solver_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown ODE solver method 'dopri7'.*dopri5.*rk4"):
        Solver("dopri7")


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("value", [0.0, -1e-5, float("nan"), float("inf")])
def test_non_positive_tolerances(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a positive finite number"):
        Solver(**{name: value})


def test_other_bad_settings():
    with pytest.raises(
        ValueError, match="steps applies to fixed-grid methods|fixed-grid methods only"
    ):
        Solver("dopri5", steps=10)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        Solver("rk4", steps=0)
    with pytest.raises(ValueError, match="T must be positive"):
        CNF(2, T=0.0)
    with pytest.raises(ValueError, match="unknown regularization"):
        CNF(2, regularization=("kinetik",))
    with pytest.raises(TypeError, match="Divergence strategy"):
        CNF(2, divergence="exact")
    with pytest.raises(ValueError, match="noise must be"):
        Hutchinson("uniform")
    with pytest.raises(ValueError, match="unknown activation 'relu6'"):
        MLPField(2, activation="relu6")
    with pytest.raises(ValueError, match="input_dim must be a positive integer"):
        CNF(0)


def test_context_errors():
    flow = ConditionalCNF(2, 3)
    with pytest.raises(ValueError, match="context must have trailing dimension 3"):
        flow.condition(torch.zeros(4, 2))
    with pytest.raises(TypeError, match="context must be a torch.Tensor"):
        flow.condition([0.0, 0.0, 0.0])
    field = MLPField(2, context_dim=3)
    with pytest.raises(ValueError, match="needs a context of size 3"):
        CNF(2, field=field)(torch.zeros(1, 2))


def _realnvp_density(dtype=torch.float64):
    import pyro.distributions as dist

    from pyro_cnf import FlowDistribution, make_flow

    base = dist.Normal(torch.zeros(2, dtype=dtype), 1.0).to_event(1)
    return FlowDistribution(base, [make_flow("realnvp", 2).to(dtype)])


@pytest.mark.parametrize(
    "case",
    [
        "float64 into a float32 flow",
        "float64 into a float32 CNF",
        "float64 into a float32 anomaly detector",
        "empty batch into a CNF",
        "empty batch into a stack",
        "empty val_data",
        "empty input to an anomaly detector",
        "lr=inf",
        "rk4 with steps=True",
        "rtol below float32 resolution",
        "regularization_weight=nan",
    ],
)
def test_each_bad_input_names_its_problem(case):
    import pyro
    import pyro.distributions as dist

    from pyro_cnf import AnomalyDetector, fit_density, fit_svi, make_flow

    def model():
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    float32 = torch.randn(300, 2, dtype=torch.float32)
    calls = {
        "float64 into a float32 flow": (
            lambda: make_flow("realnvp", 2).float()(torch.randn(3, 2, dtype=torch.float64)),
            "flow input has dtype torch.float64 but the flow's parameters are torch.float32",
        ),
        "float64 into a float32 CNF": (
            lambda: cnf(2).float()(torch.randn(3, 2, dtype=torch.float64)),
            "CNF input has dtype torch.float64 but the flow's parameters are torch.float32",
        ),
        "float64 into a float32 anomaly detector": (
            lambda: AnomalyDetector(_realnvp_density(torch.float32)).score(torch.randn(5, 2)),
            "x has dtype torch.float64 but the flow's parameters are torch.float32",
        ),
        "empty batch into a CNF": (lambda: cnf(2)(torch.randn(0, 2)), "CNF input has no points"),
        "empty batch into a stack": (
            lambda: make_flow("realnvp", 2)(torch.randn(0, 2)),
            "flow input has no points",
        ),
        "empty val_data": (
            lambda: fit_density(
                make_flow("realnvp", 2), torch.randn(300, 2), val_data=torch.randn(0, 2)
            ),
            "val_data has no points",
        ),
        "empty input to an anomaly detector": (
            lambda: AnomalyDetector(_realnvp_density()).score(torch.randn(0, 2)),
            "x has no points",
        ),
        "lr=inf": (
            lambda: fit_density(make_flow("realnvp", 2), torch.randn(300, 2), lr=float("inf")),
            "lr must be a positive finite number, got inf",
        ),
        "rk4 with steps=True": (
            lambda: Solver("rk4", steps=True),
            "steps must be a positive integer, got True",
        ),
        "rtol below float32 resolution": (
            lambda: cnf(2, solver=Solver(rtol=1e-12, atol=1e-12)).float()(float32),
            "rtol=1e-12 is below the resolution of torch.float32",
        ),
        "regularization_weight=nan": (
            lambda: fit_svi(model, lambda: None, regularization_weight=float("nan")),
            "regularization_weight must be a non-negative finite number, got nan",
        ),
    }
    call, message = calls[case]
    with pytest.raises(ValueError, match=message):
        call()
