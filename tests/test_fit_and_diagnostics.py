"""fit_svi and importance_diagnostics against exact answers (a conjugate model with known log Z)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_cnf import (
    AutoCNF,
    FitError,
    Hutchinson,
    Solver,
    fit_svi,
    importance_diagnostics,
    pareto_khat,
)

Y = torch.tensor([1.2, 0.4, 2.1, 1.7, 0.9, 1.4, 2.5, 0.3, 1.1, 1.6])


def model():
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    pyro.deterministic("twice", 2 * mu)
    with pyro.plate("data", len(Y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=Y)


def exact():
    """Posterior N(m, s^2) and log Z = log N(y; 0, I + 4 11^T)."""
    precision = 1 / 4 + len(Y)
    covariance = torch.eye(len(Y)) + 4.0 * torch.ones(len(Y), len(Y))
    log_z = dist.MultivariateNormal(torch.zeros(len(Y)), covariance).log_prob(Y)
    return float(Y.sum() / precision), 1 / math.sqrt(precision), float(log_z)


def gaussian_guide(shift, stretch):
    mean, sd, _ = exact()

    def guide():
        pyro.sample("mu", dist.Normal(mean + shift * sd, stretch * sd))

    return guide


def test_log_evidence_matches_the_exact_value_within_three_standard_errors():
    _, _, log_z = exact()
    result = importance_diagnostics(model, gaussian_guide(0.2, 1.3), num_samples=20_000, seed=0)
    assert abs(result.log_evidence - log_z) < 3 * result.log_evidence_se
    assert result.log_evidence_se < 0.01
    assert result.elbo < log_z  # Jensen: the ELBO is a lower bound
    assert result.khat < 0.5
    assert 0.3 * result.num_samples < result.ess < result.num_samples
    assert result.khat_threshold == pytest.approx(min(1 - 1 / math.log10(20_000), 0.7))


@pytest.mark.parametrize("subsample_size", [5, None])
def test_a_subsampled_likelihood_is_refused_and_the_full_data_model_is_exact(subsample_size):
    def subsampled_model(subsample_size=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", len(Y), subsample_size=subsample_size) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=Y[idx])

    mean, sd, log_z = exact()

    def exact_guide(subsample_size=None):
        pyro.sample("mu", dist.Normal(mean, sd))

    if subsample_size is not None:  # one minibatch's weights would be a different number
        with pytest.raises(ValueError, match="'y' is in plate 'data' subsampled to 5 of 10"):
            importance_diagnostics(subsampled_model, exact_guide, subsample_size, num_samples=100)
        return
    result = importance_diagnostics(subsampled_model, exact_guide, num_samples=100, seed=0)
    assert result.log_evidence == pytest.approx(log_z, abs=1e-4)  # the exact guide: equal weights


@pytest.mark.parametrize("where", ["deterministic", "likelihood"])
def test_a_model_that_is_not_vectorizable_is_scored_draw_by_draw(where):
    """``w.sum()`` sums over the draws too: a wrong shape, or worse, the right shape and wrong numbers."""
    total = {"deterministic": lambda w: w.sum(-1), "likelihood": lambda w: w.sum()}

    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        pyro.deterministic("s", w.sum() if where == "deterministic" else w.sum(-1))
        pyro.sample("y", dist.Normal(total[where](w), 1.0), obs=torch.tensor(1.0))

    # exact posterior: precision I + 11^T, mean 11^T y / 4; log Z = log N(y; 0, 4)
    mean, covariance = torch.full((3,), 0.25), torch.eye(3) - torch.ones(3, 3) / 4

    def guide():
        pyro.sample("w", dist.MultivariateNormal(mean, covariance))

    match = "'s' has shape" if where == "deterministic" else "draw 0: log p"
    with pytest.warns(UserWarning, match=f"not vectorizable over draws.*{match}"):
        result = importance_diagnostics(model, guide, num_samples=200, seed=0)
    assert result.log_evidence == pytest.approx(
        float(dist.Normal(0.0, 2.0).log_prob(torch.tensor(1.0))), abs=1e-4
    )
    assert torch.allclose(result.draws["s"], result.draws["w"].sum(-1))


def test_an_exact_guide_of_a_float32_model_gets_a_light_tail():
    """Float32 log-densities round the log-weights of an exact guide to a few values; k-hat
    must still say the tail is light (it was inf), since the weights are in fact equal."""
    data = torch.randn(1000, dtype=torch.float32) + 1.0
    precision = 1.0 + len(data)

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float32), 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=data)

    def guide():
        mean = torch.tensor(float(data.sum()) / precision, dtype=torch.float32)
        pyro.sample("mu", dist.Normal(mean, 1 / math.sqrt(precision)))

    result = importance_diagnostics(model, guide, num_samples=2000, seed=0)
    assert result.log_weights.dtype == torch.float64
    assert result.khat < 0.5
    assert result.ess > 0.99 * result.num_samples
    assert pareto_khat(torch.zeros(2000)) == -math.inf  # equal weights: no tail at all


def test_resampled_draws_recover_the_posterior_from_a_biased_guide():
    mean, sd, _ = exact()
    result = importance_diagnostics(model, gaussian_guide(0.8, 1.5), num_samples=20_000, seed=1)
    mu = result.draws["mu"]
    assert mu.shape == (20_000,)
    assert abs(float(mu.mean()) - mean) < 0.05 * sd * 10  # the guide is 0.8 sd off; draws are not
    assert abs(float(mu.std()) - sd) < 0.05 * sd
    assert torch.allclose(result.draws["twice"], 2 * mu)


def test_a_too_narrow_guide_gets_a_large_khat():
    result = importance_diagnostics(model, gaussian_guide(0.0, 0.4), num_samples=10_000, seed=2)
    assert result.khat > result.khat_threshold
    assert "poor" in result.summary()


def test_pareto_khat_matches_a_known_tail():
    # weights w with a generalized Pareto tail of shape k: w = ((1 - u)^-k - 1) / k
    torch.manual_seed(3)
    u = torch.rand(100_000)
    for k in (0.3, 0.8):
        weights = ((1 - u).pow(-k) - 1) / k
        assert abs(pareto_khat(weights.log()) - k) < 0.1


def test_fit_svi_then_diagnostics_of_an_autocnf_score_with_the_exact_trace():
    _, _, log_z = exact()
    # from the init location (the Laplace start would leave the loss nothing to lower)
    guide = AutoCNF(model, hidden_dims=(8, 8), solver=Solver("rk4", steps=8), warm_start=None)
    result = fit_svi(
        model, guide, num_steps=300, optimizer=pyro.optim.Adam({"lr": 0.03}), progress=False, seed=0
    )
    assert len(result.losses) == 300
    assert sum(result.losses[-30:]) / 30 < sum(result.losses[:30]) / 30 - 1.0
    guide.flow.divergence = Hutchinson()  # a stochastic trace: diagnostics must not use it
    diagnostics = importance_diagnostics(model, guide, num_samples=10_000, seed=0)
    assert isinstance(guide.flow.divergence, Hutchinson) and guide.training  # restored afterwards
    assert abs(diagnostics.log_evidence - log_z) < 3 * diagnostics.log_evidence_se + 1e-3
    assert diagnostics.khat < 0.5


def test_fit_svi_stops_at_a_non_finite_loss_without_applying_it():
    calls = {"n": 0}

    def exploding_model():
        calls["n"] += 1
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        if calls["n"] > 4:  # the fifth model call is SVI step 3 (the first step also traces setup)
            pyro.factor("boom", torch.tensor(float("nan")) * mu)

    guide = AutoNormal(exploding_model)
    pyro.enable_validation(False)  # let the NaN reach the loss instead of a validation error
    message = r"SVI step \d+ gave a non-finite loss \(nan\); the parameters were not updated"
    with pytest.raises(FitError, match=message) as error:
        fit_svi(exploding_model, guide, num_steps=20, progress=False, seed=0)
    pyro.enable_validation(True)
    step = int(str(error.value).split("step ")[1].split()[0])
    assert step >= 1
    for name, value in pyro.get_param_store().items():
        assert torch.isfinite(value).all(), name


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
        importance_diagnostics(model, gaussian_guide(0, 1), num_samples=1)
    with pytest.raises(ValueError, match="no CNF with regularization terms"):
        fit_svi(model, AutoNormal(model), num_steps=2, regularization_weight=1.0, progress=False)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        fit_svi(model, AutoNormal(model), num_steps=0)


def test_regularized_fit_adds_the_penalty():
    guide = AutoCNF(
        model,
        hidden_dims=(8,),
        solver=Solver("rk4", steps=4),
        regularization=("kinetic", "jacobian"),
    )
    result = fit_svi(model, guide, num_steps=5, regularization_weight=0.5, progress=False, seed=0)
    assert len(result.losses) == 5
    terms = guide.flow.regularization_terms
    assert set(terms) == {"kinetic", "jacobian"} and all(
        torch.isfinite(t).all() for t in terms.values()
    )


def test_annealing_fits_the_tempered_model_on_a_linear_schedule():
    # lr = 0 keeps the guide q = N(a, s^2) fixed, so each loss is -E_q[beta_t log p - log q]
    # of that one q: linear in beta_t, with the exact slope and intercept below
    guide = AutoNormal(model, init_scale=0.3)
    elbo = pyro.infer.Trace_ELBO(num_particles=20_000, vectorize_particles=True)
    optimizer = pyro.optim.Adam({"lr": 0.0})
    result = fit_svi(
        model, guide, num_steps=6, optimizer=optimizer, loss=elbo, anneal_steps=4,
        anneal_start=0.2, progress=False, seed=0,
    )  # fmt: skip
    assert result.betas == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    a, s = float(guide.locs.mu.detach()), float(guide.scales.mu.detach())
    n = len(Y)
    expected_log_p = (
        -0.5 * math.log(2 * math.pi * 4.0)
        - (a**2 + s**2) / 8
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * float(((Y - a) ** 2).sum() + n * s**2)
    )
    entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
    for beta, loss in zip(result.betas, result.losses, strict=True):
        assert loss == pytest.approx(-(beta * expected_log_p + entropy), rel=2e-3)


@pytest.mark.slow
def test_annealing_keeps_both_modes_of_u1_that_plain_reverse_kl_drops():
    # U1 (two lobes of a ring, log Z by quadrature): from a narrow start plain reverse KL settles
    # in one lobe (KL = log 2 + the fit error); the annealed fit starts from a flat target and
    # keeps both (about 45 s)
    from pyro_cnf.models import get_model

    model_u1 = get_model("energy_u1")
    kls = {}
    for anneal in (0, 300):
        pyro.clear_param_store()
        guide = AutoCNF(
            model_u1, hidden_dims=(32, 32), solver=Solver("rk4", steps=6), init_scale=0.5
        )
        optimizer = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.1 ** (1 / 600)})
        fit_svi(
            model_u1, guide, num_steps=600, anneal_steps=anneal, optimizer=optimizer,
            loss=pyro.infer.Trace_ELBO(num_particles=32, vectorize_particles=True),
            progress=False, seed=1,
        )  # fmt: skip
        result = importance_diagnostics(model_u1, guide, num_samples=4000, seed=0)
        kls[anneal] = model_u1.reference.log_Z - result.elbo
    assert kls[0] > math.log(2) - 0.05
    assert kls[300] < 0.1


def test_annealing_rejects_bad_settings():
    guide = AutoNormal(model)
    with pytest.raises(ValueError, match=r"anneal_steps must be an integer in \[0, num_steps=5\]"):
        fit_svi(model, guide, num_steps=5, anneal_steps=6, progress=False)
    with pytest.raises(ValueError, match=r"anneal_start must be in \(0, 1\]"):
        fit_svi(model, guide, num_steps=5, anneal_steps=2, anneal_start=0.0, progress=False)
    with pytest.raises(ValueError, match="TraceMeanField_ELBO"):
        fit_svi(
            model, guide, num_steps=5, anneal_steps=2,
            loss=pyro.infer.TraceMeanField_ELBO(), progress=False,
        )  # fmt: skip


def test_fit_rejects_tail_adaptive_elbo_with_the_reason():
    # Pyro's TraceTailAdaptive_ELBO returns inf as its loss by design: without this check the
    # NaN/inf guard would stop at step 0 with "gave loss inf", which does not say why
    guide = AutoNormal(model)
    loss = pyro.infer.TraceTailAdaptive_ELBO(num_particles=4, vectorize_particles=True)
    with pytest.raises(ValueError, match="TraceTailAdaptive_ELBO: it reports no loss value"):
        fit_svi(model, guide, num_steps=5, loss=loss, progress=False)
    assert len(pyro.get_param_store()) == 0  # rejected before any step
