r"""Flow distributions: a base distribution pushed through transforms, scored in the same pass.

:class:`FlowDistribution` is Pyro's ``TransformedDistribution`` with
:meth:`~FlowDistribution.rsample_and_log_prob`: it draws :math:`z_0 \sim p_0`, pushes it through
the transforms and accumulates

.. math:: \log q(x) = \log p_0(z_0) - \sum_k \log\lvert\det \partial f_k / \partial z_{k-1}\rvert

on the way, so a continuous flow is solved once per sample, never inverted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions import TransformedDistribution
from pyro.distributions.conditional import ConditionalTransformedDistribution
from pyro.distributions.util import sum_rightmost
from torch import Tensor
from torch.distributions import Distribution, Transform

__all__ = ["ConditionalFlowDistribution", "FlowDistribution"]


class FlowDistribution(TransformedDistribution):
    r"""A normalizing-flow distribution usable in ``pyro.sample``.

    Behaves as Pyro's ``TransformedDistribution`` (``.expand()``, ``.to_event()``, ``pyro.plate``)
    and adds :meth:`rsample_and_log_prob`.

    Arguments:
        base_distribution: The base distribution :math:`p_0`.
        transforms: A transform or a list of transforms, applied in order (base -> data).

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_cnf import cnf
        >>> q = FlowDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [cnf(2)])
        >>> x, log_q = q.rsample_and_log_prob((3,))
        >>> x.shape, log_q.shape
        (torch.Size([3, 2]), torch.Size([3]))
    """

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | Sequence[int] = ()
    ) -> tuple[Tensor, Tensor]:
        """Draw reparametrized samples and their log-density, with one pass through the flow."""
        x = self.base_dist.rsample(torch.Size(sample_shape))
        base_log_prob = self.base_dist.log_prob(x)
        pairs = []
        for transform in self.transforms:
            y = transform(x)
            pairs.append((transform, x, y))
            x = y
        event_dim = len(self.event_shape)
        log_prob: Tensor | float = 0.0
        for transform, x_k, y_k in reversed(pairs):
            event_dim += transform.domain.event_dim - transform.codomain.event_dim
            log_prob = log_prob - sum_rightmost(
                transform.log_abs_det_jacobian(x_k, y_k), event_dim - transform.domain.event_dim
            )
        log_prob = log_prob + sum_rightmost(
            base_log_prob, event_dim - len(self.base_dist.event_shape)
        )
        return x, log_prob


class ConditionalFlowDistribution(ConditionalTransformedDistribution):
    """A flow distribution whose base and/or transforms take a context.

    ``.condition(c)`` returns a :class:`FlowDistribution`.

    Arguments:
        base_dist: A distribution, or a conditional distribution.
        transforms: Transforms or conditional transforms (e.g. :class:`~pyro_cnf.ConditionalCNF`).

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_cnf import conditional_cnf
        >>> p = ConditionalFlowDistribution(
        ...     dist.Normal(torch.zeros(2), 1.0).to_event(1), [conditional_cnf(2, context_dim=1)]
        ... )
        >>> p.condition(torch.ones(1)).sample((5,)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        base_dist: Distribution,
        transforms: Transform | Sequence[Transform],
    ) -> None:
        if not isinstance(transforms, (list, tuple)):
            transforms = [transforms]
        super().__init__(base_dist, list(transforms))

    def condition(self, context: Tensor) -> FlowDistribution:
        """The flow distribution at ``context``.

        A batch of contexts, shape ``(..., context_dim)``, gives a distribution with that batch
        shape (the base is expanded), so ``.sample()`` draws one point per context.
        """
        base_dist = self.base_dist.condition(context)
        batch_shape = torch.broadcast_shapes(base_dist.batch_shape, context.shape[:-1])
        if batch_shape != base_dist.batch_shape:
            base_dist = base_dist.expand(batch_shape)
        return FlowDistribution(base_dist, [t.condition(context) for t in self.transforms])
