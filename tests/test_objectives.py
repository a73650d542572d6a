"""InclusiveKL against exact answers: its value, its gradient, and where it converges."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

from pyro_cnf import AutoCNF, Exact, Hutchinson, InclusiveKL, Solver, fit_svi

RHO = 0.9


def mean():
    return torch.tensor([1.0, -0.5])


def correlated():
    """A 2-D Gaussian 'posterior' N(mean, [[1, rho], [rho, 1]]) with log Z = 0."""
    pyro.sample("x", dist.MultivariateNormal(mean(), torch.tensor([[1.0, RHO], [RHO, 1.0]])))


def conjugate():
    """x ~ N(0, 1), y | x ~ N(x, 1), y = 1: posterior N(1/2, 1/2), log Z = log N(1; 0, 2)."""
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(1.0))


def test_value_is_minus_log_evidence_for_the_exact_posterior():
    guide = AutoDiagonalNormal(conjugate, init_scale=0.3)
    guide()
    with torch.no_grad():
        guide.loc.fill_(0.5)
        guide.scale = torch.full((1,), math.sqrt(0.5))
    log_z = float(dist.Normal(0.0, math.sqrt(2.0)).log_prob(torch.tensor(1.0)))
    objective = InclusiveKL(num_particles=16)
    # every weight is Z, so the bound is exact for any draw, and the surrogate carries it
    assert objective.loss(conjugate, guide) == pytest.approx(-log_z, abs=1e-12)
    value = objective.differentiable_loss(conjugate, guide)
    assert float(value.detach()) == pytest.approx(-log_z, abs=1e-12)
    # so is the ELBO (log w is constant): the mixed objective reports -log Z as well
    mixed = InclusiveKL(num_particles=16, reverse_weight=0.3)
    assert mixed.loss(conjugate, guide) == pytest.approx(-log_z, abs=1e-12)
    assert float(mixed.differentiable_loss(conjugate, guide).detach()) == pytest.approx(
        -log_z, abs=1e-12
    )


def test_gradient_matches_the_exact_inclusive_kl_gradient():
    """For Gaussian p and q, d KL(p||q) / d loc = -Sigma_q^{-1} (m_p - loc)."""
    guide = AutoDiagonalNormal(correlated, init_scale=1.0)
    guide()
    with torch.no_grad():
        guide.loc.copy_(torch.tensor([0.4, 0.3]))
        guide.scale = torch.tensor([1.3, 1.1])
    objective = InclusiveKL(num_particles=200_000)
    value = objective.differentiable_loss(correlated, guide)
    (grad,) = torch.autograd.grad(value, [guide.loc])
    scale = guide.scale.detach()
    exact = -(mean() - guide.loc.detach()) / scale**2
    assert torch.allclose(grad, exact, atol=0.03), (grad, exact)


def test_converges_to_moment_matching_where_the_elbo_does_not():
    """A diagonal guide of a correlated Gaussian: KL(p||q) matches the marginal sds (1),
    KL(q||p) shrinks them to sqrt(1 - rho^2)."""
    sds = {}
    for name, loss in (
        ("inclusive", InclusiveKL(num_particles=256)),
        ("elbo", Trace_ELBO(num_particles=64, vectorize_particles=True)),
    ):
        pyro.clear_param_store()
        guide = AutoDiagonalNormal(correlated, init_scale=0.5)
        fit_svi(
            correlated,
            guide,
            num_steps=600,
            optimizer=pyro.optim.Adam({"lr": 0.02}),
            loss=loss,
            progress=False,
            seed=0,
        )
        sds[name] = guide.scale.detach()
        assert torch.allclose(guide.loc.detach(), mean(), atol=0.1), (name, guide.loc)
    assert torch.allclose(sds["inclusive"], torch.ones(2), atol=0.08), sds
    assert torch.allclose(sds["elbo"], torch.full((2,), math.sqrt(1 - RHO**2)), atol=0.05), sds


def test_reverse_weight_mixes_the_two_gradients():
    guide = AutoMultivariateNormal(correlated, init_scale=0.7)
    guide()
    params = [guide.loc]

    def grad(objective, seed):
        pyro.set_rng_seed(seed)
        (g,) = torch.autograd.grad(objective.differentiable_loss(correlated, guide), params)
        return g

    # same seed: the ELBO term draws after the inclusive term, as in the mixed objective
    pyro.set_rng_seed(3)
    inclusive = InclusiveKL(num_particles=32, max_plate_nesting=0)
    elbo = Trace_ELBO(num_particles=32, vectorize_particles=True, max_plate_nesting=0)
    g_inc = torch.autograd.grad(inclusive.differentiable_loss(correlated, guide), params)[0]
    g_elbo = torch.autograd.grad(elbo.differentiable_loss(correlated, guide), params)[0]
    mixed = InclusiveKL(num_particles=32, max_plate_nesting=0, reverse_weight=0.25)
    assert torch.allclose(grad(mixed, 3), 0.75 * g_inc + 0.25 * g_elbo, atol=1e-10)


def test_autocnf_log_q_at_fixed_draws_reaches_the_flow():
    """The gradient reaches the CNF's field through the inverse solve, and the objective
    lowers KL(p||q) on a shifted, stretched target."""

    def target():
        pyro.sample(
            "x", dist.Normal(torch.tensor([2.0, -1.0]), torch.tensor([0.5, 2.0])).to_event(1)
        )

    guide = AutoCNF(target, hidden_dims=(16,), init_scale=1.0, solver=Solver("rk4", steps=4))
    guide()
    objective = InclusiveKL(num_particles=64)
    value = objective.differentiable_loss(target, guide)
    grads = torch.autograd.grad(value, [p for p in guide.parameters() if p.requires_grad])
    assert all(torch.isfinite(g).all() for g in grads)
    field_grad = torch.autograd.grad(
        objective.differentiable_loss(target, guide), [guide.flow.field.output.weight]
    )[0]
    assert field_grad.abs().sum() > 0
    fit_svi(
        target,
        guide,
        num_steps=150,
        optimizer=pyro.optim.Adam({"lr": 0.03}),
        loss=objective,
        progress=False,
        seed=0,
    )
    with torch.no_grad():
        draws = guide.get_posterior().sample((20_000,))
    sd = torch.tensor([0.5, 2.0])
    assert ((draws.mean(0) - torch.tensor([2.0, -1.0])).abs() < 0.15 * sd).all(), draws.mean(0)
    assert torch.allclose(draws.std(0), sd, rtol=0.1), draws.std(0)


def test_bad_arguments_and_guides_are_named():
    with pytest.raises(ValueError, match="num_particles"):
        InclusiveKL(num_particles=1)
    with pytest.raises(ValueError, match="reverse_weight"):
        InclusiveKL(reverse_weight=1.0)
    guide = AutoNormal(conjugate)
    with pytest.raises(TypeError, match="AutoContinuous"):
        InclusiveKL(num_particles=4).loss(conjugate, guide)


def test_weights_use_the_exact_trace_of_a_hutchinson_trained_cnf():
    def target():
        pyro.sample("x", dist.Normal(torch.zeros(3), 2.0).to_event(1))

    guide = AutoCNF(
        target, hidden_dims=(8,), divergence=Hutchinson(), solver=Solver("rk4", steps=4)
    )
    guide()
    with torch.no_grad():  # a non-trivial flow
        for p in guide.flow.field.parameters():
            p.normal_(0.0, 0.5)
    objective = InclusiveKL(num_particles=8, max_plate_nesting=1)  # no guessing: same draws
    values = []
    for divergence in (Hutchinson(), Exact()):
        guide.flow.divergence = divergence
        pyro.set_rng_seed(1)
        values.append(objective.loss(target, guide))
    assert values[0] == pytest.approx(values[1], abs=1e-12)
    assert isinstance(guide.flow.divergence, Exact)  # put back as it was
    guide.flow.divergence = Hutchinson()
    objective.loss(target, guide)
    assert isinstance(guide.flow.divergence, Hutchinson)
