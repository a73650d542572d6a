r"""Eight posteriors of posteriordb as zoo entries, with their reference draws.

`posteriordb <https://github.com/stan-dev/posteriordb>`_ (Magnusson et al., 2022,
`arXiv:2407.04967 <https://arxiv.org/abs/2407.04967>`_) publishes models, data and reference
draws from long, checked runs of Stan's NUTS. :func:`load_posteriordb` turns eight of them into
:class:`~pyro_cnf.models.BayesianModel` objects: a Pyro model written here from each model's
math, the data read from the posterior's ``data.json``, and a
:class:`~pyro_cnf.models.Reference` whose ``mean``, ``sd`` and ``draws`` come from its
``reference_draws.json`` (``log_Z`` is ``None``). Every quantity of the reference draws is a
sample or deterministic site of the Pyro model with the same shape, so guide draws and reference
draws compare by name.

==========================================  =====  ===============================================
name                                        d      latent sites (deterministic sites)
==========================================  =====  ===============================================
``eight_schools-eight_schools_noncentered``  10    mu, tau, theta_trans (8); (theta)
``arK-arK``                                  7     alpha, beta (5), sigma
``garch-garch11``                            4     mu, alpha0, alpha1, beta1_fraction; (beta1)
``gp_pois_regr-gp_pois_regr``                13    rho, alpha, f_tilde (11); (f)
``low_dim_gauss_mix-low_dim_gauss_mix``      5     mu (2, ordered), sigma (2), theta
``kidiq-kidscore_interaction``               5     beta (4), sigma
``diamonds-diamonds``                        26    b (24), Intercept, sigma
``hudson_lynx_hare-lotka_volterra``          8     theta (4), z_init (2), sigma (2)
==========================================  =====  ===============================================

Two models reparametrize, exactly: in GARCH(1, 1) the bound :math:`\beta_1 < 1 - \alpha_1` is
written :math:`\beta_1 = (1 - \alpha_1)\, u` with :math:`u \in (0, 1)` (the site
``beta1_fraction``) and the flat prior on the triangle becomes the density :math:`1 - \alpha_1` of
:math:`(\alpha_1, u)`; the posteriordb names ``beta1`` (GARCH), ``theta`` (eight schools) and
``f`` (the Gaussian process) are deterministic sites. Improper flat priors are
``ImproperUniform`` sites whose ``sample()`` returns a feasible point (0, 1 or 1/2 for a real,
positive or unit-interval site), which is where Pyro's guides start them.
The Gaussian-process model adds only :math:`10^{-10}` to its kernel's diagonal, as the original
does: run it in float64. The Lotka-Volterra model solves its ODE with torchdiffeq (``dopri5``,
``ode_rtol``) for the log populations, which keeps them positive; where the solver fails (its
step size underflows as the solution blows up) the model's density is zero (a ``-inf`` factor),
as Stan rejects such a point.

The posteriors are read from a folder with posteriordb's layout (one folder per posterior holding
``data.json`` and ``reference_draws.json``, unzipped): the ``root`` argument, else the
``PYRO_CNF_POSTERIORDB`` environment variable. Nothing of posteriordb ships with pyro-cnf.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from ._base import BayesianModel, Reference, shared
from ._priors import PositiveNormal, flat

__all__ = ["ENV_VAR", "POSTERIORS", "load_posteriordb", "posteriordb_root"]

ENV_VAR = "PYRO_CNF_POSTERIORDB"
"""The environment variable that names the posteriordb folder when ``root`` is not given."""

POSTERIORS = (
    "eight_schools-eight_schools_noncentered",
    "arK-arK",
    "garch-garch11",
    "gp_pois_regr-gp_pois_regr",
    "low_dim_gauss_mix-low_dim_gauss_mix",
    "kidiq-kidscore_interaction",
    "diamonds-diamonds",
    "hudson_lynx_hare-lotka_volterra",
)
"""The posteriordb names :func:`load_posteriordb` knows (the folder names)."""


def posteriordb_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The posteriordb folder: ``root`` if given, else the ``PYRO_CNF_POSTERIORDB`` variable.

    Raises:
        ValueError: If neither is set.
        FileNotFoundError: If the folder does not exist.

    Example:
        >>> posteriordb_root("/no/such/folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: posteriordb folder /no/such/folder (from the root argument) does not exist...
    """
    source = "the root argument"
    if root is None:
        root, source = os.environ.get(ENV_VAR), f"the {ENV_VAR} environment variable"
    if not root:
        raise ValueError(
            f"no posteriordb folder: pass root= or set the {ENV_VAR} environment variable to a "
            "folder with posteriordb's layout (one folder per posterior with data.json and "
            "reference_draws.json)"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"posteriordb folder {path} (from {source}) does not exist; pass root= or set "
            f"{ENV_VAR} to a folder with posteriordb's layout"
        )
    return path


class _Data:
    """A posterior's data, converted to tensors of the current default dtype on first use.

    ``ode_rtol``: the tolerance of an ODE solve inside the model (Lotka-Volterra's).
    """

    def __init__(self, raw: dict[str, Any], ode_rtol: float) -> None:
        self.raw = raw
        self.ode_rtol = ode_rtol
        self._cache: dict[tuple[str, torch.dtype], Tensor] = {}

    def __call__(self, name: str) -> Tensor:
        key = (name, torch.get_default_dtype())
        if key not in self._cache:
            self._cache[key] = torch.tensor(self.raw[name], dtype=key[1])
        return self._cache[key]


def _matvec(matrix: Tensor, vector: Tensor) -> Tensor:
    """``matrix @ vector`` over batch dims of either: (..., n, k) x (..., k) -> (..., n)."""
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


# Each model takes its data and returns None. Vector latents sit in plates at dim -1 (or are
# event-shaped where their coordinates are coupled), so the models vectorize over draws: batch
# dims of scalar sites end in a singleton plate dim and broadcast against the data plate.


def _eight_schools(data: _Data) -> None:
    y, sigma = data("y"), data("sigma")
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("J", y.shape[-1]):
        theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_trans)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _ark(data: _Data) -> None:
    y, order = data("y"), int(data.raw["K"])
    length = y.shape[-1]
    alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
    with pyro.plate("lags", order):
        beta = pyro.sample("beta", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    # column k holds y[t - k - 1] for t = K, ..., T - 1 (0-based)
    lags = torch.stack([y[order - k - 1 : length - k - 1] for k in range(order)], -1)
    with pyro.plate("time", length - order):
        pyro.sample("y", dist.Normal(alpha + _matvec(lags, beta), sigma), obs=y[order:])


def _garch(data: _Data) -> None:
    y, sigma1 = data("y"), float(data.raw["sigma1"])
    length = y.shape[-1]
    mu = pyro.sample("mu", flat(constraints.real))
    alpha0 = pyro.sample("alpha0", flat(constraints.positive))
    alpha1 = pyro.sample("alpha1", flat(constraints.unit_interval))
    fraction = pyro.sample("beta1_fraction", flat(constraints.unit_interval))
    beta1 = pyro.deterministic("beta1", (1.0 - alpha1) * fraction)
    # flat on the triangle 0 < beta1 < 1 - alpha1: density |d beta1 / d fraction| in (alpha1, fraction)
    pyro.factor("beta1_jacobian", torch.log1p(-alpha1))
    # s_t^2 = c_t + beta1 s_{t-1}^2 with c_1 = sigma1^2, c_t = alpha0 + alpha1 (y_{t-1} - mu)^2,
    # so s_t^2 = sum_{j <= t} beta1^(t - j) c_j: one product with a lower-triangular matrix.
    mu, alpha0, alpha1, beta1 = (torch.atleast_1d(v) for v in (mu, alpha0, alpha1, beta1))
    c = torch.cat(
        [
            torch.full_like(alpha0, sigma1**2),
            alpha0 + alpha1 * (y[:-1] - mu) ** 2,
        ],
        -1,
    )
    steps = torch.arange(length, dtype=y.dtype)
    gap = steps.unsqueeze(-1) - steps  # t - j; beta1^0 = 1 on the diagonal, 0 above it
    powers = torch.where(
        gap > 0, (gap.clamp_min(1) * beta1.log().unsqueeze(-1)).exp(), (gap == 0).to(y.dtype)
    )
    scale = _matvec(powers, c).sqrt()
    with pyro.plate("time", length):
        pyro.sample("y", dist.Normal(mu, scale), obs=y)


def _gp_pois_regr(data: _Data) -> None:
    x, k = data("x"), data("k")
    rho = pyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(2.0))
    size = x.shape[-1]
    with pyro.plate("n", size):
        f_tilde = pyro.sample("f_tilde", dist.Normal(0.0, 1.0))
        square = (x.unsqueeze(-1) - x) ** 2
        kernel = alpha[..., None] ** 2 * torch.exp(-square / (2 * rho[..., None] ** 2))
        kernel = kernel + 1e-10 * torch.eye(size, dtype=x.dtype)
        f = pyro.deterministic("f", _matvec(torch.linalg.cholesky(kernel), f_tilde))
        pyro.sample("k", dist.Poisson(f.exp()), obs=k)


def _low_dim_gauss_mix(data: _Data) -> None:
    y = data("y")
    mu = pyro.sample("mu", flat(constraints.ordered_vector, (), (2,)))
    # N(0, 2) on each mu[i], restricted to the ordered set (the restriction's mass is a constant)
    pyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum(-1))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = pyro.sample("theta", dist.Beta(5.0, 5.0))
    weights = torch.stack([theta.log(), torch.log1p(-theta)], -1)
    mixture = dist.MixtureSameFamily(dist.Categorical(logits=weights), dist.Normal(mu, sigma))
    with pyro.plate("data", y.shape[-1]):
        pyro.sample("y", mixture, obs=y)


def _kidiq(data: _Data) -> None:
    score, hs, iq = data("kid_score"), data("mom_hs"), data("mom_iq")
    design = torch.stack([torch.ones_like(hs), hs, iq, hs * iq], -1)
    with pyro.plate("coefficients", 4):
        beta = pyro.sample("beta", flat(constraints.real, (4,)))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    with pyro.plate("data", score.shape[-1]):
        pyro.sample("kid_score", dist.Normal(_matvec(design, beta), sigma), obs=score)


def _diamonds(data: _Data) -> None:
    x, y = data("X"), data("Y")
    centred = x[:, 1:] - x[:, 1:].mean(0)
    with pyro.plate("coefficients", centred.shape[-1]):
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
    intercept = pyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = pyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    with pyro.plate("data", y.shape[-1]):
        pyro.sample("Y", dist.Normal(intercept + _matvec(centred, b), sigma), obs=y)


def _lotka_volterra(data: _Data) -> None:
    from torchdiffeq import odeint

    times, y_init, y = data("ts"), data("y_init"), data("y")
    loc = torch.tensor([1.0, 0.05, 1.0, 0.05], dtype=times.dtype)
    scale = torch.tensor([0.5, 0.05, 0.5, 0.05], dtype=times.dtype)
    theta = pyro.sample("theta", PositiveNormal(loc, scale).to_event(1))
    z_init = pyro.sample("z_init", dist.LogNormal(math.log(10.0), 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(-1.0, 1.0).expand([2]).to_event(1))
    alpha, beta, gamma, delta = theta.unbind(-1)

    # The populations are solved in log space, d log u / dt = alpha - beta v and
    # d log v / dt = -gamma + delta u: the same solution, and it stays positive at any tolerance.
    def field(_: Tensor, log_z: Tensor) -> Tensor:
        u, v = log_z.exp().unbind(-1)
        return torch.stack([alpha - beta * v, -gamma + delta * u], -1)

    grid = torch.cat([times.new_zeros(1), times])
    try:
        log_z = odeint(
            field, z_init.log(), grid, rtol=data.ode_rtol, atol=data.ode_rtol, method="dopri5"
        )[1:]
        log_z = log_z.movedim(0, -2)  # (..., N, 2)
    except AssertionError:  # torchdiffeq's step size underflowed: the solution blows up here
        # as Stan rejects such a point: zero density (a sampler treats it as a divergence)
        pyro.factor("ode_failed", z_init.new_full(z_init.shape[:-1], -math.inf))
        log_z = z_init.new_zeros(z_init.shape[:-1] + (times.shape[-1], 2))
    pyro.sample("y_init", dist.LogNormal(z_init.log(), sigma).to_event(1), obs=y_init)
    pyro.sample("y", dist.LogNormal(log_z, sigma.unsqueeze(-2)).to_event(2), obs=y)


class _Posterior(NamedTuple):
    body: Callable[[_Data], None]  # the model, given its data
    latents: tuple[str, ...]
    description: str


_POSTERIORS: dict[str, _Posterior] = {
    "eight_schools-eight_schools_noncentered": _Posterior(
        _eight_schools,
        ("mu", "tau", "theta_trans"),
        "Eight schools, non-centered: mu ~ N(0, 5), tau ~ HalfCauchy(5), theta_trans ~ N(0, 1), "
        "theta = mu + tau theta_trans, y ~ N(theta, sigma).",
    ),
    "arK-arK": _Posterior(
        _ark,
        ("alpha", "beta", "sigma"),
        "AR(5) on 200 points: alpha, beta[1..5] ~ N(0, 10), sigma ~ HalfCauchy(2.5).",
    ),
    "garch-garch11": _Posterior(
        _garch,
        ("mu", "alpha0", "alpha1", "beta1_fraction"),
        "GARCH(1, 1) on 200 points, flat priors on mu, alpha0 > 0 and the triangle "
        "0 < alpha1, 0 < beta1 < 1 - alpha1 (beta1 = (1 - alpha1) beta1_fraction).",
    ),
    "gp_pois_regr-gp_pois_regr": _Posterior(
        _gp_pois_regr,
        ("rho", "alpha", "f_tilde"),
        "Latent Gaussian process with Poisson counts (11 points): rho ~ Gamma(25, 4), "
        "alpha ~ HalfNormal(2), f = chol(K) f_tilde, k ~ Poisson(exp(f)).",
    ),
    "low_dim_gauss_mix-low_dim_gauss_mix": _Posterior(
        _low_dim_gauss_mix,
        ("mu", "sigma", "theta"),
        "Two-component normal mixture of 1000 points, ordered means mu ~ N(0, 2), "
        "sigma ~ HalfNormal(2), theta ~ Beta(5, 5).",
    ),
    "kidiq-kidscore_interaction": _Posterior(
        _kidiq,
        ("beta", "sigma"),
        "Linear regression with an interaction, unscaled predictors (434 children), flat beta, "
        "sigma ~ HalfCauchy(2.5).",
    ),
    "diamonds-diamonds": _Posterior(
        _diamonds,
        ("b", "Intercept", "sigma"),
        "Linear regression with 24 strongly correlated polynomial terms (5000 diamonds): "
        "b ~ N(0, 1), Intercept ~ t3(8, 10), sigma ~ half-t3(0, 10).",
    ),
    "hudson_lynx_hare-lotka_volterra": _Posterior(
        _lotka_volterra,
        ("theta", "z_init", "sigma"),
        "Lotka-Volterra ODE on the lynx-hare pelts (20 years): rates ~ N+(1, 0.5) / "
        "N+(0.05, 0.05), z_init ~ LogNormal(log 10, 1), sigma ~ LogNormal(-1, 1).",
    ),
}
assert tuple(_POSTERIORS) == POSTERIORS

_KEY = re.compile(r"^(?P<site>[^\[\]]+)(?:\[(?P<index>[0-9, ]+)\])?$")


def _parse_draws(chains: list[dict[str, list[float]]]) -> dict[str, Tensor]:
    """``{site: (chains, draws, *site_shape)}`` from posteriordb's ``{"b[3]": draws}`` chains."""
    indices: dict[str, list[tuple[tuple[int, ...], str]]] = {}
    for key in chains[0]:
        match = _KEY.match(key)
        if match is None:
            raise ValueError(f"cannot parse the reference quantity name {key!r}")
        index = tuple(int(i) - 1 for i in (match["index"] or "").replace(" ", "").split(",") if i)
        indices.setdefault(match["site"], []).append((index, key))
    out: dict[str, Tensor] = {}
    for site, entries in indices.items():
        shape = tuple(max(index[d] for index, _ in entries) + 1 for d in range(len(entries[0][0])))
        if math.prod(shape) != len(entries):
            raise ValueError(f"reference quantities of {site!r} do not fill the shape {shape}")
        values = torch.zeros(
            len(chains), len(chains[0][entries[0][1]]), *shape, dtype=torch.float64
        )
        for index, key in entries:
            values[(slice(None), slice(None), *index)] = torch.tensor(
                [chain[key] for chain in chains], dtype=torch.float64
            )
        out[site] = values
    return out


def _reference(folder: Path) -> Reference:
    draws = _parse_draws(json.loads((folder / "reference_draws.json").read_text()))
    num_chains, num_draws = next(iter(draws.values())).shape[:2]
    details: dict[str, Any] = {"num_chains": num_chains, "num_draws": num_draws}
    info_path = folder / "reference_info.json"
    method = "Stan's NUTS"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        diagnostics = info.get("diagnostics", {})
        details["method_arguments"] = info.get("inference", {}).get("method_arguments", {})
        if diagnostics.get("r_hat"):
            details["max_r_hat"] = max(diagnostics["r_hat"])
        if diagnostics.get("effective_sample_size_bulk"):
            details["min_ess_bulk"] = min(diagnostics["effective_sample_size_bulk"])
        method = info.get("inference", {}).get("method", method)
    flat = {site: value.flatten(0, 1) for site, value in draws.items()}
    kind = f"posteriordb reference draws ({method}, {num_chains} chains x {num_draws} draws)"
    return Reference(
        None,
        {site: value.mean(0) for site, value in flat.items()},
        {site: value.std(0) for site, value in flat.items()},
        kind,
        details,
        draws,
    )


def load_posteriordb(
    name: str, root: str | os.PathLike[str] | None = None, *, ode_rtol: float = 1e-6
) -> BayesianModel:
    r"""One of the eight posteriordb posteriors as a zoo entry, with its reference draws.

    The data are read (with the standard library) when the model is built; the reference draws
    when :attr:`~pyro_cnf.models.BayesianModel.reference` is first asked for. The returned object
    is shared within a process (same name, folder and options give the same object).

    Arguments:
        name: A posteriordb posterior name, one of :data:`POSTERIORS` (its folder's name).
        root: A folder with posteriordb's layout (default: the ``PYRO_CNF_POSTERIORDB``
            environment variable).
        ode_rtol: Relative and absolute tolerance of the ODE solve inside
            ``hudson_lynx_hare-lotka_volterra`` (torchdiffeq's ``dopri5``); ignored by the others.

    Returns:
        A :class:`~pyro_cnf.models.BayesianModel` whose reference has ``log_Z = None`` and
        ``draws``: ``{site: (chains, draws, *site_shape)}``, float64.

    Raises:
        ValueError: For an unknown name (the message lists the eight), or when neither ``root``
            nor ``PYRO_CNF_POSTERIORDB`` is set.
        FileNotFoundError: When the folder or the posterior's files are missing.

    Example:
        >>> m = load_posteriordb("kidiq-kidscore_interaction")  # reads PYRO_CNF_POSTERIORDB
        >>> m.latent_sites, m.latent_dim
        (('beta', 'sigma'), 5)
        >>> m.reference.draws["beta"].shape  # 10 chains x 1000 draws of beta[1..4]
        torch.Size([10, 1000, 4])
    """
    if name not in _POSTERIORS:
        raise ValueError(f"unknown posteriordb posterior {name!r}; known: {', '.join(POSTERIORS)}")
    if not (isinstance(ode_rtol, float) and 0.0 < ode_rtol < 1.0):
        raise ValueError(f"ode_rtol must be a float in (0, 1), got {ode_rtol!r}")
    folder = posteriordb_root(root) / name
    for file in ("data.json", "reference_draws.json"):
        if not (folder / file).is_file():
            raise FileNotFoundError(
                f"{folder / file} is missing: the posteriordb folder (root= or {ENV_VAR}) must "
                f"hold a folder {name!r} with data.json and reference_draws.json"
            )

    def build() -> BayesianModel:
        posterior = _POSTERIORS[name]
        data = _Data(json.loads((folder / "data.json").read_text()), ode_rtol)

        def model() -> None:
            posterior.body(data)

        model.__name__ = model.__qualname__ = name.replace("-", "_")
        return BayesianModel(
            name,
            model,
            posterior.latents,
            posterior.description + " Reference: posteriordb's reference draws.",
            lambda: _reference(folder),
        )

    return shared(("posteriordb", name, str(folder.resolve()), ode_rtol), build)
