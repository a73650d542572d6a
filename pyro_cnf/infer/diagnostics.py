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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.importance import vectorized_importance_weights
from pyro.ops.stats import fit_generalized_pareto
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from ..divergence import Exact

__all__ = ["ImportanceDiagnostics", "importance_diagnostics", "pareto_khat"]


def pareto_khat(log_weights: Tensor) -> float:
    r"""Pareto :math:`\hat k` of importance weights: the shape of a generalized Pareto tail fit.

    Fits the largest :math:`M = \lceil\min(0.2 S, 3\sqrt S)\rceil` weights (Vehtari et al., PSIS)
    with Pyro's ``fit_generalized_pareto``, as ``pyro.infer.importance.psis_diagnostic`` does.

    Arguments:
        log_weights: Log importance weights, shape ``(S,)``.

    Returns:
        :math:`\hat k` (``inf`` when fewer than 10 weights lie in the tail).

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
def exact_scoring(guide: Any) -> Iterator[None]:
    """Score with the guide's evaluation settings: ``.eval()`` solvers and exact CNF traces.

    Restores the guide's mode and divergence strategies on exit.
    """
    from ..transforms.continuous import _CNFBase

    if not isinstance(guide, torch.nn.Module):
        yield
        return
    was_training = guide.training
    swapped = [
        (m, m.divergence)
        for m in guide.modules()
        if isinstance(m, _CNFBase) and not m.divergence.exact
    ]
    guide.eval()
    for module, _ in swapped:
        module.divergence = Exact()
    try:
        yield
    finally:
        for module, divergence in swapped:
            module.divergence = divergence
        guide.train(was_training)


def _is_draw(site: dict[str, Any]) -> bool:
    """A latent sample site or a ``pyro.deterministic`` site (what a posterior draw holds)."""
    if site["type"] != "sample" or site_is_subsample(site):
        return False
    return not site["is_observed"] or site["infer"].get("_deterministic", False)


def _structure(
    model: Callable[..., Any], guide: Callable[..., Any], args: Any, kwargs: Any
) -> tuple[int, dict[str, tuple[int, ...]]]:
    """From one guide run replayed through the model: the plate nesting, and each draw's shape."""
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
    shapes = {
        name: tuple(site["value"].shape)
        for name, site in model_trace.nodes.items()
        if _is_draw(site)
    }
    return nesting, shapes


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
    if not (isinstance(num_samples, int) and num_samples >= 2):
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    batch_size = num_samples if batch_size is None else batch_size
    with exact_scoring(guide):
        nesting, shapes = _structure(model, guide, args, kwargs)
        log_weights: list[Tensor] = []
        draws: dict[str, list[Tensor]] = {name: [] for name in shapes}
        for start in range(0, num_samples, batch_size):
            size = min(batch_size, num_samples - start)
            weights, model_trace, _ = vectorized_importance_weights(
                model, guide, *args, num_samples=size, max_plate_nesting=nesting, **kwargs
            )
            log_weights.append(weights.reshape(size))
            for name, shape in shapes.items():  # the particle dimension leads every value
                draws[name].append(model_trace.nodes[name]["value"].reshape(size, *shape))
    log_w = torch.cat(log_weights)
    if not torch.isfinite(log_w).all():
        bad = int((~torch.isfinite(log_w)).sum())
        raise ValueError(
            f"{bad} of {num_samples} log-weights are not finite: the guide puts mass where the "
            "model has none"
        )
    values = {name: torch.cat(chunks) for name, chunks in draws.items()}
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
