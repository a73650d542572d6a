r"""Eight schools (Rubin 1981; Gelman et al., *Bayesian Data Analysis*, §5.5), both parametrizations.

.. math::

    \mu \sim \mathcal N(0, 5^2), \quad \tau \sim \mathrm{HalfCauchy}(5), \quad
    \theta_j \sim \mathcal N(\mu, \tau^2), \quad y_j \sim \mathcal N(\theta_j, \sigma_j^2),
    \quad j = 1, \dots, 8,

with :math:`y = (28, 8, -3, 7, -1, 1, 18, 12)` and :math:`\sigma = (15, 10, 16, 11, 9, 11, 10, 18)`.
The non-centered version samples :math:`\tilde\theta_j \sim \mathcal N(0, 1)` and sets
:math:`\theta = \mu + \tau\tilde\theta` (a deterministic site).

**Reference (exact up to quadrature error).** Given :math:`(\mu, \tau)` the schools decouple and
:math:`\theta` integrates out: :math:`y_j \mid \mu, \tau \sim \mathcal N(\mu, \tau^2 + \sigma_j^2)`.
So :math:`Z = \iint p(\mu)\, p(\tau)\, \tau \prod_j \mathcal N(y_j; \mu, \tau^2 + \sigma_j^2)
\, d\mu\, d\log\tau`, a 2-D integral done by the trapezoid rule over :math:`(\mu, \log\tau)`. The
conditional posterior of :math:`\theta_j` is normal-normal conjugate,

.. math::

    \theta_j \mid \mu, \tau, y \sim \mathcal N\Big(\frac{\sigma_j^2 \mu + \tau^2 y_j}{\tau^2 + \sigma_j^2},
    \frac{\tau^2 \sigma_j^2}{\tau^2 + \sigma_j^2}\Big),

and its marginal moments follow by the law of total variance
(:math:`\mathrm{Var}\,\theta_j = E[\mathrm{Var}(\theta_j \mid \mu, \tau)] + \mathrm{Var}(E[\theta_j \mid \mu, \tau])`);
likewise for :math:`\tilde\theta_j = (\theta_j - \mu)/\tau`.

ArviZ ships NUTS draws of this model, but its centered run has divergences and is biased: it is not
ground truth; this quadrature is.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ._base import BayesianModel, Reference, float64, shared
from ._quadrature import Box, Grid, integrate_2d, max_change

__all__ = [
    "SIGMA",
    "Y",
    "eight_schools_centered",
    "eight_schools_noncentered",
    "eight_schools_quadrature",
    "log_marginal",
]

Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
"""Estimated treatment effects of the eight schools."""
SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
"""Their standard errors."""

# mu: 10 prior sds each side. log tau: the density falls like tau as tau -> 0 (e^-40 at the lower
# edge) and faster than tau^-8 as tau -> infinity (tau = e^12 ~ 1.6e5 at the upper edge).
_BOX: Box = ((-50.0, 50.0), (-40.0, 12.0))
_NUM_NODES = (401, 401)  # converged to ~1e-14 already at (201, 201): see the tests


def _centered_model() -> None:
    y, sigma = torch.tensor(Y), torch.tensor(SIGMA)
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(Y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _noncentered_model() -> None:
    y, sigma = torch.tensor(Y), torch.tensor(SIGMA)
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(Y)):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_tilde)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def log_marginal(mu: Tensor, log_tau: Tensor) -> Tensor:
    r"""The unnormalized log posterior of :math:`(\mu, \log\tau)`, with :math:`\theta` integrated out.

    .. math::
        \log p(\mu) + \log p(\tau) + \log\tau
        + \sum_j \log \mathcal{N}(y_j;\, \mu,\, \tau^2 + \sigma_j^2)

    (the :math:`\log\tau` term is the Jacobian of :math:`\tau = e^{\log\tau}`).

    Arguments:
        mu: Values of :math:`\mu`.
        log_tau: Values of :math:`\log\tau`, broadcasting with ``mu``.

    Returns:
        The log density at each point, of the broadcast shape.
    """
    tau = log_tau.exp()
    total = dist.Normal(0.0, 5.0).log_prob(mu) + dist.HalfCauchy(5.0).log_prob(tau) + log_tau
    for y, sigma in zip(Y, SIGMA, strict=True):
        total = total + dist.Normal(mu, (tau**2 + sigma**2).sqrt()).log_prob(torch.tensor(y))
    return total


def _moments(grid: Grid) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    mu, tau = grid.x, grid.y.exp()
    mean, sd = {}, {}
    mean["mu"], sd["mu"] = grid.mean_sd(mu)
    mean["tau"], sd["tau"] = grid.mean_sd(tau)
    for site in ("theta", "theta_tilde"):
        means, sds = [], []
        for y, sigma in zip(Y, SIGMA, strict=True):
            total = tau**2 + sigma**2
            if site == "theta":  # conditional posterior of theta_j given (mu, tau)
                cond_mean, cond_var = (
                    (sigma**2 * mu + tau**2 * y) / total,
                    tau**2 * sigma**2 / total,
                )
            else:  # of theta_tilde_j = (theta_j - mu) / tau, written to stay finite as tau -> 0
                cond_mean, cond_var = (y - mu) * tau / total, sigma**2 / total
            m, s = grid.mean_sd(cond_mean)
            means.append(m)
            sds.append((s**2 + grid.expect(cond_var)).sqrt())  # law of total variance
        mean[site], sd[site] = torch.stack(means), torch.stack(sds)
    return mean, sd


def eight_schools_quadrature(
    num_nodes: tuple[int, int] = _NUM_NODES, box: Box = _BOX, check: bool = True
) -> Reference:
    r"""Exact log Z and posterior moments of eight schools by quadrature over :math:`(\mu, \log\tau)`.

    Arguments:
        num_nodes: Trapezoid nodes along :math:`\mu` and :math:`\log\tau`. Odd numbers let the
            refinement check reuse every other node.
        box: ``((mu_lo, mu_hi), (log_tau_lo, log_tau_hi))``.
        check: Also integrate on the grid with half the nodes and record the largest change of
            log Z and of any mean or sd in ``details["refinement_change"]``.

    Returns:
        A :class:`~pyro_cnf.models.Reference` with sites ``mu``, ``tau``, ``theta`` and ``theta_tilde``
        (a superset of each parametrization's sites).

    Example:
        >>> ref = eight_schools_quadrature((201, 201), check=False)
        >>> round(ref.log_Z, 2), round(float(ref.mean["tau"]), 1)
        (-31.31, 3.6)
    """
    details: dict[str, object] = {"num_nodes": num_nodes, "box": box}
    with float64():
        grid = integrate_2d(log_marginal, box, num_nodes)
        mean, sd = _moments(grid)
        if check:
            half = ((num_nodes[0] + 1) // 2, (num_nodes[1] + 1) // 2)
            coarse = integrate_2d(log_marginal, box, half)
            coarse_mean, coarse_sd = _moments(coarse)
            details["refinement_change"] = max(
                abs(grid.log_Z - coarse.log_Z),
                max_change(mean, coarse_mean),
                max_change(sd, coarse_sd),
            )
    kind = (
        f"quadrature ({num_nodes[0]} x {num_nodes[1]} trapezoid nodes over (mu, log tau), "
        "theta integrated out analytically)"
    )
    return Reference(grid.log_Z, mean, sd, kind, details)


def _reference(sites: tuple[str, ...]) -> Reference:
    full = eight_schools_quadrature()
    return Reference(
        full.log_Z,
        {k: full.mean[k] for k in sites},
        {k: full.sd[k] for k in sites},
        full.kind,
        full.details,
    )


def eight_schools_centered() -> BayesianModel:
    r"""Eight schools, centered: latent sites ``mu``, ``tau``, ``theta`` (shape ``(8,)``).

    The hard parametrization: at small :math:`\tau` the posterior of :math:`(\tau, \theta)` is a
    funnel. Its reference is exact (see the module docstring) and equals the non-centered one on
    the shared sites; the two also share :math:`\log Z`: the non-centered latent is a change of
    variables :math:`\theta = \mu + \tau\tilde\theta` of this one, each trace scores a normalized
    prior times the same likelihood, and :math:`Z = p(y) = \int p(y \mid \theta)\, p(\theta)\,
    d\theta` does not depend on how :math:`\theta` is parametrized.

    Example:
        >>> m = eight_schools_centered()
        >>> m.latent_sites, m.latent_dim
        (('mu', 'tau', 'theta'), 10)
    """
    sites = ("mu", "tau", "theta")
    return shared(
        ("eight_schools_centered",),
        lambda: BayesianModel(
            "eight_schools_centered",
            _centered_model,
            sites,
            "Eight schools, centered: mu ~ N(0, 5), tau ~ HalfCauchy(5), theta_j ~ N(mu, tau), "
            "y_j ~ N(theta_j, sigma_j). Reference: exact, 2-D quadrature over (mu, log tau).",
            lambda: _reference(sites),
        ),
    )


def eight_schools_noncentered() -> BayesianModel:
    r"""Eight schools, non-centered: latent sites ``mu``, ``tau``, ``theta_tilde``; ``theta`` deterministic.

    Same posterior as :func:`eight_schools_centered` in other coordinates, and the same
    :math:`\log Z` (a change of variables of the latent leaves :math:`p(y)` unchanged). The
    reference also holds the deterministic site ``theta``.

    Example:
        >>> m = eight_schools_noncentered()
        >>> m.latent_sites
        ('mu', 'tau', 'theta_tilde')
    """
    sites = ("mu", "tau", "theta_tilde")
    return shared(
        ("eight_schools_noncentered",),
        lambda: BayesianModel(
            "eight_schools_noncentered",
            _noncentered_model,
            sites,
            "Eight schools, non-centered: theta_tilde_j ~ N(0, 1), theta = mu + tau theta_tilde. "
            "Reference: exact, 2-D quadrature over (mu, log tau).",
            lambda: _reference((*sites, "theta")),
        ),
    )
