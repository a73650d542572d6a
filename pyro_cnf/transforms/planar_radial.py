r"""Planar and radial flows that can score any point, not only the ones they produced.

Pyro's :class:`~pyro.distributions.transforms.Planar` and
:class:`~pyro.distributions.transforms.Radial` have no inverse: they score a point only when it
is the cached output of their last forward call, and ``log_prob`` of a fresh point raises a
``KeyError``. The classes here subclass Pyro's (same parameters, same forward map, same log-det
for forward calls) and add the inverse.

Planar, :math:`y = x + \hat u \tanh(w^\top x + b)` with :math:`w^\top \hat u > -1`: writing
:math:`a = w^\top x + b`, the inverse reduces to the scalar equation

.. math::
    g(a) = a + (w^\top \hat u) \tanh(a) - (w^\top y + b) = 0,
    \qquad g'(a) = 1 + (w^\top \hat u)\,(1 - \tanh^2 a) > 0,

whose root lies in :math:`[w^\top y + b - |w^\top \hat u|,\ w^\top y + b + |w^\top \hat u|]`.
It is found by bisection (to the resolution of the dtype) and Newton polishing, then
:math:`x = y - \hat u \tanh(a)`. Gradients are those of the implicit function: the root is
detached and one Newton step is taken with the graph attached,
:math:`a = a_0 - g(a_0)/g'(a_0)`, whose derivative at the root is :math:`-\partial g / g'`.

Radial, :math:`y = x + \beta h(r)(x - x_0)` with :math:`h(r) = 1/(\alpha + r)`,
:math:`r = \lVert x - x_0 \rVert` and :math:`\beta > -\alpha`: taking norms,
:math:`R = \lVert y - x_0 \rVert = r (\alpha + \beta + r)/(\alpha + r)`, so :math:`r` is the
non-negative root of

.. math::
    r^2 + (\alpha + \beta - R)\, r - \alpha R = 0,

and :math:`x - x_0 = (y - x_0) / (1 + \beta h(r))`.

Both cache the log-determinant of the pair ``(x, y)`` of their last call, forward or inverse, so
``log_abs_det_jacobian(x, y)`` after either costs nothing. The cache is dropped once stale: after
an in-place change of the parameters (an optimizer step; for a conditioned transform, of the
conditional module's parameters or the context), a switch between ``.train()`` and ``.eval()``,
or for a grad-enabled call on a pair computed without grad.

References:
    | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015),
      https://arxiv.org/abs/1505.05770
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from pyro.distributions.transforms.planar import ConditionalPlanar, ConditionedPlanar, Planar
from pyro.distributions.transforms.radial import ConditionalRadial, ConditionedRadial, Radial
from pyro.nn import DenseNN
from torch import Tensor
from torch.distributions import Transform

from .._checks import check_context, check_positive_int, check_vector
from ._cache import StampedCacheMixin

__all__ = [
    "ConditionalInvertiblePlanar",
    "ConditionalInvertibleRadial",
    "InvertiblePlanar",
    "InvertibleRadial",
    "conditional_planar",
    "conditional_radial",
    "planar",
    "radial",
]

Params = Callable[[], Sequence[Tensor]] | Sequence[Tensor]


def _planar_pre_activation(wu: Tensor, target: Tensor) -> Tensor:
    r"""Solve :math:`a + w_u \tanh(a) = t` for :math:`a`, elementwise, with implicit gradients.

    Arguments:
        wu: :math:`w^\top \hat u > -1`, shape ``(..., 1)``.
        target: :math:`t = w^\top y + b`, shape ``(..., 1)``.

    Returns:
        The root, broadcast to the shape of ``wu`` and ``target``; differentiable in both.
    """
    with torch.no_grad():
        wu0, t0 = torch.broadcast_tensors(wu.detach(), target.detach())
        lo, hi = t0 - wu0.abs(), t0 + wu0.abs()  # |tanh| <= 1 brackets the root
        for _ in range(int(-math.log2(torch.finfo(t0.dtype).eps)) + 8):
            mid = 0.5 * (lo + hi)
            above = mid + wu0 * torch.tanh(mid) > t0  # g is increasing
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        root = 0.5 * (lo + hi)
        for _ in range(2):  # Newton polish, kept inside the bracket
            th = torch.tanh(root)
            step = (root + wu0 * th - t0) / (1 + wu0 * (1 - th * th))
            root = torch.minimum(torch.maximum(root - step, lo), hi)
    # One Newton step with the graph attached: exact implicit-function gradients at the root.
    th = torch.tanh(root)
    return root - (root + wu * th - target) / (1 + wu * (1 - th * th))


def _radial_radius(big_r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    r"""The non-negative root :math:`r` of :math:`r^2 + (\alpha + \beta - R) r - \alpha R = 0`.

    Uses the cancellation-free form of the quadratic formula on each side of
    :math:`p = \alpha + \beta - R = 0`, with inputs of the branch not taken replaced by safe
    values so that neither branch produces ``inf``/``NaN`` gradients.
    """
    p = alpha + beta - big_r
    q = alpha * big_r  # >= 0
    positive = p > 0
    p_pos = torch.where(positive, p, torch.ones_like(p))
    p_neg = torch.where(positive, -torch.ones_like(p), p)
    r_pos = 2 * q / (p_pos + torch.sqrt(p_pos * p_pos + 4 * q))
    r_neg = 0.5 * (torch.sqrt(p_neg * p_neg + 4 * q) - p_neg)
    return torch.where(positive, r_pos, r_neg)


class _PairCacheMixin(StampedCacheMixin):
    """Keeps ``(x, y, log|det dy/dx|)`` of the last call, forward or inverse.

    ``log_abs_det_jacobian(x, y)`` answers from it when ``x`` and ``y`` are the very tensors of
    that call and the transform has not changed since (see :class:`StampedCacheMixin`: a
    conditioned transform watches its conditional module's parameters and its context), and
    otherwise recomputes the forward map from ``x``.
    """

    input_dim: int | None = None
    _pair: tuple[Any, Any, Any] = (None, None, None)
    _owner: torch.nn.Module | None = None
    _context: Tensor | None = None
    _cached_logDetJ: Tensor | None

    def _stamp_module(self) -> torch.nn.Module:
        return self if self._owner is None else self._owner  # type: ignore[return-value]

    def _stamp_extra(self) -> tuple[Tensor, ...]:
        return () if self._context is None else (self._context,)

    def _call(self, x: Tensor) -> Tensor:
        check_vector("input", x, self.input_dim, finite=False)
        y = super()._call(x)  # type: ignore[misc]  # Pyro's forward map and log-det
        self._pair = (x, y, self._cached_logDetJ)
        return y

    def _store(self, x: Tensor, y: Tensor, ladj: Tensor) -> None:
        self._cached_logDetJ = ladj
        self._pair = (x, y, ladj)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``log|det dy/dx|`` per point: cached for the last pair, else from a forward call on ``x``."""
        key = self._drop_stale_cache()
        cached_x, cached_y, ladj = self._pair
        if x is cached_x and y is cached_y:
            return ladj
        self._call(x)
        self._cache_stamp = key
        return self._pair[2]

    def clear_cache(self) -> None:
        """Forget the last pair (and torch's own cached ``(x, y)``)."""
        self._pair = (None, None, None)
        self._cached_x_y = (None, None)


class _ConditionedInvertiblePlanar(_PairCacheMixin, ConditionedPlanar):
    """Pyro's ``ConditionedPlanar`` with an inverse; what the conditional planar's ``condition`` returns."""

    def __init__(
        self,
        params: Params,
        input_dim: int | None = None,
        owner: torch.nn.Module | None = None,
        context: Tensor | None = None,
    ) -> None:
        super().__init__(params)
        self.input_dim = input_dim
        self._owner = owner
        self._context = context

    def _inverse(self, y: Tensor) -> Tensor:
        bias, u, w = self._params() if callable(self._params) else self._params
        check_vector("value", y, w.shape[-1], finite=False)
        u_hat = self.u_hat(u, w)
        wu = (w * u_hat).sum(-1, keepdim=True)
        pre = _planar_pre_activation(wu, (w * y).sum(-1, keepdim=True) + bias)
        act = torch.tanh(pre)
        x = y - u_hat * act
        # Same expression as the forward log-det: log|1 + (1 - tanh^2(a)) w^T u_hat|.
        self._store(x, y, torch.log(torch.abs(1 + (1 - act.pow(2)) * wu)).squeeze(-1))
        return x


class InvertiblePlanar(_ConditionedInvertiblePlanar, Planar):
    r"""Pyro's planar flow :math:`y = x + \hat u \tanh(w^\top x + b)`, with an inverse.

    Parameters, forward map and the log-determinant of forward calls are Pyro's
    (:class:`~pyro.distributions.transforms.Planar`); the inverse solves the scalar equation of
    the module docstring per point (bisection and Newton) with implicit-function gradients, so
    ``TransformedDistribution.log_prob`` scores any point, and gradients reach the parameters
    through the inverse.

    Arguments:
        input_dim: Event dimension :math:`d`.

    Example:
        >>> import pyro.distributions as dist
        >>> flow = InvertiblePlanar(3)
        >>> q = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [flow])
        >>> y = torch.randn(5, 3)
        >>> q.log_prob(y).shape  # no KeyError: y was not produced by the flow
        torch.Size([5])
        >>> bool(torch.allclose(flow(flow.inv(y.clone())), y, atol=1e-5))
        True
    """

    def __init__(self, input_dim: int) -> None:
        check_positive_int("input_dim", input_dim)
        Planar.__init__(self, input_dim)


class _ConditionedInvertibleRadial(_PairCacheMixin, ConditionedRadial):
    """Pyro's ``ConditionedRadial`` with an inverse; what the conditional radial's ``condition`` returns."""

    def __init__(
        self,
        params: Params,
        input_dim: int | None = None,
        owner: torch.nn.Module | None = None,
        context: Tensor | None = None,
    ) -> None:
        super().__init__(params)
        self.input_dim = input_dim
        self._owner = owner
        self._context = context

    def _inverse(self, y: Tensor) -> Tensor:
        x0, alpha_prime, beta_prime = self._params() if callable(self._params) else self._params
        check_vector("value", y, x0.shape[-1], finite=False)
        alpha = F.softplus(alpha_prime)  # the same constraints as Pyro's forward
        beta = -alpha + F.softplus(beta_prime)
        diff = y - x0
        rad = _radial_radius(diff.norm(dim=-1, keepdim=True), alpha, beta)
        h = (alpha + rad).reciprocal()
        beta_h = beta * h
        x = x0 + diff / (1 + beta_h)
        ladj = (x0.size(-1) - 1) * torch.log1p(beta_h) + torch.log1p(beta_h - beta_h * h * rad)
        self._store(x, y, ladj.sum(-1))
        return x


class InvertibleRadial(_ConditionedInvertibleRadial, Radial):
    r"""Pyro's radial flow :math:`y = x + \beta h(r)(x - x_0)`, with a closed-form inverse.

    Parameters, forward map and the log-determinant of forward calls are Pyro's
    (:class:`~pyro.distributions.transforms.Radial`); the inverse takes the non-negative root of
    the quadratic of the module docstring for :math:`r`, then
    :math:`x = x_0 + (y - x_0)/(1 + \beta h(r))`.

    Arguments:
        input_dim: Event dimension :math:`d`.

    Example:
        >>> flow = InvertibleRadial(2)
        >>> y = torch.randn(4, 2)
        >>> bool(torch.allclose(flow(flow.inv(y.clone())), y, atol=1e-5))
        True
    """

    def __init__(self, input_dim: int) -> None:
        check_positive_int("input_dim", input_dim)
        Radial.__init__(self, input_dim)


def _dims_from_dense_nn(nn: object, which: int) -> tuple[int | None, int | None]:
    """``(input_dim, context_dim)`` read off a Pyro ``DenseNN`` hypernetwork, else ``None``."""
    if isinstance(nn, DenseNN):
        return int(nn.param_dims[which]), int(nn.input_dim)
    return None, None


class _ConditionalInvertible:
    """What the conditional planar and radial flows share.

    Dimensions for input checks, and a ``.condition(context)`` returning a transform with an inverse.
    """

    _conditioned: type  # the transform bound to a context
    _input_param: int  # which output of a DenseNN has size input_dim

    def __init__(
        self,
        nn: Callable[[Tensor], Sequence[Tensor]],
        input_dim: int | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__(nn)  # type: ignore[call-arg]
        found_input, found_context = _dims_from_dense_nn(nn, self._input_param)
        self.input_dim = input_dim if input_dim is not None else found_input
        self.context_dim = context_dim if context_dim is not None else found_context

    def condition(self, context: Tensor) -> Transform:
        """Bind the flow to ``context`` (shape ``(..., context_dim)``, broadcast against the points)."""
        check_context(context, self.context_dim)
        params = partial(self._params, context)  # type: ignore[attr-defined]
        return self._conditioned(params, self.input_dim, owner=self, context=context)


class ConditionalInvertiblePlanar(_ConditionalInvertible, ConditionalPlanar):
    r"""Pyro's conditional planar flow whose ``.condition(context)`` has an inverse.

    Arguments:
        nn: A callable mapping a context ``(..., context_dim)`` to the triple
            :math:`(b, u, w)` of shapes ``(..., 1)``, ``(..., d)``, ``(..., d)``, e.g. a
            :class:`pyro.nn.DenseNN` with ``param_dims=[1, d, d]``.
        input_dim: Event dimension :math:`d`, used to check inputs (read off a ``DenseNN`` when
            not given).
        context_dim: Context dimension, used to check contexts (likewise).

    Example:
        >>> flow = conditional_planar(2, context_dim=3)
        >>> t = flow.condition(torch.randn(3))
        >>> y = torch.randn(5, 2)
        >>> bool(torch.allclose(t(t.inv(y.clone())), y, atol=1e-5))
        True
    """

    _conditioned = _ConditionedInvertiblePlanar
    _input_param = 1


class ConditionalInvertibleRadial(_ConditionalInvertible, ConditionalRadial):
    r"""Pyro's conditional radial flow whose ``.condition(context)`` has an inverse.

    Arguments:
        nn: A callable mapping a context ``(..., context_dim)`` to the triple
            :math:`(x_0, \alpha', \beta')` of shapes ``(..., d)``, ``(..., 1)``, ``(..., 1)``,
            e.g. a :class:`pyro.nn.DenseNN` with ``param_dims=[d, 1, 1]``.
        input_dim: Event dimension :math:`d`, used to check inputs (read off a ``DenseNN`` when
            not given).
        context_dim: Context dimension, used to check contexts (likewise).

    Example:
        >>> flow = conditional_radial(2, context_dim=3)
        >>> t = flow.condition(torch.randn(3))
        >>> y = torch.randn(5, 2)
        >>> bool(torch.allclose(t(t.inv(y.clone())), y, atol=1e-5))
        True
    """

    _conditioned = _ConditionedInvertibleRadial
    _input_param = 0


def planar(input_dim: int) -> InvertiblePlanar:
    """Build an :class:`InvertiblePlanar` (Pyro-style factory, same signature as Pyro's).

    Arguments:
        input_dim: Event dimension.

    Example:
        >>> planar(4).inv(torch.zeros(4)).shape
        torch.Size([4])
    """
    return InvertiblePlanar(input_dim)


def radial(input_dim: int) -> InvertibleRadial:
    """Build an :class:`InvertibleRadial` (Pyro-style factory, same signature as Pyro's).

    Arguments:
        input_dim: Event dimension.

    Example:
        >>> radial(4).inv(torch.zeros(4)).shape
        torch.Size([4])
    """
    return InvertibleRadial(input_dim)


def _hidden(input_dim: int, hidden_dims: Sequence[int] | None) -> list[int]:
    return [input_dim * 10, input_dim * 10] if hidden_dims is None else list(hidden_dims)


def conditional_planar(
    input_dim: int, context_dim: int, hidden_dims: Sequence[int] | None = None
) -> ConditionalInvertiblePlanar:
    """Build a :class:`ConditionalInvertiblePlanar` with a :class:`pyro.nn.DenseNN` hypernetwork.

    Arguments:
        input_dim: Event dimension :math:`d`.
        context_dim: Context dimension.
        hidden_dims: Hidden widths of the hypernetwork (default ``[10 d, 10 d]``, as Pyro).

    Example:
        >>> conditional_planar(2, 1).condition(torch.ones(1)).inv(torch.zeros(3, 2)).shape
        torch.Size([3, 2])
    """
    check_positive_int("input_dim", input_dim)
    check_positive_int("context_dim", context_dim)
    nn = DenseNN(context_dim, _hidden(input_dim, hidden_dims), param_dims=[1, input_dim, input_dim])
    return ConditionalInvertiblePlanar(nn, input_dim, context_dim)


def conditional_radial(
    input_dim: int, context_dim: int, hidden_dims: Sequence[int] | None = None
) -> ConditionalInvertibleRadial:
    """Build a :class:`ConditionalInvertibleRadial` with a :class:`pyro.nn.DenseNN` hypernetwork.

    Arguments:
        input_dim: Event dimension :math:`d`.
        context_dim: Context dimension.
        hidden_dims: Hidden widths of the hypernetwork (default ``[10 d, 10 d]``, as Pyro).

    Example:
        >>> conditional_radial(2, 1).condition(torch.ones(1)).inv(torch.zeros(3, 2)).shape
        torch.Size([3, 2])
    """
    check_positive_int("input_dim", input_dim)
    check_positive_int("context_dim", context_dim)
    nn = DenseNN(context_dim, _hidden(input_dim, hidden_dims), param_dims=[input_dim, 1, 1])
    return ConditionalInvertibleRadial(nn, input_dim, context_dim)
