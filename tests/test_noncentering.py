"""Non-centering inside the guide (``AutoFlow(noncentered=...)``) and the tail layer in a guide.

The non-centered guide is checked against densities written by hand (change of variables), on
Neal's funnel, where it makes the posterior exactly standard normal in the guide's coordinates,
and through Pyro's SVI, Predictive and vectorized particles.
"""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.infer import Predictive, Trace_ELBO
from torch.autograd.functional import jacobian

from pyro_cnf import AutoCNF, AutoFlow, fit_svi, importance_diagnostics
from pyro_cnf.models import funnel

Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


pytestmark = pytest.mark.float64


def centered_schools():
    """Centered eight schools, written here (the zoo's model is the same)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, SIGMA), obs=Y)


def affine_only(dim):
    return ComposeTransformModule([])


def test_the_guide_density_is_the_change_of_variables_written_by_hand():
    # In the guide's coordinates mu/5, log tau and (theta - mu)/tau are independent normals
    # (the affine map); back in the model's: Jacobians 1/5, 1/tau (log) and 1/tau per theta_j.
    guide = AutoFlow(
        centered_schools, flow=affine_only, warm_start=None, init_scale=0.4, noncentered=True
    )
    guide()
    with torch.no_grad():
        guide.loc.add_(0.3 * torch.randn(10))
        guide.scale_unconstrained.add_(0.2 * torch.randn(10))
    loc, scale = guide.loc.detach(), guide.scale.detach()
    for _ in range(3):
        trace = poutine.trace(guide).get_trace()
        mu, tau, theta = (trace.nodes[k]["value"].detach() for k in ("mu", "tau", "theta"))
        normal = lambda x, i: dist.Normal(loc[i], scale[i]).log_prob(x)  # noqa: E731
        by_hand = (
            normal(mu / 5, 0)
            - math.log(5)
            + normal(tau.log(), 1)
            - tau.log()
            + (normal((theta - mu) / tau, slice(2, None)) - tau.log()).sum()
        )
        assert float(trace.log_prob_sum().detach()) == pytest.approx(float(by_hand), abs=1e-10)


def test_the_sites_chosen_by_name_are_the_only_ones_mapped():
    guide = AutoFlow(
        centered_schools, flow=affine_only, warm_start=None, init_scale=0.4, noncentered=["theta"]
    )
    guide()
    assert guide._noncentered_sites == ("theta",)
    trace = poutine.trace(guide).get_trace()
    mu, tau, theta = (trace.nodes[k]["value"].detach() for k in ("mu", "tau", "theta"))
    loc, scale = guide.loc.detach(), guide.scale.detach()
    by_hand = (
        dist.Normal(loc[0], scale[0]).log_prob(mu)
        + dist.Normal(loc[1], scale[1]).log_prob(tau.log())
        - tau.log()
        + (dist.Normal(loc[2:], scale[2:]).log_prob((theta - mu) / tau) - tau.log()).sum()
    )
    assert float(trace.log_prob_sum().detach()) == pytest.approx(float(by_hand), abs=1e-10)


def test_the_map_inverts_and_its_log_det_is_the_autograd_jacobians():
    guide = AutoFlow(centered_schools, flow=affine_only, warm_start=None, noncentered=True)
    guide()
    transform = guide.get_transform()[-1]
    x = torch.randn(5, 10)
    y = transform(x)
    assert (transform.inv(y.clone()) - x).abs().max() < 1e-12
    ladj = transform.log_abs_det_jacobian(x, y)
    assert ladj.shape == (5,)
    for i in range(5):
        jac = jacobian(lambda v: transform(v.unsqueeze(0)).squeeze(0), x[i])
        assert torch.allclose(ladj[i], torch.linalg.slogdet(jac)[1], atol=1e-10)
    # the same points with the batch dimensions particles bring, and unbatched
    assert torch.allclose(transform(x.reshape(5, 1, 1, 10)).reshape(5, 10), y, atol=1e-12)
    assert torch.allclose(transform(x[0]), y[0], atol=1e-12)


def test_neals_funnel_is_exactly_standard_normal_in_the_guide_coordinates():
    # v ~ N(0, 3^2), x | v ~ N(0, e^v): v/3 and x e^{-v/2} are iid N(0, 1), so the affine guide
    # at loc 0, scale 1 *is* the posterior: every importance weight equals Z = 1, the ELBO is 0.
    model = funnel(10)
    guide = AutoFlow(model, flow=affine_only, warm_start=None, noncentered=True)
    guide()
    with torch.no_grad():
        guide.loc.zero_()
        guide.scale_unconstrained.fill_(math.log(math.e - 1))  # softplus^{-1}(1)
    assert torch.allclose(guide.scale, torch.ones(10))
    diagnostics = importance_diagnostics(model, guide, num_samples=2000, seed=0)
    assert diagnostics.log_weights.abs().max() < 1e-10
    vectorized = Trace_ELBO(num_particles=64, vectorize_particles=True)
    assert abs(vectorized.loss(model, guide)) < 1e-10


def test_svi_finds_the_exact_noncentered_guide_of_the_funnel():
    model = funnel(10)
    guide = AutoFlow(model, flow=affine_only, warm_start=None, noncentered=True, init_scale=0.5)
    fit_svi(
        model,
        guide,
        num_steps=600,
        optimizer=pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / 600)}),
        loss=Trace_ELBO(num_particles=16, vectorize_particles=True),
        progress=False,
        seed=0,
    )
    diagnostics = importance_diagnostics(model, guide, num_samples=4000, seed=1)
    assert model.reference.log_Z - diagnostics.elbo < 0.02
    v = Predictive(model, guide=guide, num_samples=4000, return_sites=["v"])()["v"]
    assert float(v.std()) == pytest.approx(3.0, rel=0.05)


def test_predictive_median_and_quantiles_keep_the_models_shapes():
    guide = AutoCNF(centered_schools, hidden_dims=(8, 8), noncentered=True)
    guide()
    draws = Predictive(centered_schools, guide=guide, num_samples=7, parallel=True)()
    assert draws["theta"].shape == (7, 8) and draws["tau"].shape[0] == 7
    assert (draws["tau"] > 0).all()
    median = guide.median()
    assert median["theta"].shape == (8,) and float(median["tau"]) > 0
    quantiles = guide.quantiles([0.25, 0.75])
    assert (quantiles["theta"][0] < quantiles["theta"][1]).all()


def test_noncentered_errors_name_the_problem():
    with pytest.raises(ValueError, match="'auto' or a sequence of site names, got 'theta'"):
        AutoFlow(centered_schools, noncentered="theta")
    with pytest.raises(ValueError, match="'tau' is not of a location-scale family"):
        AutoFlow(centered_schools, flow=affine_only, warm_start=None, noncentered=["tau"])()
    with pytest.raises(ValueError, match="'phi' is not a latent site"):
        AutoFlow(centered_schools, flow=affine_only, warm_start=None, noncentered=["phi"])()

    def positive_only():
        pyro.sample("s", dist.LogNormal(0.0, 1.0))

    with pytest.raises(ValueError, match="no latent site of a location-scale family"):
        AutoFlow(positive_only, flow=affine_only, warm_start=None, noncentered=True)()


def test_tail_layer_must_be_a_bool():
    with pytest.raises(TypeError, match="tail_layer"):
        AutoCNF(centered_schools, tail_layer="yes")


def test_a_tail_layer_guide_fits_an_exponential_tailed_posterior_a_gaussian_cannot():
    # Laplace(0, 1): the closest Gaussian (sd sqrt(pi/2)) has KL = 1 + log 2 - log(pi^2 e)/2
    # = 0.0485 and log-weights that grow quadratically in the tails; the tail layer's exponential
    # tails take the KL to ~0.01 and keep the largest weight near the bulk's.
    def model():
        pyro.sample("x", dist.Laplace(0.0, 1.0))

    kl, top = {}, {}
    for tail_layer in (False, True):
        pyro.clear_param_store()
        guide = AutoFlow(
            model, flow=affine_only, warm_start=None, init_scale=1.0, tail_layer=tail_layer
        )
        fit_svi(
            model,
            guide,
            num_steps=1500,
            optimizer=pyro.optim.Adam({"lr": 0.02}),
            loss=Trace_ELBO(num_particles=64, vectorize_particles=True),
            progress=False,
            seed=0,
        )
        diagnostics = importance_diagnostics(model, guide, num_samples=10000, seed=1)
        kl[tail_layer] = -diagnostics.elbo  # log Z = 0
        top[tail_layer] = float(diagnostics.log_weights.max() - diagnostics.log_weights.median())
    assert 0.04 < kl[False] < 0.06
    assert kl[True] < 0.02
    assert top[True] < 1.5 < 2.5 < top[False]


def test_auto_picks_the_sites_whose_loc_or_scale_depends_on_other_latents():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))  # a fixed prior: left alone
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        beta = pyro.sample("beta", dist.Normal(torch.zeros(2), 10.0).to_event(1))  # fixed too
        with pyro.plate("groups", 3):
            pyro.sample("theta", dist.Normal(mu, tau))  # loc and scale from other sites
            pyro.sample("shifted", dist.Normal(beta.sum(), 1.0))  # loc only
        pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.tensor(0.5))

    guide = AutoFlow(model, flow=affine_only, warm_start=None, noncentered="auto")
    guide()
    assert guide._noncentered_sites == ("theta", "shifted")
    # and True takes every location-scale site on the real line
    pyro.clear_param_store()
    every = AutoFlow(model, flow=affine_only, warm_start=None, noncentered=True)
    every()
    assert every._noncentered_sites == ("mu", "beta", "theta", "shifted")
