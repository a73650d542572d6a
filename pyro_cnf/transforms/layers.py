r"""Discrete layers the stacks add to Pyro's: a stored permutation, bisection inverses, Sylvester.

* :class:`Permutation` keeps its permutation in ``state_dict`` (Pyro's ``Permute`` does not);
* :class:`Bisect` and :class:`ConditionalBisect` give Pyro's neural and block neural
  autoregressive flows, which have no analytic inverse, an inverse by bisection;
* :class:`Sylvester` is Pyro's Householder-Sylvester layer with its log-determinant made exact.
"""

from __future__ import annotations

import pyro.distributions.transforms as T
import torch
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor
from torch.distributions import Transform

__all__ = ["Bisect", "ConditionalBisect", "Permutation", "Sylvester"]


class Permutation(TransformModule):
    """A fixed permutation of the coordinates, stored as a buffer (so ``state_dict`` keeps it).

    Pyro's ``Permute`` keeps its permutation as a plain attribute, so a reloaded stack would get
    a different one; this layer does not.

    Arguments:
        permutation: A permutation of ``range(input_dim)``.

    Example:
        >>> Permutation(torch.tensor([2, 0, 1]))(torch.tensor([10.0, 20.0, 30.0]))
        tensor([30., 10., 20.])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    volume_preserving = True

    def __init__(self, permutation: Tensor) -> None:
        super().__init__(cache_size=1)
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if not torch.equal(permutation.sort().values, torch.arange(len(permutation))):
            raise ValueError(f"not a permutation of range({len(permutation)}): {permutation}")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", permutation.argsort())

    def _call(self, x: Tensor) -> Tensor:
        return x[..., self.permutation]

    def _inverse(self, y: Tensor) -> Tensor:
        return y[..., self.inverse_permutation]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """Zero: a permutation preserves volume."""
        return x.new_zeros(x.shape[:-1])


class Bisect(TransformModule):
    """A monotone autoregressive transform with an inverse by bisection, one coordinate at a time.

    For Pyro's neural (NAF) and block neural (BNAF) autoregressive flows, which have no analytic
    inverse: coordinate ``order[k]`` of the output depends increasingly on the same input
    coordinate given the earlier ones, so it is found by bracketing and bisection (until the
    bracket is down to adjacent floating-point numbers, at most 80 halvings).
    The inverse is not differentiable with respect to the parameters: train these flows as
    guides (sampling), not by maximum likelihood on data.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    autoregressive = True

    def __init__(self, transform: Transform, order: Tensor | None = None) -> None:
        super().__init__(cache_size=1)
        self.transform = transform
        self.order = order

    def _call(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """The wrapped transform's log-det at ``x`` (from its cache when ``x`` is its last input)."""
        cached_x, cached_y = self.transform._cached_x_y
        if x is not cached_x:
            cached_y = self.transform(x)
        return self.transform.log_abs_det_jacobian(x, cached_y)

    @torch.no_grad()
    def _inverse(self, y: Tensor) -> Tensor:
        order = self.order if self.order is not None else torch.arange(y.shape[-1])
        x = torch.zeros_like(y)
        for i in order.tolist():
            target = y[..., i]
            low, high = torch.full_like(target, -1.0), torch.full_like(target, 1.0)
            for _ in range(64):  # widen the bracket until it holds the root
                x[..., i] = low
                below = self.transform._call(x)[..., i] > target
                x[..., i] = high
                above = self.transform._call(x)[..., i] < target
                if not (below.any() or above.any()):
                    break
                low = torch.where(below, 2 * low, low)
                high = torch.where(above, 2 * high, high)
            for _ in range(80):
                middle = 0.5 * (low + high)
                if not ((middle != low) & (middle != high)).any():
                    break  # the bracket is down to adjacent floating-point numbers everywhere
                x[..., i] = middle
                too_high = self.transform._call(x)[..., i] > target
                high = torch.where(too_high, middle, high)
                low = torch.where(too_high, low, middle)
            x[..., i] = 0.5 * (low + high)
        # the bisection's evaluations overwrote the wrapped transform's internal state
        self.transform._cached_x_y = (None, None)
        return x


class ConditionalBisect(ConditionalTransformModule):
    """A conditional monotone autoregressive transform; ``.condition(c)`` gives a :class:`Bisect`.

    Arguments:
        transform: Pyro's conditional neural autoregressive transform.
    """

    def __init__(self, transform: ConditionalTransformModule) -> None:
        super().__init__()
        self.transform = transform

    def condition(self, context: Tensor) -> Transform:
        """The transform at ``context``, inverted by bisection in its autoregressive order."""
        order = getattr(getattr(self.transform, "nn", None), "permutation", None)
        return Bisect(self.transform.condition(context), order)


class Sylvester(T.Sylvester):
    r"""Pyro's Householder-Sylvester layer with its factors in the order its log-det assumes.

    Pyro's layer computes :math:`y = x + \tanh(x S Q^\top + b)\, Q R` but scores it with
    :math:`\sum_i \log(1 + h'_i R_{ii} S_{ii})`, which is the log-det only when :math:`Q = I`
    (the Jacobian's determinant is :math:`\det(I + D\, Q R S Q^\top)`). With
    :math:`y = x + \tanh(x Q S + b)\, R Q^\top` the same formula is exact, since then the
    determinant is :math:`\det(I + D R S)` with :math:`RS` upper triangular.
    """

    def _call(self, x: Tensor) -> Tensor:
        q, r, s = self.Q(x), self.R(), self.S()
        preactivation = x @ (q @ s) + self.b
        y = x + torch.tanh(preactivation) @ (r @ q.T)
        slope = self.dtanh_dx(preactivation)
        self._cached_logDetJ = torch.log1p(slope * r.diagonal() * s.diagonal()).sum(-1)
        return y
