"""The model zoo: every model runs, and every reference answer is checked against the model's own trace.

Quadrature references must not move when the grid is refined or the box enlarged; analytic
references must agree with a quadrature of the model's log joint; eight schools' integrand (theta
integrated out analytically) must equal the model's log joint with theta integrated out exactly.
"""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.util import site_is_subsample

from pyro_cnf.models import (
    BayesianModel,
    Reference,
    banana,
    eight_schools_centered,
    eight_schools_noncentered,
    funnel,
    get_model,
    logistic_regression,
    zoo,
)
from pyro_cnf.models._quadrature import integrate_2d
from pyro_cnf.models.eight_schools import eight_schools_quadrature, log_marginal
from pyro_cnf.models.energies import ENERGY_PRIOR_SCALE, energy, energy_quadrature
from pyro_cnf.models.logistic import _log_joint, breast_cancer_data, logistic_regression_nuts

QUADRATURE_MODELS = [
    "eight_schools_centered",
    "eight_schools_noncentered",
    "funnel",
    "banana",
    "energy_u1",
    "energy_u2",
    "energy_u3",
    "energy_u4",
]  # every model whose reference is cheap (all but the NUTS one)


def test_zoo_lists_every_model_and_get_model_names_the_valid_ones():
    models = zoo()
    assert set(models) == {*QUADRATURE_MODELS, "logistic_regression"}
    for name, model in models.items():
        assert isinstance(model, BayesianModel) and model.name == name
        assert get_model(name) is model  # shared instances: each reference is computed once
    with pytest.raises(KeyError, match="valid names: banana, eight_schools_centered"):
        get_model("eight_school")


@pytest.mark.parametrize("name", QUADRATURE_MODELS)
def test_model_traces_and_its_log_joint_is_finite_at_the_reference_mean(name):
    model = get_model(name)
    trace = pyro.poutine.trace(model).get_trace()
    latent = [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]
    assert tuple(latent) == model.latent_sites
    ref = model.reference
    assert isinstance(ref, Reference) and isinstance(ref.kind, str) and math.isfinite(ref.log_Z)
    assert set(model.latent_sites) <= set(ref.mean) == set(ref.sd)
    for site in ref.mean:
        assert ref.mean[site].shape == ref.sd[site].shape == trace.nodes[site]["value"].shape
        assert ref.mean[site].dtype == torch.float64 and (ref.sd[site] > 0).all()
    log_joint = model.log_joint(ref.mean)
    assert log_joint.shape == () and torch.isfinite(log_joint)
    assert model.reference is ref  # cached


def test_logistic_regression_traces_on_the_real_data_and_its_closed_form_is_its_log_joint():
    model = logistic_regression()
    x, y = breast_cancer_data()
    assert x.shape == (569, 10) and y.shape == (569,) and set(y.tolist()) == {0.0, 1.0}
    assert torch.allclose(x.mean(0), torch.zeros(10), atol=1e-12)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(10))
    trace = pyro.poutine.trace(model).get_trace()
    assert trace.nodes["y"]["value"].shape == (569,) and model.latent_dim == 11
    # the NUTS reference samples this closed form: it must be the model's log joint
    intercept, weights = torch.randn(5), torch.randn(5, 10)
    values = {"intercept": intercept, "weights": weights}
    expected = torch.stack([_log_joint(intercept[i], weights[i], x, y) for i in range(5)])
    assert torch.allclose(model.log_joint(values), expected, rtol=1e-12)


@pytest.mark.parametrize("name", [*QUADRATURE_MODELS, "logistic_regression"])
def test_models_take_vectorized_particles_in_svi(name):
    model = get_model(name)
    guide = AutoNormal(model)
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    assert math.isfinite(svi.step())


@pytest.mark.parametrize("name", [*QUADRATURE_MODELS, "logistic_regression"])
def test_models_take_parallel_predictive_with_a_guide(name):
    # Predictive(parallel=True) pads draws by their batch dims only: an event-shaped site
    # outside every plate used to break logistic regression here
    model = get_model(name)
    guide = AutoNormal(model)
    guide()
    parallel = pyro.infer.Predictive(model, guide=guide, num_samples=4, parallel=True)()
    sequential = pyro.infer.Predictive(model, guide=guide, num_samples=4)()
    assert {k: v.shape for k, v in parallel.items()} == {k: v.shape for k, v in sequential.items()}
    # the parallel draws are the model's: their batched log joint is finite and per-draw
    one = pyro.poutine.trace(model).get_trace()
    shapes = {site: one.nodes[site]["value"].shape for site in model.latent_sites}
    values = {site: parallel[site].reshape(4, *shapes[site]) for site in model.latent_sites}
    assert torch.isfinite(model.log_joint(values)).all()


@pytest.mark.parametrize("name", ["eight_schools_noncentered", "funnel", "energy_u3"])
def test_batched_log_joint_matches_one_point_at_a_time(name):
    model = get_model(name)
    draws = pyro.infer.Predictive(model, num_samples=6)()
    # Predictive keeps singleton plate dims on sites outside the plate (mu: (6, 1)): drop them
    shapes = {site: model.reference.mean[site].shape for site in model.latent_sites}
    values = {site: draws[site].reshape(3, 2, *shapes[site]) for site in model.latent_sites}
    batched = model.log_joint(values)
    assert batched.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            one = model.log_joint({site: v[i, j] for site, v in values.items()})
            assert torch.allclose(batched[i, j], one)


def test_log_joint_errors_name_the_site():
    model = funnel(dim=3)
    with pytest.raises(KeyError, match="'x'"):
        model.log_joint({"v": torch.tensor(0.0)})
    with pytest.raises(ValueError, match="'x' must have shape batch_shape \\+ \\(2,\\)"):
        model.log_joint({"v": torch.tensor(0.0), "x": torch.zeros(3)})
    with pytest.raises(ValueError, match="one batch shape"):
        model.log_joint({"v": torch.zeros(4), "x": torch.zeros(5, 2)})


def test_models_follow_the_default_dtype_and_leave_the_rng_alone():
    torch.set_default_dtype(torch.float32)  # the conftest fixture restores float64
    trace = pyro.poutine.trace(eight_schools_centered()).get_trace()
    assert trace.nodes["y"]["value"].dtype == torch.float32
    assert trace.nodes["theta"]["value"].dtype == torch.float32
    model = get_model("energy_u2")
    assert model.log_joint({"z": torch.zeros(2)}).dtype == torch.float32
    assert model.reference.mean["z"].dtype == torch.float64  # references are float64 regardless
    pyro.set_rng_seed(3)
    expected = torch.rand(3)
    pyro.set_rng_seed(3)
    _ = funnel(dim=7).latent_dim  # a prototype trace draws from the prior inside a forked RNG
    assert torch.equal(torch.rand(3), expected)


def test_factories_validate_their_arguments():
    with pytest.raises(ValueError, match="dim >= 2"):
        funnel(dim=1)
    with pytest.raises(ValueError, match="positive integer"):
        funnel(dim=2.5)
    with pytest.raises(ValueError, match="valid names: u1, u2, u3, u4"):
        energy("u5", torch.zeros(2))
    with pytest.raises(ValueError, match="num_chains must be >= 2"):
        logistic_regression_nuts(num_chains=1)


# --- eight schools ----------------------------------------------------------------------------


def test_eight_schools_quadrature_converges_as_the_grid_is_refined_and_the_box_enlarged():
    coarse = eight_schools_quadrature((201, 201), check=False)
    default = eight_schools_quadrature()  # (401, 401), with its own check against (201, 201)
    wide = eight_schools_quadrature((701, 701), box=((-80.0, 80.0), (-55.0, 16.0)), check=False)
    assert default.details["refinement_change"] < 1e-9
    for other in (coarse, wide):
        assert abs(other.log_Z - default.log_Z) < 1e-9
        for site in default.mean:
            assert torch.allclose(other.mean[site], default.mean[site], rtol=0, atol=1e-9)
            assert torch.allclose(other.sd[site], default.sd[site], rtol=0, atol=1e-9)


def test_eight_schools_reference_is_sane():
    ref = eight_schools_centered().reference
    # the classic numbers for this prior (BDA3 §5.5 with a half-Cauchy(5) on tau; Stan case studies)
    assert abs(ref.log_Z - (-31.31)) < 0.01
    assert 4.0 < float(ref.mean["mu"]) < 4.8 and 3.0 < float(ref.sd["mu"]) < 3.6
    assert 3.0 < float(ref.mean["tau"]) < 4.2 and 2.8 < float(ref.sd["tau"]) < 3.6
    assert 5.8 < float(ref.mean["theta"][0]) < 6.6  # school A shrinks from 28 towards mu
    nc = eight_schools_noncentered().reference
    assert nc.log_Z == ref.log_Z
    for site in ("mu", "tau", "theta"):
        assert torch.equal(nc.mean[site], ref.mean[site]) and torch.equal(nc.sd[site], ref.sd[site])
    assert "theta_tilde" in nc.mean and "theta_tilde" not in ref.mean


@pytest.mark.parametrize(
    "factory, site", [(eight_schools_centered, "theta"), (eight_schools_noncentered, "theta_tilde")]
)
def test_eight_schools_quadrature_integrand_is_the_models_log_joint_with_theta_integrated_out(
    factory, site
):
    # Given (mu, tau) the log joint is quadratic in theta (or theta_tilde): the Laplace formula
    # integrates it exactly, from the model's own trace. Both parametrizations must give the
    # quadrature's integrand, so they share log Z.
    model = factory()
    for mu, tau in [(0.0, 1.0), (4.4, 3.6), (-7.0, 0.05), (12.0, 40.0)]:
        mu, tau = torch.tensor(mu), torch.tensor(tau)

        def log_joint(t, mu=mu, tau=tau):
            return model.log_joint({"mu": mu, "tau": tau, site: t})

        zero = torch.zeros(8)
        hessian = torch.autograd.functional.hessian(log_joint, zero)
        grad = torch.autograd.functional.jacobian(log_joint, zero)
        mode = -torch.linalg.solve(hessian, grad)
        integrated = log_joint(mode) + 4 * math.log(2 * math.pi) - 0.5 * torch.logdet(-hessian)
        # the quadrature integrates over log tau: its integrand carries the Jacobian tau
        expected = log_marginal(mu, tau.log()) - tau.log()
        assert torch.allclose(integrated, expected, rtol=0, atol=1e-9)


# --- analytic references against quadratures of the model's own log joint --------------------


def _grid_log_joint(model, to_sites):
    """Log density on a grid of (a, b): the model's log joint at to_sites(a, b) plus log|Jacobian|."""

    def log_density(a, b):
        values, log_jacobian = to_sites(a.flatten(), b.flatten())
        return (model.log_joint(values) + log_jacobian).reshape(a.shape)

    return log_density


def test_banana_analytic_reference_matches_quadrature_of_its_log_joint():
    model = banana()
    b = 0.03

    def to_sites(x0, r):  # r = x1 - b (x0^2 - 100): straightens the banana, Jacobian 1
        return {"x0": x0, "x1": r + b * (x0**2 - 100)}, 0.0

    grid = integrate_2d(
        _grid_log_joint(model, to_sites), ((-80.0, 80.0), (-10.0, 10.0)), (801, 201)
    )
    x1 = grid.y + b * (grid.x**2 - 100)
    ref = model.reference
    assert abs(grid.log_Z - ref.log_Z) < 1e-9
    for site, values in [("x0", grid.x), ("x1", x1)]:
        mean, sd = grid.mean_sd(values)
        assert abs(float(mean - ref.mean[site])) < 1e-8
        assert abs(float(sd / ref.sd[site]) - 1) < 1e-9
    assert abs(float(ref.sd["x1"]) - math.sqrt(19)) < 1e-12


def test_funnel_analytic_reference_matches_quadrature_of_its_log_joint():
    model = funnel(dim=2)

    def to_sites(v, s):  # x = exp(v / 2) s unfolds the neck; log|dx/ds| = v / 2
        return {"v": v, "x": (torch.exp(v / 2) * s).unsqueeze(-1)}, v / 2

    # v up to 40: E[x^2] = E[e^v] weighs v as N(9, 3^2)
    grid = integrate_2d(
        _grid_log_joint(model, to_sites), ((-30.0, 40.0), (-10.0, 10.0)), (701, 201)
    )
    ref = model.reference
    assert abs(grid.log_Z - ref.log_Z) < 1e-9
    mean_v, sd_v = grid.mean_sd(grid.x)
    mean_x, sd_x = grid.mean_sd(torch.exp(grid.x / 2) * grid.y)
    assert abs(float(mean_v)) < 1e-9 and abs(float(sd_v) - 3) < 1e-9
    assert abs(float(mean_x)) < 1e-9 and abs(float(sd_x) / math.exp(9 / 4) - 1) < 1e-9
    assert torch.equal(ref.sd["x"], torch.tensor([math.exp(9 / 4)]))


def test_funnel_of_any_dimension():
    model = funnel(dim=5)
    assert model.name == "funnel_5d" and model.latent_dim == 5 and funnel() is get_model("funnel")
    assert model.reference.mean["x"].shape == (4,)
    values = {"v": torch.tensor(-2.0), "x": torch.full((4,), 0.1)}
    expected = (
        torch.distributions.Normal(0.0, 3.0).log_prob(values["v"])
        + torch.distributions.Normal(0.0, math.exp(-1.0)).log_prob(values["x"]).sum()
    )
    assert torch.allclose(model.log_joint(values), expected)


# --- energies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["u1", "u2", "u3", "u4"])
def test_energy_quadrature_converges_and_scores_the_models_log_joint(name):
    default = energy_quadrature(name)
    n1, n2 = default.details["num_nodes"]
    (a, b), (c, d) = default.details["box"]
    half = energy_quadrature(name, ((n1 + 1) // 2, (n2 + 1) // 2))
    wide = energy_quadrature(name, (2 * n1 - 1, 2 * n2 - 1), ((a - 6, b + 6), (c - 4, d + 4)))
    for other in (half, wide):
        assert abs(other.log_Z - default.log_Z) < 1e-9
        assert torch.allclose(other.mean["z"], default.mean["z"], rtol=0, atol=1e-9)
        assert torch.allclose(other.sd["z"], default.sd["z"], rtol=0, atol=1e-9)
    # the integrand is the model's log joint: prior N(0, 4^2 I) plus the factor -U(z)
    model = get_model(f"energy_{name}")
    z = 3 * torch.randn(50, 2)
    prior = torch.distributions.Normal(0.0, ENERGY_PRIOR_SCALE).log_prob(z).sum(-1)
    assert torch.allclose(model.log_joint({"z": z}), prior - energy(name, z))
    assert model.reference.log_Z == default.log_Z


def test_energy_u2_marginal_of_z1_is_its_prior():
    # exp(-U2) integrates over z2 to a constant, up to the slowly varying prior in z2
    ref = get_model("energy_u2").reference
    assert abs(float(ref.sd["z"][0]) - ENERGY_PRIOR_SCALE) < 1e-6


# --- the NUTS reference (about a minute) ------------------------------------------------------


@pytest.mark.slow
def test_logistic_regression_nuts_reference_has_converged():
    model = logistic_regression()
    ref = model.reference
    assert ref.log_Z is None and ref.kind.startswith("NUTS (made by pyro-cnf")
    assert ref.details["r_hat"] < 1.01 and ref.details["min_ess"] > 400
    assert ref.mean["weights"].shape == ref.sd["weights"].shape == (10,)
    assert ref.mean["intercept"].shape == ()
    assert (ref.sd["weights"] > 0).all() and (ref.sd["weights"] < 1).all()  # data beat the prior
    assert torch.isfinite(model.log_joint(ref.mean))
