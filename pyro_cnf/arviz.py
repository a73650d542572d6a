r"""ArviZ integration: InferenceData from any guide, PSIS, LOO for VI draws.

ArviZ's ``from_pyro`` converts MCMC runs only. :func:`to_inference_data` converts a fitted guide
(ours or Pyro's autoguides): it draws :math:`\theta_s \sim q` and stores, next to every draw, the
log joint :math:`\log p(\theta_s, y)` (``lp``), the guide's log-density :math:`\log q(\theta_s)`
(``lp_approx``) and their difference, the importance log-weight (``log_weight``). With those,

* :func:`pareto_smooth` gives Pareto-smoothed weights and :math:`\hat k` (Vehtari et al., PSIS);
* :func:`vi_loo` gives leave-one-out cross-validation corrected for the draws coming from
  :math:`q` rather than the posterior (Magnusson et al., 2019); plain ``az.loo`` treats them as
  posterior draws and is wrong.

:func:`~pyro_cnf.reference.compare_to_reference` compares the result with a reference (e.g. NUTS)
InferenceData.

This module holds what knows ArviZ: it is imported lazily (``import pyro_cnf`` never imports
ArviZ), and the functions that depend on the ArviZ version (0.x or 1.x: ``from_dict``'s signature,
the sign convention of ``psislw``, the ELPD container) are the small functions of
``pyro_cnf/_arviz_compat.py``, keyed on the installed major version. Install with ``pip install "pyro-cnf[arviz]"``.

References:
    * Vehtari, Simpson, Gelman, Yao, Gabry. *Pareto smoothed importance sampling*. JMLR 25(72),
      2024. https://arxiv.org/abs/1507.02646
    * Yao, Vehtari, Simpson, Gelman. *Yes, but did it work?: Evaluating variational inference*.
      ICML 2018. https://arxiv.org/abs/1802.02538
    * Magnusson, Andersen, Jonasson, Vehtari. *Bayesian leave-one-out cross-validation for large
      data*. ICML 2019. https://arxiv.org/abs/1904.10679
"""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.uncondition_messenger import UnconditionMessenger
from torch import Tensor

from ._arviz_compat import add_group, arviz_major, elpd_data, from_dict, group, psislw, require
from .infer.diagnostics import ImportanceDraws, importance_draws
from .infer.fit import FitResult

__all__ = ["pareto_smooth", "to_inference_data", "vi_loo"]

_LOSS_GROUP = "loss_history"


# ----------------------------------------------------------------------------------------------
# Version-independent helpers.
# ----------------------------------------------------------------------------------------------


def _numpy(value: Tensor) -> np.ndarray:
    return (
        value.detach().cpu().to(torch.float64 if value.is_floating_point() else value.dtype).numpy()
    )


def _guide_name(guide: Any) -> str:
    if isinstance(guide, types.FunctionType | types.MethodType):
        return guide.__name__
    return type(guide).__name__


def _check_fitted(guide: Any) -> None:
    """Refuse an autoguide that was never run (its parameters do not exist yet)."""
    from pyro.infer.autoguide import AutoGuide

    if isinstance(guide, AutoGuide) and getattr(guide, "prototype_trace", None) is None:
        raise ValueError(
            f"the guide ({type(guide).__name__}) has never been run, so it has no fitted "
            "parameters: fit it first (e.g. with pyro_cnf.fit_svi)"
        )


class _Release(UnconditionMessenger):
    """Sample the named observed sites instead of observing them (deterministic sites stay)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = frozenset(names)

    def _pyro_sample(self, msg: Any) -> None:
        if msg["name"] in self.names:
            super()._pyro_sample(msg)


def _released_draws(
    model: Callable[..., Any],
    args: Any,
    kwargs: Any,
    draws: ImportanceDraws,
    sites: Mapping[str, tuple[int, ...]],
    fixed: Sequence[str],
) -> dict[str, np.ndarray]:
    """``(1, S, *shape)`` draws of ``sites`` from the model with its observations released.

    One vectorized run of the model, its observed sites sampled instead of observed, under a
    plate of S draws left of the model's plates. The sites named in ``fixed`` are conditioned
    on ``draws.values`` (posterior predictive); with none fixed every site comes from the prior.
    Pyro's ``Predictive`` is not used: it lays out the values of vector-valued sites outside any
    plate with the wrong shape, and ``poutine.uncondition`` would also sample the
    ``pyro.deterministic`` sites (from a Delta broadcast over the draws).
    """
    size, nesting = draws.num_samples, draws.max_plate_nesting
    data = {}
    for name in fixed:
        value, event_dims = draws.values[name], draws.event_dims[name]
        plate_dims = value.dim() - 1 - event_dims
        layout = (size,) + (1,) * (nesting - plate_dims) + tuple(value.shape[1:])
        data[name] = value.reshape(layout)
    release = _Release(list(draws.observed))
    if draws.vectorized:
        released = poutine.condition(release(model), data=data)
        with pyro.plate("_pyro_cnf_draws", size, dim=-(nesting + 1)):
            trace = poutine.trace(released).get_trace(*args, **kwargs)
        return {
            name: _numpy(trace.nodes[name]["value"].reshape(size, *shape))[None]
            for name, shape in sites.items()
        }
    # a model that is not vectorizable over draws (importance_draws found out): one run per draw
    runs = [
        poutine.trace(
            poutine.condition(release(model), data={n: draws.values[n][s] for n in fixed})
        ).get_trace(*args, **kwargs)
        for s in range(size)
    ]
    return {
        name: _numpy(torch.stack([run.nodes[name]["value"].reshape(shape) for run in runs]))[None]
        for name, shape in sites.items()
    }


# ----------------------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------------------


def pareto_smooth(
    log_weights: Tensor | np.ndarray | Sequence[float], *, r_eff: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    r"""Pareto-smoothed importance log-weights and the Pareto :math:`\hat k`, by ArviZ.

    The largest :math:`M = \lceil \min(S/5,\, 3\sqrt{S / r_\mathrm{eff}}) \rceil` weights are
    replaced by quantiles of a generalized Pareto distribution fitted to them, and the result is
    normalized: :math:`\sum_s \exp(\tilde{\log w}_s) = 1`. :math:`\hat k` is the fitted shape:
    below 0.5 importance sampling is reliable, up to :math:`\min(1 - 1/\log_{10} S, 0.7)` it is
    usable, above that it is not. The same function is right on ArviZ 0.x and 1.x: the two
    expect opposite signs (1.x negates its input), which is handled here.

    Arguments:
        log_weights: Log importance weights (unnormalized), draws along the last axis:
            shape ``(S,)``, or ``(..., S)`` for several independent sets.
        r_eff: Relative efficiency of the draws (1 for independent draws such as a guide's).

    Returns:
        ``(smoothed, khat)``: normalized smoothed log-weights of the input's shape, and
        :math:`\hat k` of shape ``log_weights.shape[:-1]`` (a 0-d array for one set; ``inf`` when
        too few draws lie in the tail to fit; ``-inf`` when all weights are equal, as
        :func:`~pyro_cnf.pareto_khat` says: no tail at all).

    Raises:
        ValueError: If there are fewer than 2 draws or a log-weight is not finite.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> light = rng.normal(scale=0.1, size=4000)  # nearly equal weights: a light tail
        >>> smoothed, khat = pareto_smooth(light)
        >>> float(khat) < 0.5, round(float(np.exp(smoothed).sum()), 6)
        (True, 1.0)
    """
    if isinstance(log_weights, Tensor):
        values = _numpy(log_weights)
    else:
        values = np.asarray(log_weights, dtype=np.float64)
    if values.ndim == 0 or values.shape[-1] < 2:
        raise ValueError(
            f"log_weights needs at least 2 draws along its last axis, got shape {values.shape}"
        )
    if not np.isfinite(values).all():
        raise ValueError("log_weights contains NaN or inf")
    if not r_eff > 0:
        raise ValueError(f"r_eff must be > 0, got {r_eff!r}")
    smoothed, khat = psislw(values, float(r_eff))
    equal = values.max(-1) == values.min(-1)  # ArviZ 0.x says inf here, 1.x refuses
    return smoothed, np.where(equal, -np.inf, khat)


@torch.no_grad()
def to_inference_data(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int = 4000,
    batch_size: int | None = None,
    seed: int | None = None,
    log_likelihood: bool = True,
    posterior_predictive: bool = False,
    prior: bool = False,
    losses: FitResult | Sequence[float] | None = None,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    **kwargs: Any,
) -> Any:
    r"""An ArviZ InferenceData of a fitted guide's draws, with :math:`\log p` and :math:`\log q`.

    Works with any Pyro guide whose structure is static and vectorizes (ours, Pyro's autoguides,
    hand-written guides). The guide scores its draws with its exact log-density (CNFs in
    ``.eval()`` mode with the exact trace, as in :func:`~pyro_cnf.importance_diagnostics`).

    Groups (draws are independent: one chain of S draws):

    * ``posterior``: every latent site in its constrained shape, and every ``pyro.deterministic``
      site; the draws come from :math:`q`, unweighted;
    * ``sample_stats``: ``lp`` :math:`= \log p(\theta_s, y)`, ``lp_approx``
      :math:`= \log q(\theta_s)`, ``log_weight`` :math:`=` ``lp - lp_approx``;
    * ``log_likelihood``: the pointwise :math:`\log p(y_i \mid \theta_s)` of every observed site
      (not of ``pyro.factor`` or deterministic sites), and ``observed_data``;
    * optionally ``posterior_predictive`` (one replicate of every observed site per draw),
      ``prior`` and ``prior_predictive`` (S draws from the model with its observations
      released), and ``loss_history`` (variable ``loss`` over dimension ``step``).

    Attributes (root and ``posterior``): ``guide`` (class name), ``num_samples``, ``pareto_k``
    and ``pareto_k_threshold`` of the log-weights (:func:`pareto_smooth`), ``elbo``, versions
    of pyro-cnf, Pyro and torch (ArviZ records its own).

    Arguments:
        model: The Pyro model (with its observations).
        guide: A fitted guide.
        *args: Passed to model and guide.
        num_samples: Number S of draws, at least 2.
        batch_size: Draws per vectorized pass (default: all at once).
        seed: Seed for ``pyro.set_rng_seed``.
        log_likelihood: Store the ``log_likelihood`` group (needs an observed site).
        posterior_predictive: Store ``posterior_predictive``.
        prior: Store ``prior`` and ``prior_predictive``.
        losses: The loss history: a :class:`~pyro_cnf.FitResult` or a sequence of floats.
        coords: ArviZ coordinates, ``{dim: values}``.
        dims: ArviZ dimension names of each variable (without ``chain``/``draw``),
            ``{var: [dim, ...]}``.
        **kwargs: Passed to model and guide.

    Returns:
        An ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x).

    Raises:
        ImportError: If ArviZ is not installed (names the extra to install).
        ValueError: If the guide was never run, ``num_samples < 2``, ``log_likelihood`` is
            asked of a model without observed sites, or a log-weight is not finite.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_cnf import fit_svi
        >>> pyro.clear_param_store()
        >>> def model():
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        ...     with pyro.plate("data", 4):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.tensor([0.5, 1.0, 1.5, 1.2]))
        >>> guide = AutoNormal(model)
        >>> fit = fit_svi(model, guide, num_steps=200, progress=False, seed=0)
        >>> data = to_inference_data(model, guide, num_samples=1000, seed=0, losses=fit)
        >>> data.posterior["mu"].shape, data.log_likelihood["y"].shape
        ((1, 1000), (1, 1000, 4))
        >>> data.posterior.attrs["guide"], data.loss_history["loss"].shape
        ('AutoNormal', (200,))
    """
    require("arviz")
    _check_fitted(guide)
    draws = importance_draws(
        model,
        guide,
        *args,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
        log_likelihood=log_likelihood,
        **kwargs,
    )
    if log_likelihood and not draws.log_likelihood:
        raise ValueError(
            "the model has no observed sample site, so there is no log_likelihood to store: "
            "pass log_likelihood=False"
        )
    log_w = draws.log_weights
    _, khat = pareto_smooth(log_w)
    groups: dict[str, dict[str, np.ndarray]] = {
        "posterior": {name: _numpy(value)[None] for name, value in draws.values.items()},
        "sample_stats": {
            "lp": _numpy(draws.log_joint)[None],
            "lp_approx": _numpy(draws.log_q)[None],
            "log_weight": _numpy(log_w)[None],
        },
    }
    if draws.observed:
        groups["observed_data"] = {name: _numpy(v) for name, v in draws.observed.items()}
    if log_likelihood:
        groups["log_likelihood"] = {n: _numpy(v)[None] for n, v in draws.log_likelihood.items()}
    observed_shapes = {name: tuple(v.shape) for name, v in draws.observed.items()}
    if posterior_predictive and observed_shapes:
        # fix the latents only: the deterministic sites follow from them
        latents = [n for n in draws.values if n not in draws.deterministic]
        groups["posterior_predictive"] = _released_draws(
            model, args, kwargs, draws, observed_shapes, latents
        )
    if prior:
        shapes = {name: tuple(v.shape[1:]) for name, v in draws.values.items()}
        prior_draws = _released_draws(model, args, kwargs, draws, {**shapes, **observed_shapes}, ())
        groups["prior"] = {name: prior_draws[name] for name in shapes}
        if observed_shapes:
            groups["prior_predictive"] = {name: prior_draws[name] for name in observed_shapes}
    from . import __version__

    attrs: dict[str, Any] = {
        "inference_library": "pyro-cnf",
        "inference_library_version": __version__,
        "pyro_version": str(pyro.__version__),
        "torch_version": str(torch.__version__),  # a str subclass that netCDF cannot store
        "guide": _guide_name(guide),
        "num_samples": num_samples,
        "pareto_k": float(khat),
        "pareto_k_threshold": min(1 - 1 / math.log10(num_samples), 0.7),
        "elbo": float(log_w.mean()),
    }
    data = from_dict(groups, coords, dims, attrs)
    if losses is not None:
        history = losses.losses if isinstance(losses, FitResult) else list(losses)
        values = np.asarray(history, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"losses must be a sequence of numbers, got shape {values.shape}")
        xr = require("xarray")
        dataset = xr.Dataset({"loss": ("step", values)}, coords={"step": np.arange(values.size)})
        data = add_group(data, _LOSS_GROUP, dataset)
    return data


def vi_loo(data: Any, *, var_name: str | None = None) -> Any:
    r"""PSIS-LOO of draws from an approximate posterior, corrected by their importance weights.

    With draws :math:`\theta_s \sim q` and log-weights :math:`\log w_s = \log p(\theta_s, y) -
    \log q(\theta_s)` (``sample_stats.log_weight``), the leave-one-out ratios of observation
    :math:`i` are :math:`r_{si} \propto w_s / p(y_i \mid \theta_s)` (Magnusson et al., 2019). They are
    Pareto-smoothed per observation (:func:`pareto_smooth`) into normalized :math:`\tilde w_{si}`,
    and

    .. math::
        \mathrm{elpd}_i = \log \sum_s \tilde w_{si}\, p(y_i \mid \theta_s), \qquad
        \mathrm{elpd}_\mathrm{loo} = \sum_i \mathrm{elpd}_i, \qquad
        \mathrm{se} = \sqrt{n \operatorname{Var}_i \mathrm{elpd}_i}

    (the variance over the :math:`n` data points as the installed ArviZ line computes it:
    dividing by :math:`n` in 0.x, by :math:`n - 1` in 1.x) and
    :math:`p_\mathrm{loo} = \sum_i (\mathrm{lppd}_i - \mathrm{elpd}_i)` with the
    importance-weighted :math:`\mathrm{lppd}_i = \log \sum_s \bar w_s\, p(y_i \mid \theta_s)`
    (:math:`\bar w` the smoothed, normalized :math:`w`). Plain ``az.loo`` on the same draws
    treats them as posterior draws: biased, with poor Pareto :math:`k`. Written here because
    ArviZ 0.x lacks it (arviz-stats 1.x has ``loo_approximate_posterior``); the result is the
    same on both lines.

    Arguments:
        data: An InferenceData (or ArviZ 1.x DataTree) from :func:`to_inference_data`: it needs
            ``log_likelihood`` and ``sample_stats.log_weight``.
        var_name: The observed site to use (required when there are several).

    Returns:
        ArviZ's ELPD container (``ELPDData``, log scale, pointwise values in ``loo_i``/
        ``elpd_i`` and ``pareto_k``), accepted by ``az.compare``. A ``UserWarning`` is issued
        when some Pareto :math:`k` exceeds :math:`\min(1 - 1/\log_{10} S, 0.7)`.

    Raises:
        ValueError: If a group or variable is missing or ambiguous, or a value is not finite.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", 5):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0]))
        >>> def guide():  # close to the exact posterior N(0.5, 1/5)
        ...     pyro.sample("mu", dist.Normal(0.5, 0.5))
        >>> loo = vi_loo(to_inference_data(model, guide, num_samples=4000, seed=0))
        >>> elpd = loo.elpd if hasattr(loo, "elpd") else loo["elpd_loo"]  # ArviZ 1.x or 0.x
        >>> round(float(elpd), 1), bool((loo["pareto_k"] < 0.7).all())
        (-8.3, True)
    """
    require("arviz")
    hint = "build it with pyro_cnf.arviz.to_inference_data(..., log_likelihood=True)"
    log_lik_group = group(data, "log_likelihood", hint)
    names = list(log_lik_group.data_vars)
    if var_name is None:
        if len(names) != 1:
            raise ValueError(
                f"the log_likelihood group holds {names}: choose one with var_name=..."
            )
        var_name = names[0]
    elif var_name not in names:
        raise ValueError(f"no log-likelihood named {var_name!r}; the data has {names}")
    stats = group(data, "sample_stats", hint)
    if "log_weight" not in stats.data_vars:
        raise ValueError(
            "sample_stats has no log_weight (log p - log q of each draw): vi_loo is for draws "
            "from an approximate posterior made by to_inference_data; for MCMC use az.loo"
        )
    log_lik = log_lik_group[var_name]
    sample_dims = ("chain", "draw")
    obs_dims = [dim for dim in log_lik.dims if dim not in sample_dims]
    log_lik = log_lik.transpose(*sample_dims, *obs_dims)
    num_samples = int(log_lik.sizes["chain"] * log_lik.sizes["draw"])
    obs_shape = tuple(log_lik.sizes[d] for d in obs_dims)
    ll = np.asarray(log_lik.values, dtype=np.float64).reshape(num_samples, -1).T  # (n, S)
    log_w = np.asarray(
        stats["log_weight"].transpose(*sample_dims).values, dtype=np.float64
    ).reshape(num_samples)
    if not (np.isfinite(ll).all() and np.isfinite(log_w).all()):
        raise ValueError("the log-likelihood or the log-weights contain NaN or inf")
    scipy_special = require("scipy.special")
    loo_log_w, pareto_k = pareto_smooth(log_w[None, :] - ll)  # per observation
    elpd_i = scipy_special.logsumexp(loo_log_w + ll, axis=-1)
    posterior_log_w, _ = pareto_smooth(log_w)
    lppd_i = scipy_special.logsumexp(posterior_log_w[None, :] + ll, axis=-1)
    n_data_points = elpd_i.size
    good_k = min(1 - 1 / math.log10(num_samples), 0.7) if num_samples > 10 else 0.7
    warning = bool((pareto_k > good_k).any())
    if warning:
        warnings.warn(
            f"{int((pareto_k > good_k).sum())} of {n_data_points} Pareto k exceed {good_k:.2f}: "
            "the leave-one-out estimates of those observations are unreliable",
            UserWarning,
            stacklevel=2,
        )
    template = log_lik.isel(chain=0, draw=0, drop=True)
    return elpd_data(
        elpd=float(elpd_i.sum()),
        # the installed line's convention: ArviZ 0.x divides the variance by n, 1.x by n - 1
        se=float(math.sqrt(n_data_points * np.var(elpd_i, ddof=min(arviz_major(), 1)))),
        p_loo=float((lppd_i - elpd_i).sum()),
        n_samples=num_samples,
        n_data_points=n_data_points,
        warning=warning,
        good_k=good_k,
        elpd_i=template.copy(data=elpd_i.reshape(obs_shape)).rename("loo_i"),
        pareto_k=template.copy(data=pareto_k.reshape(obs_shape)).rename("pareto_k"),
    )
