"""AutoAmortizedCNF: local latents under subsampling, against exact Gaussian posteriors."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import init_to_value

from pyro_cnf import AutoAmortizedCNF, importance_diagnostics

N_OBS = 5


def hierarchical(y, subsample_size=None):
    """mu ~ N(0, 10), theta_i ~ N(mu, 1), y_ij ~ N(theta_i, 1): every posterior is Gaussian."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("groups", y.shape[0], subsample_size=subsample_size) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(theta[..., None], 1.0).to_event(1), obs=y[idx])


def group_data(idx, y, subsample_size=None):
    return y[idx]


def data(num_groups, seed=0):
    generator = torch.Generator().manual_seed(seed)
    theta = 1.5 + torch.randn(num_groups, generator=generator)
    return theta[:, None] + torch.randn(num_groups, N_OBS, generator=generator)


def exact_posterior(y):
    """Means and sds of mu and of every theta_i (marginal over mu), in closed form."""
    num_groups, n = y.shape
    precision = 1 / 100 + num_groups / (1 + 1 / n)
    mu_mean = y.mean(1).sum() / (1 + 1 / n) / precision
    mu_sd = precision**-0.5
    theta_mean = (mu_mean + y.sum(1)) / (n + 1)
    theta_sd = (1 / (n + 1) + mu_sd**2 / (n + 1) ** 2) ** 0.5
    return mu_mean, mu_sd, theta_mean, theta_sd


def exact_log_evidence(y):
    num_groups, n = y.shape
    cov = torch.block_diag(*[torch.eye(n) + torch.ones(n, n)] * num_groups)
    cov = cov + 100 * torch.ones(num_groups * n, num_groups * n)
    return float(dist.MultivariateNormal(torch.zeros(num_groups * n), cov).log_prob(y.reshape(-1)))


def fit(y, num_steps, subsample_size, num_particles=4, lr=0.01, final_lr=1e-4, **options):
    guide = AutoAmortizedCNF(hierarchical, "groups", group_data, **options)
    decay = (final_lr / lr) ** (1 / num_steps)
    optimizer = pyro.optim.ClippedAdam({"lr": lr, "lrd": decay})
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True)
    svi = SVI(hierarchical, guide, optimizer, elbo)
    for _ in range(num_steps):
        svi.step(y, subsample_size=subsample_size)
    return guide


def test_a_step_draws_the_subsample_and_the_model_reuses_its_indices():
    y = data(50)
    guide = AutoAmortizedCNF(hierarchical, "groups", group_data)
    guide_trace = pyro.poutine.trace(guide).get_trace(y, subsample_size=7)
    model_trace = pyro.poutine.trace(
        pyro.poutine.replay(hierarchical, trace=guide_trace)
    ).get_trace(y, subsample_size=7)
    idx = guide_trace.nodes["groups"]["value"]
    assert idx.shape == (7,) and len(set(idx.tolist())) == 7
    assert torch.equal(model_trace.nodes["groups"]["value"], idx)
    assert guide_trace.nodes["theta"]["value"].shape == (7,)
    assert model_trace.nodes["y"]["scale"] == pytest.approx(50 / 7)  # the ELBO's N / B
    # without a subsample (all groups), under a vectorizing plate of draws
    with pyro.plate("draws", 3, dim=-2):
        draws = guide(y)
    assert draws["theta"].shape == (3, 50) and draws["mu"].shape == (3, 1)


def test_the_guide_density_is_normalized_log_evidence_of_the_full_data_model():
    """Importance sampling of the full-data model with the fitted guide: the exact log evidence.

    The weights' tail is finite-mean (k-hat < 1) but not light: an amortized guide of 30 groups
    after 800 steps is a few hundredths of a nat per group from exact, which adds up over the
    joint. The estimate must still be unbiased within its standard error.
    """
    y = data(30)
    guide = fit(y, 800, subsample_size=None)
    diagnostics = importance_diagnostics(hierarchical, guide, y, num_samples=1000, seed=0)
    log_z = exact_log_evidence(y)
    assert diagnostics.khat < 1.0
    assert abs(diagnostics.log_evidence - log_z) < 4 * diagnostics.log_evidence_se + 0.05
    assert diagnostics.elbo < log_z


def test_the_local_gaussian_is_the_amortized_affine_map():
    """local_cnf=False: each theta_i's log-density is that of the Normal the networks give."""
    y = data(20)
    guide = AutoAmortizedCNF(
        hierarchical,
        "groups",
        group_data,
        local_cnf=False,
        init_loc_fn=init_to_value(values={"mu": torch.tensor(0.3)}),
    )
    with torch.no_grad():
        trace = pyro.poutine.trace(guide).get_trace(y)
        mu, theta = trace.nodes["mu"]["value"], trace.nodes["theta"]["value"]
        u_mu = mu.reshape(1, 1).expand(20, 1)
        context = (y - guide.context_loc) / guide.context_scale
        x = torch.cat([u_mu, context], -1)
        loc, log_scale = guide.affine(torch.zeros(20, 1), x)
        expected = dist.Normal(loc[:, 0], log_scale.exp()).log_prob(theta)
        site = trace.nodes["theta"]
        assert torch.allclose(site["fn"].log_prob(theta), expected, atol=1e-12)


def test_bad_models_and_contexts_are_refused_by_name():
    y = data(10)
    with pytest.raises(ValueError, match="no latent site in plate 'groups'"):
        AutoAmortizedCNF(lambda y: pyro.sample("mu", dist.Normal(0.0, 1.0)), "groups", group_data)(
            y
        )
    with pytest.raises(
        ValueError, match=r"must return a tensor of shape \(len\(idx\), c\) = \(10, c\)"
    ):
        AutoAmortizedCNF(hierarchical, "groups", lambda idx, y, subsample_size=None: y)(
            y[:, :1].expand(10, 5)[:, 0]
        )

    def two_plates(y):
        with pyro.plate("outer", 2, dim=-2), pyro.plate("groups", y.shape[0]):
            pyro.sample("theta", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="local site 'theta' is in the plates"):
        AutoAmortizedCNF(two_plates, "groups", group_data)(y)


@pytest.mark.slow
def test_two_thousand_groups_on_subsamples_of_a_hundred_match_the_exact_posterior():
    y = data(2000)
    guide = fit(y, 3000, subsample_size=100)
    mu_mean, mu_sd, theta_mean, theta_sd = exact_posterior(y)
    mus, thetas = [], []
    for _ in range(4):  # 800 draws of every group: a Monte Carlo error of 0.035 sd per group
        with torch.no_grad(), pyro.plate("draws", 200, dim=-2):
            draws = guide(y)
        mus.append(draws["mu"].reshape(-1))
        thetas.append(draws["theta"])
    mu, theta = torch.cat(mus), torch.cat(thetas)
    assert abs(mu.mean() - mu_mean) < 0.2 * mu_sd
    assert abs(mu.std() / mu_sd - 1) < 0.2
    assert ((theta.mean(0) - theta_mean).abs() < 0.25 * theta_sd).all()
    assert ((theta.std(0) / theta_sd - 1).abs() < 0.2).all()


def test_to_inference_data_draws_every_group_of_the_full_data_model():
    pytest.importorskip("arviz")
    from pyro_cnf import to_inference_data

    y = data(12)
    guide = AutoAmortizedCNF(hierarchical, "groups", group_data)
    svi = SVI(hierarchical, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(5):
        svi.step(y, subsample_size=4)
    idata = to_inference_data(hierarchical, guide, y, num_samples=30, seed=0)
    assert idata.posterior["theta"].shape == (1, 30, 12)
    assert idata.log_likelihood["y"].shape == (1, 30, 12)
    # the pointwise log-likelihood is the model's, at the guide's own draws
    theta = torch.as_tensor(idata.posterior["theta"].values[0])
    expected = dist.Normal(theta[..., None], 1.0).log_prob(y).sum(-1)
    assert torch.allclose(torch.as_tensor(idata.log_likelihood["y"].values[0]), expected)
