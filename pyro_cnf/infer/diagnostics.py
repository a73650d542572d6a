r"""Importance diagnostics of a fitted guide: how far to trust it, and a corrected posterior.

With draws :math:`\theta_s \sim q` and log-weights :math:`\log w_s = \log p(\theta_s, y) -
\log q(\theta_s)`:

.. math::
    \mathrm{ELBO} = \frac1S \sum_s \log w_s, \qquad
    \log \hat Z = \operatorname{logsumexp}_s \log w_s - \log S, \qquad
    \mathrm{ESS} = \frac{(\sum_s w_s)^2}{\sum_s w_s^2},

and the Pareto :math:`\hat k` of the largest weights (Yao et al., 2018): below 0.5 the importance
estimates are reliable, up to the sample-size threshold :math:`\min(1 - 1/\log_{10} S, 0.7)` they
are usable, above it the guide misses posterior mass.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.infer.importance import vectorized_importance_weights
from pyro.infer.util import plate_log_prob_sum
from pyro.ops.stats import fit_generalized_pareto
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch import Tensor

from .._checks import check_positive_int
from ..divergence import Exact

__all__ = [
    "ImportanceDiagnostics",
    "ImportanceDraws",
    "importance_diagnostics",
    "importance_draws",
    "pareto_khat",
]


def pareto_khat(log_weights: Tensor) -> float:
    r"""Pareto :math:`\hat k` of importance weights: the shape of a generalized Pareto tail fit.

    Fits the largest :math:`M = \lceil\min(0.2 S, 3\sqrt S)\rceil` weights (Vehtari et al., PSIS)
    with Pyro's ``fit_generalized_pareto``, as ``pyro.infer.importance.psis_diagnostic`` does.

    Arguments:
        log_weights: Log importance weights, shape ``(S,)``.

    Returns:
        :math:`\hat k`: ``inf`` when fewer than 10 weights can form the tail (fewer than 50
        draws, or a few weights far above the rest); ``-inf`` when the largest weights are equal
        to within 0.1 % (no tail at all: the guide is the posterior up to rounding, as with
        float32 log-densities of an exact guide).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> round(pareto_khat(torch.randn(10_000) * 0.1), 1) < 0.5
        True
    """
    log_weights = log_weights.detach().flatten()
    if log_weights.numel() < 2 or not torch.isfinite(log_weights).all():
        raise ValueError("log_weights must hold at least 2 finite values")
    count = log_weights.numel()
    ordered = torch.sort(log_weights - log_weights.max()).values
    tail_size = int(math.ceil(min(0.2 * count, 3.0 * math.sqrt(count))))
    cutoff = max(math.log(1e-15), float(ordered[-tail_size - 1]))
    tail = ordered[ordered > cutoff]
    if tail.numel() < 10:
        if tail_size >= 10 and float(ordered[-1] - ordered[-tail_size - 1]) < 1e-3:
            return -math.inf
        return math.inf
    k, _ = fit_generalized_pareto(tail.exp() - math.exp(cutoff))
    return float(k)


@dataclass
class ImportanceDiagnostics:
    r"""The result of :func:`importance_diagnostics`.

    Attributes:
        log_weights: ``(S,)`` log-weights :math:`\log p(\theta, y) - \log q(\theta)`.
        elbo: Mean log-weight.
        log_evidence: :math:`\\log \\hat Z`.
        log_evidence_se: Delta-method standard error of :math:`\\log \\hat Z`.
        khat: Pareto :math:`\\hat k`.
        khat_threshold: :math:`\\min(1 - 1/\\log_{10} S, 0.7)`.
        ess: Effective sample size of the normalized weights.
        draws: Importance-resampled posterior draws, ``{site: (S, *site_shape)}`` in the
            constrained space (latent and ``pyro.deterministic`` sites).
    """

    log_weights: Tensor
    elbo: float
    log_evidence: float
    log_evidence_se: float
    khat: float
    khat_threshold: float
    ess: float
    draws: dict[str, Tensor] = field(repr=False)

    @property
    def num_samples(self) -> int:
        """The number S of guide draws."""
        return self.log_weights.numel()

    def summary(self) -> str:
        """A few lines for a report."""
        verdict = (
            "good" if self.khat < 0.5 else "usable" if self.khat < self.khat_threshold else "poor"
        )
        return (
            f"S = {self.num_samples}, ELBO = {self.elbo:.4f}, "
            f"log Z = {self.log_evidence:.4f} ± {self.log_evidence_se:.4f}\n"
            f"Pareto k = {self.khat:.3f} ({verdict}; threshold {self.khat_threshold:.2f}), "
            f"ESS = {self.ess:.0f}"
        )


@contextmanager
def exact_traces(guide: Any) -> Iterator[None]:
    """Give every CNF of ``guide`` the exact trace (e.g. instead of Hutchinson's estimate).

    Restores the divergence strategies on exit; the solvers are left as they are.
    """
    from ..transforms.continuous import _CNFBase

    modules = guide.modules() if isinstance(guide, torch.nn.Module) else ()
    swapped = [
        (m, m.divergence) for m in modules if isinstance(m, _CNFBase) and not m.divergence.exact
    ]
    for module, _ in swapped:
        module.divergence = Exact()
    try:
        yield
    finally:
        for module, divergence in swapped:
            module.divergence = divergence


@contextmanager
def exact_scoring(guide: Any) -> Iterator[None]:
    """Score with the guide's evaluation settings: ``.eval()`` solvers and exact CNF traces.

    Restores the guide's mode and divergence strategies on exit.
    """
    if not isinstance(guide, torch.nn.Module):
        yield
        return
    was_training = guide.training
    guide.eval()
    try:
        with exact_traces(guide):
            yield
    finally:
        guide.train(was_training)


def _is_draw(site: dict[str, Any]) -> bool:
    """A latent sample site or a ``pyro.deterministic`` site (what a posterior draw holds)."""
    if site["type"] != "sample" or site_is_subsample(site) or _is_enumerated(site):
        return False
    return not site["is_observed"] or site["infer"].get("_deterministic", False)


def _is_enumerated(site: dict[str, Any]) -> bool:
    """A latent site marked for parallel enumeration (``config_enumerate``): summed out, not drawn."""
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and site["infer"].get("enumerate") == "parallel"
    )


def _is_likelihood(site: dict[str, Any]) -> bool:
    """An observed sample site that scores data: not deterministic, not a ``pyro.factor``."""
    return (
        site["type"] == "sample"
        and site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic", False)
        and not site["infer"].get("is_auxiliary", False)
    )


def _check_full_data(trace: Any, role: str) -> None:
    """Refuse a trace with a sample site in a subsampled plate: its log-density is not the model's.

    A subsampled plate scales its sites' log-densities by ``size / subsample_size``, so a
    log-weight built from one minibatch is a noisy estimate of a different quantity (log Z from
    10 of 100 data points was off by 10 to 28 nats, with a tiny standard error).
    """
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        for frame in site["cond_indep_stack"]:
            if frame.full_size is not None and frame.full_size != frame.size:
                raise ValueError(
                    f"{role} site {name!r} is in plate {frame.name!r} subsampled to "
                    f"{frame.size} of {frame.full_size}: importance weights, log-evidence and "
                    "pointwise log-likelihoods need the full-data model; score the model "
                    "without subsampling (subsample_size=None, or all the data passed in)"
                )


def _check_pointwise(name: str, site: dict[str, Any]) -> None:
    """Refuse observed sites whose pointwise log-likelihood is not one term per data point."""
    scale, mask = site["scale"], site["mask"]
    if not (isinstance(scale, (int, float)) and scale == 1.0):
        raise ValueError(
            f"observed site {name!r} is scaled (poutine.scale): its pointwise log-likelihood "
            "does not match the observed data; pass log_likelihood=False"
        )
    if mask is not None and not (mask is True or (isinstance(mask, Tensor) and bool(mask.all()))):
        raise ValueError(
            f"observed site {name!r} is masked: its pointwise log-likelihood is undefined on "
            "the masked entries"
        )


@dataclass
class _Structure:
    nesting: int  # plate dims used by model and guide
    shapes: dict[str, tuple[int, ...]]  # each draw's shape (latent and deterministic sites)
    deterministic: tuple[str, ...]  # the pyro.deterministic sites among them
    event_dims: dict[str, int]  # each draw site's number of event dims
    observed: dict[str, Tensor]  # each observed (likelihood) site's value
    log_lik_shapes: dict[str, tuple[int, ...]]  # each observed site's pointwise log-prob shape
    enumerated: tuple[str, ...]  # discrete sites the model enumerates (summed out of log p)


def _structure(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: Any,
    kwargs: Any,
    log_likelihood: bool,
) -> _Structure:
    """From one guide run replayed through the model: plate nesting, draw and data shapes."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    nesting = max(
        (
            -frame.dim
            for trace in (guide_trace, model_trace)
            for site in trace.nodes.values()
            for frame in site.get("cond_indep_stack", ())
            if frame.vectorized
        ),
        default=0,
    )
    _check_full_data(guide_trace, "guide")
    _check_full_data(model_trace, "model")
    shapes = {
        name: tuple(site["value"].shape)
        for name, site in model_trace.nodes.items()
        if _is_draw(site)
    }
    observed = {name: site for name, site in model_trace.nodes.items() if _is_likelihood(site)}
    enumerated = tuple(n for n, site in model_trace.nodes.items() if _is_enumerated(site))
    if enumerated and log_likelihood:
        raise ValueError(
            f"the model enumerates {list(enumerated)} (config_enumerate): a pointwise "
            "log-likelihood would need them summed out per data point, which is not done here; "
            "pass log_likelihood=False (importance weights sum them out)"
        )
    if log_likelihood:
        for name, site in observed.items():
            _check_pointwise(name, site)
        model_trace.compute_log_prob(lambda name, site: name in observed)
    return _Structure(
        nesting,
        shapes,
        tuple(n for n in shapes if model_trace.nodes[n]["infer"].get("_deterministic", False)),
        {n: len(model_trace.nodes[n]["fn"].event_shape) for n in shapes},
        {name: site["value"].detach() for name, site in observed.items()},
        {
            name: tuple(site["unscaled_log_prob"].shape)
            for name, site in observed.items()
            if log_likelihood
        },
        enumerated,
    )


def _per_draw(trace: Any, symbol: str | None, size: int) -> Tensor:
    """The trace's (scaled) log-density of each of the ``size`` vectorized draws, in float64."""
    if size == 1:  # Pyro packs away the size-1 particle dimension
        return trace.log_prob_sum().reshape(1).double()
    return plate_log_prob_sum(trace, symbol).reshape(size).double()


class _NotVectorized(Exception):
    """The model gave a wrong shape or a wrong value under a leading draw dimension."""


_Chunk = tuple[Tensor, Tensor, dict[str, Tensor]]  # log p, log q, {site or "log_lik:site": value}


def _vectorize(fn: Callable[..., Any], size: int, nesting: int) -> Callable[..., Any]:
    def vectorized(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate("num_particles_vectorized", size, dim=-(nesting + 1)):
            return fn(*args, **kwargs)

    return vectorized


def _reshaped(name: str, value: Tensor, size: int, shape: tuple[int, ...]) -> Tensor:
    if value.numel() != size * math.prod(shape):
        raise _NotVectorized(
            f"site {name!r} has shape {tuple(value.shape)} under {size} draws, not "
            f"({size}, *{shape})"
        )
    return value.reshape(size, *shape)


def _vectorized_chunk(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: Any,
    kwargs: Any,
    size: int,
    structure: _Structure,
) -> _Chunk:
    """``size`` draws scored in one vectorized pass (Pyro's ``vectorized_importance_weights``)."""
    try:
        _, model_trace, guide_trace = vectorized_importance_weights(
            model, guide, *args, num_samples=size, max_plate_nesting=structure.nesting, **kwargs
        )
    except (RuntimeError, ValueError) as error:  # a shape error inside the model
        raise _NotVectorized(str(error).splitlines()[0]) from error
    symbol = guide_trace.plate_to_symbol.get("num_particles_vectorized")
    values = {  # the particle dimension leads
        name: _reshaped(name, model_trace.nodes[name]["value"], size, shape)
        for name, shape in structure.shapes.items()
    }
    for name, shape in structure.log_lik_shapes.items():
        unscaled = model_trace.nodes[name]["unscaled_log_prob"]
        values[f"log_lik:{name}"] = _reshaped(name, unscaled, size, shape)
    return _per_draw(model_trace, symbol, size), _per_draw(guide_trace, symbol, size), values


def _score_one(
    model: Callable[..., Any],
    args: Any,
    kwargs: Any,
    latent: dict[str, Tensor],
    structure: _Structure,
) -> _Chunk:
    """One draw's log joint, deterministic sites and pointwise log-likelihood, by one model run."""
    trace = poutine.trace(poutine.condition(model, data=latent)).get_trace(*args, **kwargs)
    trace.compute_log_prob()
    values = {name: trace.nodes[name]["value"] for name in structure.deterministic}
    for name in structure.log_lik_shapes:
        values[f"log_lik:{name}"] = trace.nodes[name]["unscaled_log_prob"]
    return trace.log_prob_sum().double(), torch.zeros(()), values


def _marginal_log_joint(
    model: Callable[..., Any],
    args: Any,
    kwargs: Any,
    latent: dict[str, Tensor],
    structure: _Structure,
) -> Tensor:
    r"""One draw's :math:`\log \sum_z p(\theta, z, y)` over the enumerated sites :math:`z`.

    Pyro's ``TraceEnum_ELBO`` with a guide that is a point mass at :math:`\theta` (log density
    0) gives exactly minus this, plate structure and all.
    """

    def point_mass(*_: Any, **__: Any) -> None:
        for name, value in latent.items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))

    elbo = TraceEnum_ELBO(max_plate_nesting=structure.nesting)
    return -torch.as_tensor(elbo.loss(model, point_mass, *args, **kwargs), dtype=torch.float64)


def _latent(values: dict[str, Tensor], structure: _Structure, s: int) -> dict[str, Tensor]:
    return {
        n: v[s]
        for n, v in values.items()
        if n in structure.shapes and n not in structure.deterministic
    }


def _check_vectorized(
    model: Callable[..., Any], args: Any, kwargs: Any, chunk: _Chunk, structure: _Structure
) -> None:
    """Score the first two draws one at a time: the vectorized pass must agree with it.

    A model that reduces over the draw dimension (``w.sum()``) can give the right shapes and
    wrong numbers; this catches it.
    """
    log_joint, _, values = chunk
    for s in range(min(2, log_joint.numel())):
        joint, _, one = _score_one(model, args, kwargs, _latent(values, structure, s), structure)
        if not torch.allclose(joint, log_joint[s], rtol=1e-4, atol=1e-4):
            raise _NotVectorized(
                f"draw {s}: log p = {float(log_joint[s]):.6g} vectorized, {float(joint):.6g} alone"
            )
        for name, value in one.items():
            if not torch.allclose(
                value.reshape(values[name][s].shape), values[name][s], rtol=1e-4, atol=1e-4
            ):
                raise _NotVectorized(
                    f"site {name.removeprefix('log_lik:')!r} differs between a vectorized and a single run"
                )


def _sequential_chunk(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: Any,
    kwargs: Any,
    size: int,
    structure: _Structure,
) -> _Chunk:
    """``size`` guide draws in one vectorized guide pass, the model run once per draw."""
    guide_trace = poutine.trace(_vectorize(guide, size, structure.nesting)).get_trace(
        *args, **kwargs
    )
    guide_trace = prune_subsample_sites(guide_trace)
    guide_trace.compute_log_prob()
    guide_trace.pack_tensors()
    symbol = guide_trace.plate_to_symbol.get("num_particles_vectorized")
    log_q = _per_draw(guide_trace, symbol, size)
    latent = {
        name: guide_trace.nodes[name]["value"].reshape(size, *structure.shapes[name])
        for name in structure.shapes
        if name not in structure.deterministic
    }
    scored = [
        _score_one(model, args, kwargs, _latent(latent, structure, s), structure)
        for s in range(size)
    ]
    if structure.enumerated:
        marginal = [
            _marginal_log_joint(model, args, kwargs, _latent(latent, structure, s), structure)
            for s in range(size)
        ]
        scored = [(joint, *one[1:]) for joint, one in zip(marginal, scored, strict=True)]
    values = dict(latent)
    for key in scored[0][2]:
        name = key.removeprefix("log_lik:")
        shape = (
            structure.log_lik_shapes[name] if key.startswith("log_lik:") else structure.shapes[name]
        )
        values[key] = torch.stack([one[2][key].reshape(shape) for one in scored])
    return torch.stack([one[0] for one in scored]), log_q, values


@dataclass
class ImportanceDraws:
    r"""Guide draws with the model's and the guide's log-densities: what :func:`importance_draws` returns.

    Attributes:
        values: ``{site: (S, *site_shape)}``: each draw of every latent and ``pyro.deterministic``
            site, in the constrained space, in the order drawn (not resampled).
        log_joint: ``(S,)`` :math:`\log p(\theta_s, y)`, the model's log joint density.
        log_q: ``(S,)`` :math:`\log q(\theta_s)`, the guide's exact log-density.
        log_likelihood: ``{site: (S, *batch_shape)}``: the pointwise log-likelihood
            :math:`\log p(y_i \mid \theta_s)` of each observed site (``pyro.factor`` and
            deterministic sites excluded).
        observed: ``{site: value}``: the observed data of those sites.
        deterministic: Names of the ``pyro.deterministic`` sites among ``values``.
        event_dims: Number of event dimensions of each site of ``values`` (the rest of its shape
            are plate dimensions).
        max_plate_nesting: The number of plate dimensions model and guide use.
        vectorized: Whether the model was scored in vectorized passes (``False``: it is not
            vectorizable over a leading draw dimension and was run once per draw).
    """

    values: dict[str, Tensor] = field(repr=False)
    log_joint: Tensor = field(repr=False)
    log_q: Tensor = field(repr=False)
    log_likelihood: dict[str, Tensor] = field(repr=False)
    observed: dict[str, Tensor] = field(repr=False)
    deterministic: tuple[str, ...] = ()
    event_dims: dict[str, int] = field(default_factory=dict, repr=False)
    max_plate_nesting: int = 0
    vectorized: bool = True

    @property
    def log_weights(self) -> Tensor:
        r"""``(S,)`` importance log-weights :math:`\log p(\theta_s, y) - \log q(\theta_s)`."""
        return self.log_joint - self.log_q

    @property
    def num_samples(self) -> int:
        """The number S of guide draws."""
        return self.log_joint.numel()


@torch.no_grad()
def importance_draws(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int = 10_000,
    batch_size: int | None = None,
    seed: int | None = None,
    log_likelihood: bool = True,
    **kwargs: Any,
) -> ImportanceDraws:
    r"""Draw from ``guide`` and score each draw under the model and the guide, vectorized.

    One vectorized pass (Pyro's ``vectorized_importance_weights``) per batch of draws gives
    every latent and deterministic value, :math:`\log p(\theta_s, y)`, :math:`\log q(\theta_s)`
    and the pointwise log-likelihood of every observed site. The guide scores with its exact
    log-density (see :func:`importance_diagnostics`). Works for any Pyro guide whose structure
    is static.

    Arguments:
        model: The Pyro model (with its observations).
        guide: A fitted guide.
        *args: Passed to model and guide.
        num_samples: Number S of guide draws, at least 2.
        batch_size: Draws per vectorized pass (default: all at once).
        seed: Seed for ``pyro.set_rng_seed``.
        log_likelihood: Gather the pointwise log-likelihood (otherwise it is left empty).
        **kwargs: Passed to model and guide.

    Returns:
        :class:`ImportanceDraws`.

    Raises:
        ValueError: If ``num_samples < 2``, if a log-weight is not finite, if a site lies in a
            subsampled plate (the weights would be a minibatch's), or if ``log_likelihood`` is
            asked of an observed site that is scaled or masked (it has no pointwise
            log-likelihood).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.zeros(3))
        >>> def guide():
        ...     pyro.sample("mu", dist.Normal(0.0, 0.5))
        >>> draws = importance_draws(model, guide, num_samples=100, seed=0)
        >>> draws.values["mu"].shape, draws.log_likelihood["y"].shape
        (torch.Size([100]), torch.Size([100, 3]))
        >>> expected = dist.Normal(draws.values["mu"].unsqueeze(-1), 1.0).log_prob(torch.zeros(3))
        >>> torch.allclose(draws.log_likelihood["y"], expected)
        True
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    batch_size = num_samples if batch_size is None else batch_size
    check_positive_int("batch_size", batch_size)
    with exact_scoring(guide):
        structure = _structure(model, guide, args, kwargs, log_likelihood)
        chunks: dict[str, list[Tensor]] = {
            key: []
            for key in (*structure.shapes, *(f"log_lik:{n}" for n in structure.log_lik_shapes))
        }
        log_joint: list[Tensor] = []
        log_q: list[Tensor] = []
        sequential = bool(structure.enumerated)  # summed out one draw at a time
        for start in range(0, num_samples, batch_size):
            size = min(batch_size, num_samples - start)
            if not sequential:
                try:
                    chunk = _vectorized_chunk(model, guide, args, kwargs, size, structure)
                    if start == 0:
                        _check_vectorized(model, args, kwargs, chunk, structure)
                except _NotVectorized as error:
                    sequential = True
                    warnings.warn(
                        f"the model is not vectorizable over draws ({error}); scoring the "
                        f"{num_samples} draws one model run at a time (slower). Write the model "
                        "for a leading draw dimension (e.g. w.sum(-1), not w.sum()) to score "
                        "them in one pass",
                        stacklevel=3,
                    )
            if sequential:
                chunk = _sequential_chunk(model, guide, args, kwargs, size, structure)
            joint, q, values = chunk
            log_joint.append(joint)
            log_q.append(q)
            for key, value in values.items():
                chunks[key].append(value)
    draws = ImportanceDraws(
        values={name: torch.cat(chunks[name]) for name in structure.shapes},
        log_joint=torch.cat(log_joint),
        log_q=torch.cat(log_q),
        log_likelihood={n: torch.cat(chunks[f"log_lik:{n}"]) for n in structure.log_lik_shapes},
        observed=structure.observed,
        deterministic=structure.deterministic,
        event_dims=structure.event_dims,
        max_plate_nesting=structure.nesting,
        vectorized=not sequential,
    )
    log_w = draws.log_weights
    if not torch.isfinite(log_w).all():
        bad = int((~torch.isfinite(log_w)).sum())
        raise ValueError(
            f"{bad} of {num_samples} log-weights are not finite: the guide puts mass where the "
            "model has none"
        )
    return draws


@torch.no_grad()
def importance_diagnostics(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int = 10_000,
    batch_size: int | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> ImportanceDiagnostics:
    r"""Importance-sample the posterior with ``guide`` as proposal and diagnose the fit.

    The guide scores its draws with its *exact* log-density: CNFs are switched to ``.eval()``
    (their ``eval_solver``) and any Hutchinson trace estimator is replaced by the exact trace
    for the duration of the call (a stochastic trace would add noise to every :math:`\log q`
    and ruin the weights). Works for any Pyro guide whose structure is static.

    Arguments:
        model: The Pyro model (with its observations).
        guide: A fitted guide.
        *args: Passed to model and guide.
        num_samples: Number S of guide draws (k̂ is noisy below about 10^4).
        batch_size: Draws per vectorized pass (default: all at once).
        seed: Seed for ``pyro.set_rng_seed``.
        **kwargs: Passed to model and guide.

    Returns:
        :class:`ImportanceDiagnostics`.

    Raises:
        ValueError: If a site lies in a subsampled plate (score the full-data model instead), or
            a log-weight is not finite.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     pyro.sample("x", dist.Normal(0.0, 1.2))
        >>> result = importance_diagnostics(model, guide, num_samples=4000, seed=0)
        >>> abs(result.log_evidence) < 3 * result.log_evidence_se + 1e-3
        True
    """
    draws = importance_draws(
        model,
        guide,
        *args,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
        log_likelihood=False,
        **kwargs,
    )
    log_w = draws.log_weights
    values = draws.values
    log_z = float(torch.logsumexp(log_w, 0) - math.log(num_samples))
    normalized = torch.softmax(log_w, 0)
    weights = (log_w - log_w.max()).exp()
    relative_sd = float(weights.std() / weights.mean())
    index = torch.multinomial(normalized, num_samples, replacement=True)
    return ImportanceDiagnostics(
        log_weights=log_w,
        elbo=float(log_w.mean()),
        log_evidence=log_z,
        log_evidence_se=relative_sd / math.sqrt(num_samples),
        khat=pareto_khat(log_w),
        khat_threshold=min(1 - 1 / math.log10(num_samples), 0.7),
        ess=float(1.0 / normalized.pow(2).sum()),
        draws={name: value[index] for name, value in values.items()},
    )
