"""Priors the posteriordb models need and Pyro lacks: a positive normal, a samplable flat prior."""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor
from torch.distributions import biject_to

__all__ = ["Flat", "PositiveNormal", "flat"]


class PositiveNormal(dist.TorchDistribution):
    r"""A normal distribution restricted to :math:`(0, \infty)`: the prior of a positive rate.

    .. math:: p(x) = \frac{\mathcal N(x; m, s)}{\Phi(m / s)}, \qquad x > 0 .

    Pyro has no truncated normal; this one samples by inverting the CDF. Used by the
    Lotka-Volterra model's rates.

    Arguments:
        loc: :math:`m`.
        scale: :math:`s > 0`.

    Example:
        >>> d = PositiveNormal(torch.tensor(0.05), torch.tensor(0.05))
        >>> bool((d.sample((1000,)) > 0).all())
        True
        >>> # at the mode: -log(s sqrt(2 pi)) - log Phi(1) = 2.0768 + 0.1727
        >>> round(float(d.log_prob(torch.tensor(0.05))), 4)
        2.2495
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.positive

    def __init__(self, loc: Tensor, scale: Tensor, validate_args: bool | None = None) -> None:
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> PositiveNormal:
        """The same distribution with a larger batch shape."""
        shape = torch.Size(batch_shape)
        return PositiveNormal(self.loc.expand(shape), self.scale.expand(shape))

    def _mass(self) -> Tensor:
        return torch.special.ndtr(self.loc / self.scale)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        """Draws by the inverse CDF of the truncated normal."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            lower = 1.0 - self._mass()  # Phi(-m / s): the mass left of 0
            u = lower + (1.0 - lower) * torch.rand(shape, dtype=self.loc.dtype)
            x = self.loc + self.scale * torch.special.ndtri(u)
            return x.clamp_min(torch.finfo(x.dtype).tiny)

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log \mathcal N(x; m, s) - \log \Phi(m / s)`."""
        if self._validate_args:
            self._validate_sample(value)
        return dist.Normal(self.loc, self.scale).log_prob(value) - self._mass().log()


class Flat(dist.ImproperUniform):
    """An improper flat prior whose "sample" is the feasible point ``biject_to(support)(0)``.

    Pyro's ``ImproperUniform`` cannot be sampled, so no autoguide could start on it (every init
    strategy draws from the prior first); this one returns the point ``init_to_feasible`` picks.
    """

    def expand(self, batch_shape: Any, _instance: Any = None) -> Flat:
        """The same prior with a larger batch shape."""
        return super().expand(batch_shape, self._get_checked_instance(Flat, _instance))

    def sample(self, sample_shape: Any = ()) -> Tensor:
        """The feasible point, repeated to ``sample_shape + batch_shape + event_shape``."""
        zero = torch.zeros(self._extended_shape(sample_shape))
        return biject_to(self.support)(zero)


def flat(
    support: constraints.Constraint,
    batch_shape: tuple[int, ...] = (),
    event_shape: tuple[int, ...] = (),
) -> dist.Distribution:
    """An improper flat prior on ``support``."""
    return Flat(support, torch.Size(batch_shape), torch.Size(event_shape))
