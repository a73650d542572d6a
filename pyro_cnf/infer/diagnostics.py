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
import torch
from pyro.ops.stats import fit_generalized_pareto
from torch import Tensor

from .._checks import check_positive_int
from ..divergence import Exact
from ._scoring import (
    NotVectorized,
    check_vectorized,
    model_structure,
    sequential_chunk,
    vectorized_chunk,
)

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
    from ..transforms.continuous import CNFBase

    modules = guide.modules() if isinstance(guide, torch.nn.Module) else ()
    swapped = [
        (m, m.divergence) for m in modules if isinstance(m, CNFBase) and not m.divergence.exact
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
        structure = model_structure(model, guide, args, kwargs, log_likelihood)
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
                    chunk = vectorized_chunk(model, guide, args, kwargs, size, structure)
                    if start == 0:
                        check_vectorized(model, args, kwargs, chunk, structure)
                except NotVectorized as error:
                    sequential = True
                    warnings.warn(
                        f"the model is not vectorizable over draws ({error}); scoring the "
                        f"{num_samples} draws one model run at a time (slower). Write the model "
                        "for a leading draw dimension (e.g. w.sum(-1), not w.sum()) to score "
                        "them in one pass",
                        stacklevel=3,
                    )
            if sequential:
                chunk = sequential_chunk(model, guide, args, kwargs, size, structure)
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
