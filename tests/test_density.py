"""Density estimation: flow matching, maximum likelihood, toy densities, against exact answers."""

import itertools
import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_cnf import (
    CNF,
    ConditionalCNF,
    FitError,
    FlowDistribution,
    MLPField,
    Solver,
    cnf,
    eight_gaussians,
    fit_density,
    fit_flow_matching,
    flow_names,
    flow_spec,
    gaussian_mixture,
    make_flow,
    ot_coupling,
    reflow,
    reflow_pairs,
)

TIGHT = Solver("dopri5", rtol=1e-8, atol=1e-8)


def standard_normal(dim):
    return dist.Normal(torch.zeros(dim), 1.0).to_event(1)


class GaussianPathField(nn.Module):
    r"""``theta`` times the exact marginal velocity of the straight path N(0, I) -> N(m, diag(sigma^2)).

    With independent coupling, x_t = (1 - s) x0 + s x1, s = t / T, coordinates are independent and
    E[x1 - x0 | x_t = x] = m + (s sigma^2 - (1 - s)) / ((1 - s)^2 + s^2 sigma^2) (x - s m), divided by
    T for the velocity in t. Its flow carries N(0, I) at t = 0 to N(m, sigma^2) at t = T. With a
    context c (shape (..., 1)) the mean is c * m.
    """

    def __init__(self, m, sigma, T, theta=1.0):
        super().__init__()
        self.m, self.sigma, self.T = m, sigma, T
        self.theta = nn.Parameter(torch.tensor(float(theta)))

    def forward(self, t, z, context=None):
        s = t / self.T
        m = self.m if context is None else context * self.m
        var = (1 - s) ** 2 + s**2 * self.sigma**2
        coef = (s * self.sigma**2 - (1 - s)) / var
        return self.theta * (m + coef * (z - s * m)) / self.T


# ---------------------------------------------------------------------------------------------
# Toy densities
# ---------------------------------------------------------------------------------------------


def test_eight_gaussians_log_prob_is_the_closed_form_mixture():
    p = eight_gaussians(radius=4.0, scale=0.5)
    x = 5 * torch.randn(100, 2)
    angles = torch.arange(8) * math.pi / 4
    means = 4.0 * torch.stack([angles.cos(), angles.sin()], -1)
    squared = (x.unsqueeze(1) - means).pow(2).sum(-1)  # (100, 8)
    log_components = -squared / (2 * 0.25) - math.log(2 * math.pi * 0.25)
    expected = torch.logsumexp(log_components, -1) - math.log(8)
    assert torch.allclose(p.log_prob(x), expected, atol=1e-12)
    draws = p.sample((40_000,))
    assert draws.norm(dim=-1).mean() == pytest.approx(4.0, abs=0.05)  # E|x| ~ r for r >> s


def test_gaussian_mixture_is_fixed_by_its_seed_and_normalised():
    p, q = gaussian_mixture(3, seed=1), gaussian_mixture(3, seed=1)
    assert torch.equal(p.component_distribution.mean, q.component_distribution.mean)
    assert not torch.equal(
        p.component_distribution.mean, gaussian_mixture(3, seed=2).component_distribution.mean
    )
    # importance estimate of the normalising constant with a wide Gaussian proposal
    proposal = dist.Normal(torch.zeros(3), 6.0).to_event(1)
    x = proposal.sample((200_000,))
    log_z = torch.logsumexp(p.log_prob(x) - proposal.log_prob(x), 0) - math.log(len(x))
    assert float(log_z) == pytest.approx(0.0, abs=0.02)


@pytest.mark.parametrize("bad", [{"radius": 0.0}, {"scale": -1.0}, {"radius": "4"}])
def test_eight_gaussians_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="must be a positive number"):
        eight_gaussians(**bad)


# ---------------------------------------------------------------------------------------------
# Flow matching: the time convention matches the CNF transform
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_the_exact_path_velocity_is_scored_exactly_by_the_cnf(T):
    m, sigma = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    flow = CNF(2, field=GaussianPathField(m, sigma, T), T=T, eval_solver=TIGHT).eval()
    q = FlowDistribution(standard_normal(2), [flow])
    x = m + sigma * torch.randn(50, 2)
    exact = dist.Normal(m, sigma).to_event(1).log_prob(x)
    assert torch.allclose(q.log_prob(x), exact, atol=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_flow_matching_converges_to_the_exact_velocity(T):
    """FM's minimiser over theta * v_exact is theta = 1 only if its time convention is the CNF's."""
    m, sigma = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    field = GaussianPathField(m, sigma, T, theta=0.3)
    flow = CNF(2, field=field, T=T)
    data = m + sigma * torch.randn(20_000, 2)
    result = fit_flow_matching(
        flow, data, num_steps=300, lr=0.05, ema_decay=None, progress=False, seed=0
    )
    assert float(field.theta.detach()) == pytest.approx(1.0, abs=0.03)
    assert result.num_steps == 300 and len(result.losses) == 300


def test_time_reversed_convention_would_not_converge_to_the_exact_velocity():
    """The same fit on data -> base pairs (the opposite convention) lands far from theta = 1."""
    m, sigma = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    field = GaussianPathField(m, sigma, 1.0, theta=0.3)
    data = m + sigma * torch.randn(20_000, 2)
    noise = torch.randn(20_000, 2)
    fit_flow_matching(
        CNF(2, field=field),
        noise,
        source=data,
        num_steps=300,
        lr=0.05,
        ema_decay=None,
        progress=False,
    )
    assert abs(float(field.theta.detach()) - 1.0) > 0.3


def test_conditional_flow_matching_uses_the_context():
    m, sigma = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    field = GaussianPathField(m, sigma, 1.0, theta=0.3)
    flow = ConditionalCNF(2, 1, field=field, eval_solver=TIGHT)
    c = 2 * torch.rand(20_000, 1) - 1
    data = c * m + sigma * torch.randn(20_000, 2)
    result = fit_flow_matching(
        flow, data, context=c, num_steps=300, lr=0.05, ema_decay=None, progress=False, seed=0
    )
    assert float(field.theta.detach()) == pytest.approx(1.0, abs=0.03)
    # at theta = 1 the conditional CNF scores the exact conditional density at any context
    with torch.no_grad():
        field.theta.fill_(1.0)
    context = torch.tensor([[0.7]])
    x = 0.7 * m + sigma * torch.randn(20, 2)
    with torch.no_grad():
        fitted = result.distribution.condition(context).log_prob(x)
    exact = dist.Normal(0.7 * m, sigma).to_event(1).log_prob(x)
    assert torch.allclose(fitted, exact, atol=1e-6)


def test_an_mlp_field_fitted_by_flow_matching_is_scored_near_the_exact_density():
    """Deterministic pairs x1 = A x0 + b: noiseless regression; the CNF then maps N(0, I) to N(b, AA^T)."""
    A = torch.tensor([[1.5, 0.3], [0.3, 0.6]])
    b = torch.tensor([1.0, -2.0])
    x0 = torch.randn(4096, 2)
    flow = cnf(2, hidden_dims=(32, 32), eval_solver=Solver("dopri5", rtol=1e-6, atol=1e-6))
    result = fit_flow_matching(
        flow,
        x0 @ A.T + b,
        source=x0,
        num_steps=600,
        lr=3e-3,
        ema_decay=None,
        progress=False,
        seed=0,
    )
    z = torch.randn(500, 2)
    z = z[z.norm(dim=-1) < 2]  # where the pairs are dense
    x = z @ A.T + b
    exact = dist.MultivariateNormal(b, A @ A.T).log_prob(x)
    with torch.no_grad():
        fitted = result.distribution.log_prob(x)
    assert float((fitted - exact).abs().mean()) < 0.05


@pytest.mark.slow
def test_flow_matching_on_eight_gaussians_reaches_a_small_kl():
    p = eight_gaussians()
    data = p.sample((20_000,))
    field = MLPField(2, (64, 64, 64), "silu")
    flow = CNF(2, field=field, eval_solver=Solver("dopri5", rtol=1e-5, atol=1e-5, norm="max"))
    result = fit_flow_matching(flow, data, num_steps=1500, lr=3e-3, progress=False, seed=0)
    x = p.sample((5000,))
    with torch.no_grad():
        gaps = p.log_prob(x) - result.distribution.log_prob(x)
    kl, se = float(gaps.mean()), float(gaps.std() / math.sqrt(len(gaps)))
    assert kl < 0.1, (kl, se)


# ---------------------------------------------------------------------------------------------
# OT coupling and reflow
# ---------------------------------------------------------------------------------------------


def test_ot_coupling_is_the_exact_assignment():
    x0, x1 = torch.randn(6, 2), torch.randn(6, 2)
    perm = ot_coupling(x0, x1)
    cost = float((x0 - x1[perm]).pow(2).sum())
    brute = min(float((x0 - x1[list(p)]).pow(2).sum()) for p in itertools.permutations(range(6)))
    assert sorted(perm.tolist()) == list(range(6))
    assert cost == pytest.approx(brute, rel=1e-12)


def test_ot_flow_matching_converges_to_a_valid_density():
    """OT pairs make the velocity nearly a function of x_t: the loss falls far below independent pairs'."""
    m, sigma = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    data = m + sigma * torch.randn(8192, 2)
    losses = {}
    for coupling in ("independent", "ot"):
        flow = cnf(2, hidden_dims=(32, 32))
        result = fit_flow_matching(
            flow,
            data,
            coupling=coupling,
            num_steps=150,
            batch_size=64,
            lr=3e-3,
            progress=False,
            seed=0,
        )
        losses[coupling] = sum(result.losses[-50:]) / 50
    assert losses["ot"] < 0.5 * losses["independent"]


def test_reflow_pairs_are_base_draws_and_their_images():
    flow = CNF(2, field=MLPField(2, (16,), zero_init=False), eval_solver=TIGHT)
    x0, x1 = reflow_pairs(flow, 64)
    assert x0.shape == x1.shape == (64, 2)
    with torch.no_grad():
        assert torch.allclose(flow.eval()(x0), x1, atol=1e-6)
    assert abs(float(x0.mean())) < 0.5  # N(0, I) draws


class StraightAffineField(nn.Module):
    """``theta`` times the velocity of the straight constant-speed paths x0 -> m + sigma x0."""

    def __init__(self, m, sigma, theta=1.0):
        super().__init__()
        self.m, self.sigma = m, sigma
        self.theta = nn.Parameter(torch.tensor(float(theta)))

    def forward(self, t, z, context=None):
        # x_t = s m + ((1 - s) + s sigma) x0, velocity m + (sigma - 1) x0
        x0 = (z - t * self.m) / ((1 - t) + t * self.sigma)
        return self.theta * (self.m + (self.sigma - 1) * x0)


def test_reflow_keeps_straight_paths_and_changes_curved_ones():
    """Straight paths are a fixed point of reflow and need fewer solver steps than curved ones."""
    m, sigma = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    straight = StraightAffineField(m, sigma)
    curved = GaussianPathField(m, sigma, 1.0)  # same end map, non-constant speed along paths
    nfe = {}
    for name, field in (("straight", straight), ("curved", curved)):
        flow = CNF(2, field=field, eval_solver=Solver("dopri5", rtol=1e-6, atol=1e-6))
        x0, x1 = reflow_pairs(flow, 256)
        assert torch.allclose(x1, m + sigma * x0, atol=1e-4)  # both map x0 to m + sigma x0
        nfe[name] = flow.stats.nfe_forward
        reflow(flow, 2048, num_steps=100, lr=0.01, ema_decay=None, progress=False, seed=0)
    assert float(straight.theta.detach()) == pytest.approx(1.0, abs=1e-3)
    assert float(curved.theta.detach()) < 0.9  # a curved field cannot fit straight pairs
    assert nfe["straight"] < nfe["curved"]


# ---------------------------------------------------------------------------------------------
# Maximum likelihood
# ---------------------------------------------------------------------------------------------


def test_fit_density_of_a_maf_reaches_the_exact_validation_nll():
    m, sigma = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])
    data, val = m + sigma * torch.randn(2048, 2), m + sigma * torch.randn(4096, 2)
    result = fit_density(
        make_flow("maf", 2),
        data,
        val_data=val,
        num_steps=100,
        lr=1e-2,
        eval_every=10,
        progress=False,
        seed=0,
    )
    exact = -float(dist.Normal(m, sigma).to_event(1).log_prob(val).mean())  # NLL of p itself
    assert result.val_nll[0] > exact + 0.2  # far after 10 steps ...
    assert result.best_val_nll == pytest.approx(exact, abs=0.01)  # ... close after 100
    assert result.val_steps == list(range(10, 101, 10))
    assert all(
        a < b for a, b in zip(result.val_train_time, result.val_train_time[1:], strict=False)
    )


# householder is left out: rotations map N(0, I) to itself, so it cannot fit any other density
FITTABLE = [
    n
    for n in flow_names()
    if flow_spec(n).inverse == "exact" and flow_spec(n).min_dim <= 2 and n != "householder"
]


@pytest.mark.parametrize("name", FITTABLE)
def test_every_registry_flow_with_an_exact_inverse_fits_by_maximum_likelihood(name):
    m, sigma = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])
    data = m + sigma * torch.randn(512, 2)
    val = m + sigma * torch.randn(512, 2)
    kwargs = {"solver": Solver("rk4", steps=4)} if name in ("cnf", "hybrid") else {}
    flow = make_flow(name, 2, **kwargs)
    with torch.no_grad():
        before = -float(FlowDistribution(standard_normal(2), [flow]).log_prob(val).mean())
    result = fit_density(
        flow, data, val_data=val, num_steps=30, lr=1e-2, eval_every=30, progress=False, seed=0
    )
    assert result.best_val_nll < before - 0.1, (before, result.best_val_nll)


def test_early_stopping_restores_the_best_parameters():
    """Val data N(0, I) is fitted best by the initial (identity) flow; training on N(3, I) only hurts."""
    flow = make_flow("realnvp", 2)
    data, val = 3.0 + torch.randn(1024, 2), torch.randn(512, 2)
    result = fit_density(
        flow,
        data,
        val_data=val,
        num_steps=500,
        lr=1e-2,
        eval_every=10,
        patience=3,
        progress=False,
        seed=0,
    )
    assert result.stopped_early
    assert result.num_steps == 40 and result.best_step == 10
    with torch.no_grad():
        nll = -float(result.distribution.log_prob(val).mean())
    assert nll == pytest.approx(result.best_val_nll, abs=1e-12)
    assert result.val_nll[-1] > result.best_val_nll


def test_rnode_regularization_shrinks_the_kinetic_energy():
    data = torch.tensor([2.0, -1.0]) + torch.tensor([0.5, 1.5]) * torch.randn(1024, 2)
    kinetic = {}
    for weight in (0.0, 1.0):
        flow = cnf(
            2,
            hidden_dims=(16, 16),
            solver=Solver("rk4", steps=4),
            regularization=("kinetic", "jacobian"),
        )
        fit_density(
            flow,
            data,
            num_steps=30,
            batch_size=128,
            lr=2e-2,
            regularization_weight=weight,
            progress=False,
            seed=0,
        )
        with torch.no_grad():
            flow.inv(data[:256])
        kinetic[weight] = float(flow.regularization_terms["kinetic"].mean())
    assert kinetic[1.0] < 0.7 * kinetic[0.0]


def test_fit_density_of_a_conditional_flow():
    c = 2 * torch.rand(4096, 1) - 1
    m, sigma = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    data = c * m + sigma * torch.randn(4096, 2)
    result = fit_density(
        make_flow("maf", 2, context_dim=1),
        data,
        context=c,
        num_steps=300,
        lr=1e-2,
        progress=False,
        seed=0,
    )
    c_test = 2 * torch.rand(4096, 1) - 1
    x = c_test * m + sigma * torch.randn(4096, 2)
    with torch.no_grad():
        fitted = result.distribution.condition(c_test).log_prob(x)
    kl = float((dist.Normal(c_test * m, sigma).to_event(1).log_prob(x) - fitted).mean())
    assert 0.0 < kl + 0.02 and kl < 0.08


def test_ema_keeps_the_average_of_the_parameters():
    """With ema_decay and no validation the flow ends with the averaged parameters."""
    m, sigma = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    field = GaussianPathField(m, sigma, 1.0, theta=0.0)
    data = m + sigma * torch.randn(4096, 2)
    thetas = []
    fit_flow_matching(
        CNF(2, field=field),
        data,
        num_steps=40,
        lr=0.05,
        ema_decay=0.9,
        progress=False,
        callback=lambda r: thetas.append(float(field.theta.detach())),
    )
    expected = 0.0  # the average starts at the initial parameters
    for theta in thetas:
        expected = 0.9 * expected + 0.1 * theta
    assert float(field.theta.detach()) == pytest.approx(expected, abs=1e-12)


def test_callback_can_stop_training():
    result = fit_density(
        make_flow("maf", 2),
        torch.randn(256, 2),
        num_steps=100,
        progress=False,
        callback=lambda r: r.num_steps >= 7,
    )
    assert result.num_steps == 7


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fit", [fit_density, fit_flow_matching])
def test_nan_rows_are_named(fit):
    data = torch.randn(300, 2)
    data[17, 1] = float("nan")
    data[250, 0] = float("inf")
    with pytest.raises(
        ValueError, match=r"data has NaN or inf in rows \[17, 250\] \(of 300 rows\)"
    ):
        fit(cnf(2), data, progress=False)
    val = torch.randn(50, 2)
    val[3] = float("nan")
    with pytest.raises(ValueError, match=r"val_data has NaN or inf in row \[3\]"):
        fit(cnf(2), torch.randn(300, 2), val_data=val, progress=False)


@pytest.mark.parametrize("fit", [fit_density, fit_flow_matching])
def test_wrong_dimension(fit):
    with pytest.raises(
        ValueError,
        match=r"data has dimension 3 \(shape \(300, 3\)\) but the flow's input dimension is 2",
    ):
        fit(cnf(2), torch.randn(300, 3), progress=False)
    with pytest.raises(
        ValueError,
        match=r"data must be a 2-D tensor of shape \(num_points, 2\), got shape \(300,\)",
    ):
        fit(cnf(2), torch.randn(300), progress=False)
    with pytest.raises(ValueError, match="val_data has dimension 1"):
        fit(cnf(2), torch.randn(300, 2), val_data=torch.randn(10, 1), progress=False)


@pytest.mark.parametrize("fit", [fit_density, fit_flow_matching])
def test_fewer_points_than_the_batch_size(fit):
    with pytest.raises(ValueError, match="data has 100 points, fewer than batch_size=256"):
        fit(cnf(2), torch.randn(100, 2), progress=False)


@pytest.mark.parametrize("fit", [fit_density, fit_flow_matching])
def test_context_missing_for_a_conditional_flow(fit):
    flow = make_flow("cnf", 2, context_dim=3)
    with pytest.raises(
        ValueError, match="the flow is conditional: pass context= with one context row of size 3"
    ):
        fit(flow, torch.randn(300, 2), progress=False)
    with pytest.raises(ValueError, match="pass val_context="):
        fit(
            flow,
            torch.randn(300, 2),
            context=torch.randn(300, 3),
            val_data=torch.randn(9, 2),
            progress=False,
        )
    with pytest.raises(ValueError, match="context has 299 rows but data has 300"):
        fit(flow, torch.randn(300, 2), context=torch.randn(299, 3), progress=False)
    with pytest.raises(ValueError, match="context has dimension 2 but the flow's context_dim is 3"):
        fit(flow, torch.randn(300, 2), context=torch.randn(300, 2), progress=False)
    with pytest.raises(ValueError, match=r"context has NaN or inf in row \[5\]"):
        context = torch.randn(300, 3)
        context[5, 0] = float("nan")
        fit(flow, torch.randn(300, 2), context=context, progress=False)
    with pytest.raises(ValueError, match="context was given but the flow is not conditional"):
        fit(cnf(2), torch.randn(300, 2), context=torch.randn(300, 3), progress=False)


def test_flow_matching_refuses_what_it_cannot_do():
    with pytest.raises(TypeError, match="flow matching trains the vector field of a CNF"):
        fit_flow_matching(make_flow("maf", 2), torch.randn(300, 2), progress=False)
    with pytest.raises(ValueError, match="coupling must be one of"):
        fit_flow_matching(cnf(2), torch.randn(300, 2), coupling="sinkhorn", progress=False)
    with pytest.raises(
        ValueError, match="coupling='ot' pairs base and data points across contexts"
    ):
        fit_flow_matching(
            make_flow("cnf", 2, context_dim=1),
            torch.randn(300, 2),
            context=torch.randn(300, 1),
            coupling="ot",
            progress=False,
        )
    with pytest.raises(ValueError, match="source has 299 rows but data has 300"):
        fit_flow_matching(cnf(2), torch.randn(300, 2), source=torch.randn(299, 2), progress=False)
    with pytest.raises(ValueError, match="the flow is conditional: pass context="):
        reflow_pairs(make_flow("cnf", 2, context_dim=1), 10)


def test_fit_density_refuses_flows_without_a_differentiable_inverse():
    with pytest.raises(ValueError, match="cannot score data points"):
        fit_density(make_flow("sylvester", 2), torch.randn(300, 2), progress=False)
    with pytest.raises(ValueError, match="inverts by bisection"):
        fit_density(make_flow("naf", 2), torch.randn(300, 2), progress=False)
    with pytest.raises(ValueError, match="no CNF with regularization terms"):
        fit_density(cnf(2), torch.randn(300, 2), regularization_weight=0.1, progress=False)
    with pytest.raises(TypeError, match="flow must be a trainable transform module"):
        fit_density(lambda x: x, torch.randn(300, 2), progress=False)


def test_bad_options_and_dtypes():
    data = torch.randn(300, 2)
    for option, value in [("num_steps", 0), ("lr", -1.0), ("eval_every", 0), ("patience", 0)]:
        with pytest.raises(ValueError, match=f"{option} must be a positive"):
            fit_density(cnf(2), data, progress=False, **{option: value})
    with pytest.raises(ValueError, match="ema_decay must be a float in"):
        fit_density(cnf(2), data, ema_decay=1.0, progress=False)
    with pytest.raises(
        ValueError, match="data has dtype torch.float32 but the flow's parameters are torch.float64"
    ):
        fit_density(cnf(2), data.float(), progress=False)
    with pytest.raises(ValueError, match="val_context was given without val_data"):
        fit_density(cnf(2), data, val_context=torch.randn(3, 1), progress=False)


def test_a_diverging_fit_raises_fit_error():
    flow = make_flow("realnvp", 2)
    data = torch.randn(300, 2)
    data[0, 0] = 1e300  # finite, but its log-density overflows
    with pytest.raises(FitError, match="non-finite loss"):
        fit_density(flow, data, batch_size=300, progress=False)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "sigmoid", "silu", "elu"])
def test_the_plain_forward_pass_matches_the_fused_one(activation):
    """Flow matching trains through MLPField.forward, which skips the activation derivatives."""
    field = MLPField(3, (16, 16), activation, context_dim=2, zero_init=False)
    t, z, c = torch.rand(5, 1), torch.randn(5, 3), torch.randn(5, 2)
    assert torch.allclose(field(t, z, c), field.call_and_divergence(t, z, c)[0], atol=1e-14)


# ---------------------------------------------------------------------------------------------
# A learned density inside a Pyro model
# ---------------------------------------------------------------------------------------------


def test_a_flow_matched_cnf_as_the_likelihood_of_a_pyro_model():
    """y_i = (loc, 0) + e_i with e_i from a bimodal shape density learned by flow matching.

    The posterior of loc computed with the learned likelihood (by quadrature over Pyro's trace
    log-density, and its mode by SVI with AutoDelta) matches the one computed with the exact shape
    density, and recovers the true loc = 1.
    """
    import pyro
    import pyro.poutine as poutine
    from pyro.distributions.transforms import AffineTransform
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoDelta

    shape = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor([0.3, 0.7])),
        dist.Normal(torch.tensor([[-1.5, 0.0], [1.0, 0.5]]), 0.5).to_event(1),
    )
    flow = CNF(2, field=MLPField(2, (32, 32), "silu"), eval_solver=Solver("rk4", steps=4))
    learned = fit_flow_matching(
        flow, shape.sample((8192,)), num_steps=500, batch_size=512, lr=1e-2, progress=False, seed=0
    ).distribution
    flow.eval().requires_grad_(False)  # a fixed, learned likelihood
    y = torch.tensor([1.0, 0.0]) + shape.sample((100,))

    def model(y, noise):
        loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
        shift = torch.stack([loc, torch.zeros_like(loc)], -1)
        with pyro.plate("data", len(y)):
            pyro.sample(
                "y",
                dist.TransformedDistribution(noise, [AffineTransform(shift, 1.0, event_dim=1)]),
                obs=y,
            )

    def posterior(noise):
        grid = torch.linspace(0.5, 1.5, 26)
        with torch.no_grad():
            log_joint = torch.stack(
                [
                    poutine.trace(poutine.condition(model, {"loc": g}))
                    .get_trace(y, noise)
                    .log_prob_sum()
                    for g in grid
                ]
            )
        weights = (log_joint - log_joint.logsumexp(0)).exp()
        mean = float((weights * grid).sum())
        return mean, math.sqrt(float((weights * (grid - mean) ** 2).sum()))

    mean_q, sd_q = posterior(learned)
    mean_p, sd_p = posterior(shape)
    assert abs(mean_q - mean_p) < 0.5 * sd_p
    assert abs(mean_q - 1.0) < 3 * sd_q
    pyro.clear_param_store()
    guide = AutoDelta(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(40):
        svi.step(y, learned)
    # the posterior is close to Gaussian: its mode (the MAP) sits by its mean
    assert abs(float(guide.median(y, learned)["loc"]) - mean_q) < 0.5 * sd_q


def test_non_finite_gradients_raise_without_updating():
    class SqrtField(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.tensor(0.0))

        def forward(self, t, z, context=None):
            return z * 0 + self.theta.sqrt()  # finite value, infinite gradient at theta = 0

    field = SqrtField()
    with pytest.raises(
        FitError, match="step 0 gave non-finite gradients; the parameters were not updated"
    ):
        fit_flow_matching(CNF(2, field=field), torch.randn(300, 2), progress=False)
    assert float(field.theta.detach()) == 0.0
