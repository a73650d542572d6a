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
@pytest.mark.parametrize("value", [0.0, -1e-5, float("nan")])
def test_non_positive_tolerances(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a positive number"):
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
