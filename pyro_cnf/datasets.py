r"""Toy densities with exact log-densities, for density estimation and anomaly detection.

Each function returns a Pyro ``MixtureSameFamily`` distribution: ``.sample(shape)`` draws data and
``.log_prob(x)`` is the exact log-density (a ``logsumexp`` over the components), so the
Kullback-Leibler divergence of a fitted flow :math:`q` is estimated without bias by

.. math:: \mathrm{KL}(p \,\|\, q) = \mathbb{E}_{x \sim p}\left[\log p(x) - \log q(x)\right].

The distributions are built in torch's default dtype at call time.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from ._checks import check_positive_int

__all__ = ["eight_gaussians", "gaussian_mixture"]


def _positive(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def eight_gaussians(radius: float = 4.0, scale: float = 0.5) -> dist.MixtureSameFamily:
    r"""The 2-D "8 Gaussians" density: eight equal-weight isotropic Gaussians on a circle.

    .. math::
        p(x) = \frac18 \sum_{k=0}^{7} \mathcal N\!\left(x;\; r(\cos \tfrac{k\pi}{4},
        \sin \tfrac{k\pi}{4}),\; s^2 I\right)

    With the defaults (:math:`r = 4`, :math:`s = 0.5`) neighbouring modes are 3.06 apart, about six
    standard deviations, and the entropy is :math:`\approx 3.53` nats (nearly
    :math:`\log 8 + 1 + \log 2\pi s^2`).

    Arguments:
        radius: Radius :math:`r` of the circle of means.
        scale: Standard deviation :math:`s` of every component.

    Example:
        >>> p = eight_gaussians()
        >>> x = p.sample((5,))
        >>> x.shape, p.log_prob(x).shape
        (torch.Size([5, 2]), torch.Size([5]))
        >>> round(float(p.log_prob(torch.tensor([4.0, 0.0]))), 4)  # at a mean: -log 8 - log(2 pi s^2)
        -2.531
    """
    radius, scale = _positive("radius", radius), _positive("scale", scale)
    angles = torch.arange(8, dtype=torch.get_default_dtype()) * (2 * math.pi / 8)
    means = radius * torch.stack((angles.cos(), angles.sin()), -1)
    return dist.MixtureSameFamily(
        dist.Categorical(logits=torch.zeros(8)), dist.Normal(means, scale).to_event(1)
    )


def gaussian_mixture(
    dim: int = 10,
    num_components: int = 5,
    spread: float = 2.0,
    scale: float = 1.0,
    seed: int = 0,
) -> dist.MixtureSameFamily:
    r"""An equal-weight mixture of isotropic Gaussians in :math:`d` dimensions, with random means.

    .. math::
        p(x) = \frac1K \sum_{k=1}^{K} \mathcal N(x;\; \mu_k,\; s^2 I), \qquad
        \mu_k \sim \mathcal N(0, \sigma^2 I),

    the means drawn once from a generator seeded with ``seed`` (the same mixture on every call).

    Arguments:
        dim: Dimension :math:`d`.
        num_components: Number of components :math:`K`.
        spread: Standard deviation :math:`\sigma` of the means.
        scale: Standard deviation :math:`s` of every component.
        seed: Seed of the means.

    Example:
        >>> p = gaussian_mixture(10)
        >>> p.sample((3,)).shape
        torch.Size([3, 10])
        >>> bool((gaussian_mixture(10).component_distribution.mean == p.component_distribution.mean).all())
        True
    """
    check_positive_int("dim", dim)
    check_positive_int("num_components", num_components)
    spread, scale = _positive("spread", spread), _positive("scale", scale)
    generator = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(num_components, dim, generator=generator, dtype=torch.float64)
    means = means.to(torch.get_default_dtype())
    return dist.MixtureSameFamily(
        dist.Categorical(logits=torch.zeros(num_components)),
        dist.Normal(means, scale).to_event(1),
    )
