r"""Bayesian logistic regression on a real data set: Wisconsin diagnostic breast cancer.

.. math::

    \alpha \sim \mathcal N(0, 5^2), \qquad \beta_k \sim \mathcal N(0, 1), \quad k = 1, \dots, 10,
    \qquad y_i \sim \mathrm{Bernoulli}\big(\sigma(\alpha + x_i^\top \beta)\big), \quad i = 1, \dots, 569.

**Data.** The breast-cancer data set bundled with scikit-learn
(:func:`sklearn.datasets.load_breast_cancer`; read from the installed package, never downloaded):
569 tumours, target 1 = benign, 0 = malignant. Of its 30 features we keep the ten "mean"
ones (columns 0-9: radius, texture, perimeter, area, smoothness, compactness, concavity, concave
points, symmetry, fractal dimension), standardized to mean 0 and standard deviation 1. Radius,
perimeter and area are almost collinear, so the posterior has strong correlations: a good test for
a flow guide. The data are not linearly separable with these ten features, and the prior keeps
the posterior proper regardless.

**Reference.** No closed form: posterior means and standard deviations come from NUTS run by
pyro-cnf itself (:func:`logistic_regression_nuts`: by default 2 chains x 1000 draws after 500
warm-up, seeds 0 and 1, float64), computed the first time the reference is asked for (about a minute
on one CPU core; R-hat 1.000, smallest effective sample size ~2800, so the Monte Carlo error of
each mean is about 2% of its sd). ``log_Z`` is ``None``; ``details`` holds R-hat, effective sample
sizes and wall time.

Requires scikit-learn (in the ``test`` and ``examples`` extras) when the model is first run.
"""

from __future__ import annotations

import time
from functools import lru_cache

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import effective_sample_size, split_gelman_rubin
from torch import Tensor

from .._checks import check_positive_int
from ._base import BayesianModel, Reference, float64, own_rng, shared

__all__ = ["FEATURES", "breast_cancer_data", "logistic_regression", "logistic_regression_nuts"]

FEATURES = tuple(range(10))
"""Columns of scikit-learn's breast-cancer features that the model uses (the ten "mean" ones)."""

INTERCEPT_SCALE = 5.0
WEIGHT_SCALE = 1.0


@lru_cache(maxsize=1)
def _raw_data() -> tuple[tuple[str, ...], Tensor, Tensor]:
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the logistic_regression model reads scikit-learn's bundled breast-cancer data: "
            "pip install scikit-learn (or pyro-cnf[test])"
        ) from error
    bunch = load_breast_cancer()
    x = torch.as_tensor(bunch.data[:, list(FEATURES)], dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0, unbiased=False)
    y = torch.as_tensor(bunch.target, dtype=torch.float64)
    names = tuple(str(bunch.feature_names[k]) for k in FEATURES)
    return names, x, y


def breast_cancer_data(dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """The standardized features ``(569, 10)`` and 0/1 targets ``(569,)`` the model conditions on.

    Arguments:
        dtype: Floating dtype of the result (default: the current default dtype).
    """
    _, x, y = _raw_data()
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return x.to(dtype), y.to(dtype)


def _model() -> None:
    x, y = breast_cancer_data()
    intercept = pyro.sample("intercept", dist.Normal(0.0, INTERCEPT_SCALE))
    # The coefficients live in a plate, not in an event dim: Predictive(parallel=True) pads a
    # posterior draw's shape with singleton dims by counting only its batch dims, so a
    # (samples, 10) draw of an event-shaped site outside every plate would not broadcast.
    with pyro.plate("features", x.shape[-1]):
        weights = pyro.sample("weights", dist.Normal(0.0, WEIGHT_SCALE))
    with pyro.plate("data", x.shape[0]):
        # batch dims of the latents (vectorized particles, Predictive, log_joint) sit left of the
        # plate dim: (..., 1, 10) * (569, 10) summed over the features -> (..., 569)
        logits = intercept + (weights.unsqueeze(-2) * x).sum(-1)
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def _log_joint(intercept: Tensor, weights: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The model's log joint written out (unbatched): what NUTS samples from."""
    logits = intercept + x @ weights
    return (
        dist.Normal(0.0, INTERCEPT_SCALE).log_prob(intercept)
        + dist.Normal(0.0, WEIGHT_SCALE).log_prob(weights).sum()
        + dist.Bernoulli(logits=logits).log_prob(y).sum()
    )


def logistic_regression_nuts(
    num_chains: int = 2, num_samples: int = 1000, warmup_steps: int = 500, seed: int = 0
) -> Reference:
    r"""Posterior means and sds of the logistic regression by NUTS (made by pyro-cnf, float64).

    Pyro's ``MCMC(NUTS)`` with a dense mass matrix (the weights are strongly correlated) samples
    the model's log joint written out in closed form (every site is real-valued, so there is no
    Jacobian; the tests check it equals the trace's log joint). This is about four times faster
    than letting NUTS trace the model at every gradient, for the same target. Chains run one after
    another; chain ``c`` is seeded with ``seed + c`` and starts from a uniform draw in
    :math:`[-2, 2]^{11}`. The caller's RNG state and default dtype are restored afterwards.
    ``details`` records the largest split R-hat and the smallest effective sample size over
    every coordinate, the settings and the wall time.

    Arguments:
        num_chains: Number of chains (>= 2 for R-hat).
        num_samples: Draws kept per chain.
        warmup_steps: Adaptation steps per chain (discarded).
        seed: Seed of the first chain.

    Raises:
        ValueError: If a count is not a positive integer or ``num_chains < 2``.
    """
    for name, value in [
        ("num_chains", num_chains),
        ("num_samples", num_samples),
        ("warmup_steps", warmup_steps),
    ]:
        check_positive_int(name, value)
    if num_chains < 2:
        raise ValueError(f"num_chains must be >= 2 to compute R-hat, got {num_chains}")
    start = time.perf_counter()
    chains: list[dict[str, Tensor]] = []
    with float64():
        x, y = breast_cancer_data()

        def potential(params: dict[str, Tensor]) -> Tensor:
            return -_log_joint(params["intercept"], params["weights"], x, y)

        for chain in range(num_chains):
            with own_rng(seed + chain):
                init = {
                    "intercept": 4 * torch.rand(()) - 2,
                    "weights": 4 * torch.rand(x.shape[1]) - 2,
                }
                kernel = NUTS(potential_fn=potential, full_mass=True)
                mcmc = MCMC(
                    kernel,
                    num_samples=num_samples,
                    warmup_steps=warmup_steps,
                    initial_params=init,
                    disable_progbar=True,
                )
                mcmc.run()
            chains.append(mcmc.get_samples())
    wall = time.perf_counter() - start
    draws = {k: torch.stack([c[k] for c in chains]) for k in ("intercept", "weights")}
    r_hat = max(float(split_gelman_rubin(v, 0, 1).max()) for v in draws.values())
    ess = min(float(effective_sample_size(v, 0, 1).min()) for v in draws.values())
    mean = {k: v.mean((0, 1)) for k, v in draws.items()}
    sd = {k: v.flatten(0, 1).std(0) for k, v in draws.items()}
    kind = (
        f"NUTS (made by pyro-cnf: seed {seed}, {num_chains} chains x {num_samples} draws after "
        f"{warmup_steps} warm-up, dense mass matrix, max split R-hat {r_hat:.3f}, "
        f"{wall:.0f} s)"
    )
    details = {
        "r_hat": r_hat,
        "min_ess": ess,
        "num_chains": num_chains,
        "num_samples": num_samples,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "wall_time_s": wall,
        "features": _raw_data()[0],
    }
    return Reference(None, mean, sd, kind, details)


def logistic_regression() -> BayesianModel:
    r"""Bayesian logistic regression on breast-cancer data: sites ``intercept`` and ``weights`` (10).

    Building the object loads nothing; the data are read on the first call of the model and the
    NUTS reference is run on the first access to :attr:`~BayesianModel.reference`.

    Example:
        >>> m = logistic_regression()
        >>> m.latent_sites
        ('intercept', 'weights')
    """
    return shared(
        ("logistic_regression",),
        lambda: BayesianModel(
            "logistic_regression",
            _model,
            ("intercept", "weights"),
            "Bayesian logistic regression, breast-cancer data (569 x 10 standardized 'mean' "
            "features): intercept ~ N(0, 5), weights ~ N(0, 1). Reference: NUTS made by pyro-cnf.",
            logistic_regression_nuts,
        ),
    )
