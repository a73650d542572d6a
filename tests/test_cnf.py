"""The CNF transform against exact answers and independent methods."""

import copy
import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from torch import nn

import pyro_cnf
from pyro_cnf import CNF, ConditionalCNF, Exact, Hutchinson, MLPField, Solver

TIGHT = Solver("dopri5", rtol=1e-10, atol=1e-10, max_num_steps=100_000)


def random_field(
    dim, context_dim=0, hidden=(16, 16, 16), scale=1.0, activation="tanh", gated=False
):
    """An MLPField with a nonzero output layer (and gate) (a non-trivial flow)."""
    field = MLPField(dim, hidden, activation, context_dim=context_dim, zero_init=False, gated=gated)
    with torch.no_grad():
        field.output.weight.mul_(scale)
        if gated:  # gates start at zero: make them nonzero
            field.gate.weight.normal_(0.0, 0.3)
            field.gate.bias.normal_(0.0, 0.3)
    return field


class LinearField(nn.Module):
    """f(t, z) = A z: a user field without a fused divergence; z(T) = expm(A T) z(0)."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = nn.Parameter(matrix)

    def forward(self, t, z):
        return z @ self.matrix.T


def jacobian_logdet(fn, x):
    jac = torch.autograd.functional.jacobian(fn, x)
    return torch.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dim", [2, 5])
def test_logdet_matches_autograd_jacobian_and_inverse(dim, gated):
    flow = CNF(dim, field=random_field(dim, gated=gated), solver=TIGHT)
    x = torch.randn(3, dim)
    y = flow(x)
    ladj = flow.log_abs_det_jacobian(x, y)
    for i in range(3):
        expected = jacobian_logdet(lambda v: flow._integrate(v, None, False)[0], x[i])
        assert abs(float((ladj[i] - expected).detach())) < 1e-6
    flow.clear_cache()
    x_back = flow.inv(y)
    assert (x_back - x).abs().max() < 1e-6
    # the inverse's log-det is the negative of the forward's
    inverse_ladj = flow.inv.log_abs_det_jacobian(y, x_back)
    assert (inverse_ladj + ladj).abs().max() < 1e-6


def test_linear_field_exact_solution_with_autograd_fallback():
    matrix = torch.tensor([[0.3, -1.0, 0.2], [0.8, -0.4, 0.1], [0.0, 0.5, 0.2]])
    flow = CNF(
        3, field=LinearField(matrix), T=1.5, solver=TIGHT, regularization=("kinetic", "jacobian")
    )
    x = torch.randn(4, 3)
    y = flow(x)
    propagator = torch.from_numpy(expm(1.5 * matrix.numpy()))
    assert (y - x @ propagator.T).abs().max() < 1e-8
    assert (flow.log_abs_det_jacobian(x, y) - 1.5 * matrix.trace()).abs().max() < 1e-8
    # regularization states: Jacobian Frobenius integral is T |A|_F^2 exactly; kinetic energy by
    # Gauss-Legendre quadrature of 1/2 |A expm(A t) x|^2 over [0, T]
    terms = flow.regularization_terms
    assert torch.allclose(terms["jacobian"], torch.full((4,), 1.5 * float(matrix.pow(2).sum())))
    nodes, weights = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(40))
    times, weights = 0.75 * (nodes + 1), 0.75 * weights
    kinetic = sum(
        w
        * 0.5
        * (x @ (matrix @ torch.from_numpy(expm(float(t) * matrix.numpy()))).T).pow(2).sum(-1)
        for t, w in zip(times, weights, strict=True)
    )
    assert torch.allclose(terms["kinetic"], kinetic, rtol=1e-7)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("hidden", [(7,), (7, 6), (7, 6, 5), (5, 6, 7, 8)])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "silu", "sigmoid", "elu"])
def test_fused_divergence_equals_autograd_trace(hidden, activation, gated):
    field = random_field(4, context_dim=2, hidden=hidden, activation=activation, gated=gated)
    z, context, t = torch.randn(6, 4), torch.randn(6, 2), torch.tensor(0.37)
    f, div, frob = field.call_and_divergence(t, z, context, frobenius=True)
    _, div_trace_only, _ = field.call_and_divergence(t, z, context)
    jac = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v, c=context[b]: field(t, v, c), z[b])
            for b in range(6)
        ]
    )
    assert torch.allclose(f, field(t, z, context), atol=1e-14)
    exact = jac.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert (div - exact).abs().max() < 1e-12
    assert (div_trace_only - exact).abs().max() < 1e-12
    assert (frob - jac.pow(2).sum((-2, -1))).abs().max() < 1e-12
    _, div_loop, frob_loop = Exact(fused=False)(field, t, z, context, None, frobenius=True)
    assert (div_loop - exact).abs().max() < 1e-12
    assert (frob_loop - frob).abs().max() < 1e-12


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_mean_converges_to_exact_trace(noise):
    field = random_field(5, scale=3.0)
    z = torch.randn(3, 5).repeat(20_000, 1)  # every point probed 20 000 times
    t = torch.tensor(0.2)
    estimator = Hutchinson(noise)
    _, estimates, _ = estimator(field, t, z, None, estimator.init(z))
    estimates = estimates.view(20_000, 3)
    _, exact, _ = field.call_and_divergence(t, z[:3])
    standard_error = estimates.std(0) / math.sqrt(20_000)
    # a falsifiable check: each mean within 4 standard errors, and the noise is real
    assert ((estimates.mean(0) - exact).abs() < 4 * standard_error).all()
    assert (standard_error > 0).all()


def test_hutchinson_noise_is_fixed_within_a_solve():
    # with a linear field, eps^T A eps is constant in t, so one solve integrates it exactly:
    # the log-det is T * eps^T A eps for the probe drawn for that solve
    matrix = torch.randn(3, 3)
    flow = CNF(3, field=LinearField(matrix), divergence=Hutchinson("rademacher"), solver=TIGHT)
    x = torch.randn(200, 3)
    with torch.no_grad():
        ladj = flow.log_abs_det_jacobian(x, flow(x))
    quadratic_forms = {round(float(v), 8) for v in ladj}
    expected = {
        round(float(torch.tensor(s) @ matrix @ torch.tensor(s)), 8)
        for s in [(a, b, c) for a in (-1.0, 1.0) for b in (-1.0, 1.0) for c in (-1.0, 1.0)]
    }
    assert quadratic_forms <= expected
    assert len(quadratic_forms) > 1  # different samples got different probes


def test_direct_and_adjoint_gradients_agree():
    field = random_field(3, hidden=(8, 8, 8))
    x = torch.randn(5, 3)
    grads = []
    for adjoint in (False, True):
        solver = Solver(rtol=1e-9, atol=1e-9, adjoint=adjoint)
        flow = CNF(3, field=copy.deepcopy(field), solver=solver)
        xr = x.clone().requires_grad_()
        y = flow(xr)
        loss = y.sin().sum() + flow.log_abs_det_jacobian(xr, y).pow(2).sum()
        loss.backward()
        grads.append([xr.grad] + [p.grad for p in flow.parameters()])
        if adjoint:
            assert flow.stats.nfe_backward > 0
        else:
            assert flow.stats.nfe_backward == 0
    # both are gradients of a solve at rtol = atol = 1e-9: they agree to that order
    for direct, adjoint in zip(*grads, strict=True):
        assert (direct - adjoint).abs().max() < 1e-7 * (1 + direct.abs().max())


@pytest.mark.parametrize("adjoint", [False, True])
def test_gradcheck(adjoint):
    """Both gradient paths against finite differences for the input and the context; the direct
    path also for a weight (the adjoint's parameter gradients are checked against the direct ones
    above: it only sees registered parameters, which a reparametrized weight is not)."""
    field = random_field(2, context_dim=1, hidden=(3, 3))
    # fixed steps: the direct gradient is exactly that of the discrete map; the adjoint's differs
    # from it by the O(h^4) discretisation error (~1e-7 here)
    flow = ConditionalCNF(2, 1, field=field, solver=Solver("rk4", steps=32, adjoint=adjoint))

    def fn(x, weight, context):
        transform = flow.condition(context)
        with torch.nn.utils.stateless._reparametrize_module(flow, {"field.output.weight": weight}):
            y = transform(x)
            return y, transform.log_abs_det_jacobian(x, y)

    x = torch.randn(2, 2, requires_grad=True)
    weight = field.output.weight.detach().clone().requires_grad_(not adjoint)
    context = torch.randn(2, 1, requires_grad=True)
    tolerance = 1e-5 if adjoint else 1e-7
    assert torch.autograd.gradcheck(fn, (x, weight, context), atol=tolerance, rtol=tolerance)


def grid_mass(log_prob, half_width=7.0, n=160):
    edges = torch.linspace(-half_width, half_width, n + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    xx, yy = torch.meshgrid(centers, centers, indexing="ij")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    with torch.no_grad():
        density = log_prob(points).exp()
    return float(density.sum() * (edges[1] - edges[0]) ** 2), density


def test_density_integrates_to_one_on_a_grid():
    import pyro.distributions as dist

    flow = CNF(
        2, field=random_field(2, hidden=(32, 32), scale=2.0), solver=Solver(rtol=1e-7, atol=1e-7)
    )
    q = pyro_cnf.FlowDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
    mass, density = grid_mass(q.log_prob)
    gaussian_mass, gaussian = grid_mass(dist.Normal(torch.zeros(2), 1.0).to_event(1).log_prob)
    assert abs(mass - 1) < 1e-3
    assert (density - gaussian).abs().max() > 0.02  # the flow really moved mass


def test_conditional_density_integrates_to_one_at_two_contexts():
    import pyro.distributions as dist

    field = random_field(2, context_dim=1, hidden=(32, 32), scale=2.0)
    flow = ConditionalCNF(2, 1, field=field, solver=Solver(rtol=1e-7, atol=1e-7))
    p = pyro_cnf.ConditionalFlowDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
    densities = []
    for c in (-1.5, 1.5):
        mass, density = grid_mass(p.condition(torch.tensor([c])).log_prob)
        assert abs(mass - 1) < 1e-3
        densities.append(density)
    assert (densities[0] - densities[1]).abs().max() > 0.02


def test_conditional_context_broadcasts_and_matches_pointwise():
    field = random_field(2, context_dim=3)
    flow = ConditionalCNF(2, 3, field=field, solver=TIGHT)
    x, context = torch.randn(4, 2), torch.randn(4, 3)
    transform = flow.condition(context)
    y = transform(x)
    ladj = transform.log_abs_det_jacobian(x, y)
    for i in range(4):
        single = flow.condition(context[i])
        yi = single(x[i])
        assert torch.allclose(yi, y[i], atol=1e-8)
        assert torch.allclose(single.log_abs_det_jacobian(x[i], yi), ladj[i], atol=1e-8)
    # one context for a batch of points, and a batch of contexts for one point
    assert flow.condition(context[0])(x).shape == (4, 2)
    assert flow.condition(context)(x[0]).shape == (4, 2)


def test_training_and_eval_solvers():
    flow = CNF(2, field=random_field(2), solver=Solver("rk4", steps=4), eval_solver=TIGHT)
    x = torch.randn(10, 2)
    flow(x)
    assert flow.stats.last_nfe == 16  # 4 rk4 steps of 4 stages
    flow.eval()
    flow.clear_cache()
    flow(x)
    assert flow.stats.last_nfe > 16
    assert flow.active_solver is flow.eval_solver


def test_new_flow_is_identity_and_batch_shapes():
    flow = pyro_cnf.cnf(3, hidden_dims=(8, 8))
    x = torch.randn(2, 4, 3)
    y = flow(x)
    assert torch.allclose(y, x)
    assert flow.log_abs_det_jacobian(x, y).shape == (2, 4)
    assert flow.forward_shape(x.shape) == x.shape


def test_state_dict_round_trip(tmp_path):
    flow = CNF(2, field=random_field(2), solver=TIGHT)
    torch.save(flow.state_dict(), tmp_path / "flow.pt")
    other = CNF(2, field=random_field(2), solver=TIGHT)
    other.load_state_dict(torch.load(tmp_path / "flow.pt", weights_only=True))
    x = torch.randn(5, 2)
    assert torch.equal(flow(x), other(x))
