r"""An elementwise layer that gives a Gaussian base exponential tails, with a learnable weight per side.

A Lipschitz flow keeps the tail class of its base (Jaini et al., "Tails of Lipschitz triangular
flows", ICML 2020, `arXiv:1907.04481 <https://arxiv.org/abs/1907.04481>`_): from a Gaussian base
no CNF, affine or coupling layer reaches a posterior whose tails are exponential, such as that of
a scale :math:`\log\tau` near :math:`\tau = 0` in a hierarchical model, where
:math:`p(\log\tau) \propto \tau`. The importance weights :math:`p/q` then grow without bound in
that tail and the Pareto :math:`\hat k` with them. :class:`ExponentialTails` is a non-Lipschitz
map that makes each side of each coordinate's tail exponential by an amount the fit chooses.
The guides put it after the flow, so the ODE is solved on Gaussian-tailed points (a Lipschitz
flow would keep the exponential tails either way). Pyro and torch have no such layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn

from .._checks import check_positive_int, check_vector
from ._cache import StampedCacheMixin

__all__ = ["ExponentialTails", "exponential_tails"]


class ExponentialTails(StampedCacheMixin, TransformModule):
    r"""A monotone elementwise map whose image of a Gaussian has exponential tails.

    .. math::
        y_i = x_i + \tfrac12\, k_i(x_i)\, x_i \lvert x_i\rvert, \qquad
        k_i(x_i) = \begin{cases} a_i & x_i < 0 \\ b_i & x_i \ge 0 \end{cases}, \qquad
        \log\left\lvert\frac{\partial y}{\partial x}\right\rvert
        = \sum_i \log\bigl(1 + k_i \lvert x_i\rvert\bigr),

    with learnable tail weights :math:`a_i, b_i > 0` (softplus of free parameters). The map is
    the identity plus a quadratic on each side, continuously differentiable, strictly increasing,
    and its inverse is closed-form: :math:`x = 2y / (1 + \sqrt{1 + 2k\lvert y\rvert})`, with
    :math:`k` chosen by the sign of :math:`y` (the same as that of :math:`x`).

    **Tails.** For :math:`x \sim \mathcal N(0, 1)` and :math:`\lvert y\rvert \to \infty`, the
    density of :math:`y` on the side with weight :math:`k` is
    :math:`\propto \lvert y\rvert^{-1/2} e^{-\lvert y\rvert / k}`: exponential with rate
    :math:`1/k`, where it was Gaussian. Against a target whose tail on that side is
    :math:`\propto e^{-r\lvert y\rvert}`, the importance weights :math:`p/q` stay bounded there
    when :math:`1/k \le r`, and otherwise have a Pareto tail of index :math:`1 - rk` (at most
    0.5 when :math:`1/k \le 2r`); a Gaussian side (:math:`k \to 0`) has index 1, the worst.

    It starts near the identity (both weights at ``init_weight``, 0.01 by default), so that a
    layer added in front of a fitted flow barely changes it.

    Arguments:
        input_dim: Event dimension :math:`d`.
        init_weight: Initial :math:`a_i = b_i`, positive.

    Example:
        >>> layer = ExponentialTails(2, init_weight=1.0)
        >>> x = torch.tensor([-2.0, 2.0])
        >>> layer(x)  # -2 - 2 and 2 + 2
        tensor([-4.,  4.], grad_fn=<AddBackward0>)
        >>> layer.inv(torch.tensor([-4.0, 4.0]))
        tensor([-2.,  2.], grad_fn=<DivBackward0>)
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(self, input_dim: int, init_weight: float = 0.01) -> None:
        super().__init__(cache_size=1)
        check_positive_int("input_dim", input_dim)
        if not (isinstance(init_weight, (int, float)) and 0 < init_weight < math.inf):
            raise ValueError(f"init_weight must be positive and finite, got {init_weight!r}")
        self.input_dim = input_dim
        raw = math.log(math.expm1(init_weight))  # softplus^{-1}
        self.raw_left = nn.Parameter(torch.full((input_dim,), raw))
        self.raw_right = nn.Parameter(torch.full((input_dim,), raw))

    def extra_repr(self) -> str:  # noqa: D102
        return f"input_dim={self.input_dim}"

    __repr__ = nn.Module.__repr__

    @property
    def left_weight(self) -> Tensor:
        r"""The weights :math:`a_i` of the left (negative) tails."""
        return F.softplus(self.raw_left)

    @property
    def right_weight(self) -> Tensor:
        r"""The weights :math:`b_i` of the right (positive) tails."""
        return F.softplus(self.raw_right)

    def _weight(self, v: Tensor) -> Tensor:
        return torch.where(v < 0, self.left_weight, self.right_weight)

    def _call(self, x: Tensor) -> Tensor:
        check_vector("ExponentialTails input", x, self.input_dim)
        return x + 0.5 * self._weight(x) * x * x.abs()

    def _inverse(self, y: Tensor) -> Tensor:
        check_vector("ExponentialTails value", y, self.input_dim)
        return 2 * y / (1 + torch.sqrt(1 + 2 * self._weight(y) * y.abs()))

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\sum_i \log(1 + k_i\lvert x_i\rvert)`, shape ``x.shape[:-1]``."""
        return torch.log1p(self._weight(x) * x.abs()).sum(-1)

    __hash__ = TransformModule.__hash__


def exponential_tails(input_dim: int, init_weight: float = 0.01) -> ExponentialTails:
    """Build an :class:`ExponentialTails` layer (Pyro-style factory).

    Arguments:
        input_dim: Event dimension.
        init_weight: Initial tail weights.

    Example:
        >>> layer = exponential_tails(3)
        >>> x = torch.randn(5, 3)
        >>> bool((layer.inv(layer(x)) - x).abs().max() < 1e-6)
        True
    """
    return ExponentialTails(input_dim, init_weight)
