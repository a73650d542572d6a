r"""A mass-covering objective for flow guides: the inclusive KL divergence, by importance sampling.

Reverse KL, :math:`\mathrm{KL}(q\,\|\,p)` (the ELBO), is zero-forcing: it barely pays for
posterior mass that :math:`q` misses, so a fitted guide can leave thin regions (the neck of a
funnel, a hierarchical model at small scale) under-covered. Importance weights
:math:`p/q` are then heavy-tailed there, and the Pareto :math:`\hat k` of
:func:`~pyro_cnf.importance_diagnostics` says so. The inclusive KL,
:math:`\mathrm{KL}(p\,\|\,q) = \mathbb E_p[\log p(\theta \mid y) - \log q(\theta)]`, pays for
exactly that mass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.enum import get_importance_trace
from pyro.infer.importance import vectorized_importance_weights
from torch import Tensor

from .._checks import check_positive_int
from .diagnostics import exact_traces

__all__ = ["InclusiveKL"]


class InclusiveKL(ELBO):
    r"""Minimise :math:`\mathrm{KL}(p\,\|\,q)` by self-normalised importance sampling from the guide.

    With draws :math:`\theta_s \sim q_\phi` (not differentiated) and their normalised weights
    :math:`\bar w_s \propto p(\theta_s, y) / q_\phi(\theta_s)`,

    .. math::
        \nabla_\phi \mathrm{KL}(p\,\|\,q_\phi) = -\mathbb E_p[\nabla_\phi \log q_\phi(\theta)]
        \approx -\sum_{s=1}^S \bar w_s \nabla_\phi \log q_\phi(\theta_s),

    the wake-phase update of reweighted wake-sleep (Bornschein & Bengio, 2015; Le et al.,
    2019). The guide's density is evaluated at the fixed draws, so for a flow guide each step
    runs the flow once forward (drawing, no gradient) and once backward with a gradient
    (:math:`\log q_\phi(\theta_s)` through the inverse map). The value reported (and returned
    by :meth:`loss`) is the negative importance-weighted bound
    :math:`-\log \frac1S\sum_s w_s`, which tends to :math:`-\log p(y)` as the guide improves
    (mixed with the negative ELBO by ``reverse_weight``, like the gradient).

    The estimate is only as good as the guide's overlap with the posterior: use it to *finish*
    a guide first fitted by the ELBO (e.g. a few hundred steps with ``S = 256``), not from
    scratch. Pyro has no such objective for autoguides (its ``RenyiELBO(alpha=0)`` differentiates
    through the draws, whose guide gradient gets noisier as ``S`` grows; Rainforth et al.,
    2018), hence this class.

    The weights use the guide's exact log-density at its training solver (a CNF trained with
    Hutchinson's trace estimate is scored with the exact trace here; the gradient pass keeps
    the guide's own trace strategy, whose estimate of :math:`\log q_\phi` is unbiased).

    Works with guides that are :class:`~pyro.infer.autoguide.AutoContinuous` (e.g.
    :class:`~pyro_cnf.AutoCNF`, :class:`~pyro_cnf.AutoFlow`, ``AutoMultivariateNormal``): it
    needs the guide's density of the whole latent vector, ``guide.get_posterior().log_prob``.

    Arguments:
        num_particles: Number :math:`S` of guide draws per step (at least 2).
        max_plate_nesting: As for Pyro's ELBOs (guessed by default).
        reverse_weight: Weight :math:`\lambda \in [0, 1)` of an ELBO term on the same step
            (``Trace_ELBO`` with ``num_particles`` vectorized particles):
            the objective is :math:`(1-\lambda)\,\mathrm{KL}(p\|q) + \lambda\,\mathrm{KL}(q\|p)`
            up to constants.

    Example:
        A diagonal Gaussian guide of a correlated Gaussian (correlation 0.9, unit variances):
        the inclusive KL matches the marginal sds (1), where the ELBO would shrink them to
        :math:`\sqrt{1 - 0.9^2} = 0.44`.

        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoDiagonalNormal
        >>> from pyro_cnf import fit_svi
        >>> cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
        >>> def model():
        ...     pyro.sample("x", dist.MultivariateNormal(torch.zeros(2), cov))
        >>> pyro.clear_param_store()
        >>> guide = AutoDiagonalNormal(model, init_scale=0.5)
        >>> fit = fit_svi(model, guide, num_steps=400, loss=InclusiveKL(num_particles=256),
        ...               optimizer=pyro.optim.Adam({"lr": 0.02}), progress=False, seed=0)
        >>> bool((guide.scale - 1.0).abs().max() < 0.1)
        True
    """

    def __init__(
        self,
        num_particles: int = 256,
        max_plate_nesting: float = float("inf"),
        reverse_weight: float = 0.0,
    ) -> None:
        check_positive_int("num_particles", num_particles)
        if num_particles < 2:
            raise ValueError(f"num_particles must be >= 2, got {num_particles}")
        if not 0.0 <= reverse_weight < 1.0:
            raise ValueError(f"reverse_weight must be in [0, 1), got {reverse_weight!r}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )
        self.reverse_weight = reverse_weight

    def _get_trace(
        self, model: Callable[..., Any], guide: Callable[..., Any], args: Any, kwargs: Any
    ) -> Any:
        """Model and guide traces of one draw (Pyro's ELBO interface; as in ``Trace_ELBO``)."""
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def _log_weights(
        self, model: Callable[..., Any], guide: Callable[..., Any], args: Any, kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Log-weights ``(S,)`` and the latent draws ``(S, d)``, without gradient."""
        if not isinstance(guide, AutoContinuous):
            raise TypeError(
                "InclusiveKL needs an AutoContinuous guide (AutoCNF, AutoFlow, "
                f"AutoMultivariateNormal, ...): it evaluates the guide's density at fixed draws; "
                f"got {type(guide).__name__}"
            )
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        size = self.num_particles
        with torch.no_grad(), exact_traces(guide):
            log_w, _, guide_trace = vectorized_importance_weights(
                model,
                guide,
                *args,
                num_samples=size,
                max_plate_nesting=self.max_plate_nesting,
                **kwargs,
            )
        latent = guide_trace.nodes[f"_{guide._pyro_name}_latent"]["value"]
        return log_w.reshape(size), latent.reshape(size, -1)

    def _bound(self, log_w: Tensor) -> Tensor:
        return -(torch.logsumexp(log_w, 0) - math.log(log_w.numel()))

    def _elbo(self) -> Trace_ELBO:
        """The ELBO term of a mixed objective (same particles and plate nesting)."""
        return Trace_ELBO(
            num_particles=self.num_particles,
            max_plate_nesting=self.max_plate_nesting,
            vectorize_particles=True,
        )

    def loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> float:
        r"""The negative importance-weighted bound :math:`-\log \frac1S \sum_s w_s`.

        With ``reverse_weight`` :math:`\lambda > 0`: :math:`(1 - \lambda)` times it plus
        :math:`\lambda` times the negative ELBO.
        """
        log_w, _ = self._log_weights(model, guide, args, kwargs)
        value = float(self._bound(log_w))
        if self.reverse_weight:
            reverse = self._elbo().loss(model, guide, *args, **kwargs)
            value = (1 - self.reverse_weight) * value + self.reverse_weight * reverse
        return value

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Tensor:
        """A surrogate whose gradient is the estimate above and whose value is :meth:`loss`'s."""
        log_w, latent = self._log_weights(model, guide, args, kwargs)
        weights = torch.softmax(log_w, 0)
        # a fresh tensor: the flow's transforms cache their last input/output pair by identity
        log_q = guide.get_posterior(*args, **kwargs).log_prob(latent.clone())
        surrogate = -(weights * log_q).sum()
        value = surrogate - surrogate.detach() + self._bound(log_w)
        if self.reverse_weight:
            reverse = self._elbo().differentiable_loss(model, guide, *args, **kwargs)
            value = (1 - self.reverse_weight) * value + self.reverse_weight * reverse
        return value

    def loss_and_grads(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> float:
        """Backpropagate the surrogate; return :meth:`loss`'s value."""
        value = self.differentiable_loss(model, guide, *args, **kwargs)
        value.backward()
        return float(value.detach())
