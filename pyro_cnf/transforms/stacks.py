r"""Multi-layer discrete flows built from Pyro's transforms, with input checks and inverses.

Each factory returns a :class:`FlowStack` (a Pyro ``ComposeTransformModule``) or, with
``context_dim > 0``, a :class:`ConditionalFlowStack`. Layers are Pyro's own where Pyro has them
(coupling, autoregressive, spline, neural/block autoregressive, Sylvester, Householder); what Pyro
lacks is ours: invertible planar/radial layers, ActNorm, an LU linear layer, a registered inverse
(for MAF), a stored permutation (saved in ``state_dict``), and a bisection inverse for the
neural/block autoregressive flows.

A stack maps base -> data. Every layer caches its last ``(x, y)`` pair, so a sample drawn through
the stack is scored without inverting it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro.distributions.transforms as T
import torch
from pyro.distributions import constraints
from pyro.distributions.conditional import (
    ConditionalComposeTransformModule,
    ConditionalTransformModule,
)
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule
from torch import Tensor
from torch.distributions import Transform

from .._checks import check_context, check_flow_input, check_positive_int
from ._cache import StampedCacheMixin, trusted_key
from .continuous import CNF, ConditionalCNF
from .linear import InverseTransformModule, _default_dtype, actnorm, lu_linear
from .planar_radial import conditional_planar, conditional_radial, planar, radial

__all__ = [
    "ConditionalFlowStack",
    "FlowStack",
    "Permutation",
    "bnaf",
    "glow",
    "householder_flow",
    "hybrid",
    "iaf",
    "maf",
    "naf",
    "nsf_autoregressive",
    "nsf_coupling",
    "planar_flow",
    "radial_flow",
    "realnvp",
    "sylvester_flow",
]


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


def _reverse(input_dim: int) -> Permutation:
    return Permutation(torch.arange(input_dim - 1, -1, -1))


class _Bisect(TransformModule):
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


class _Sylvester(T.Sylvester):
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


class _ConditionalBisect(ConditionalTransformModule):
    def __init__(self, transform: ConditionalTransformModule) -> None:
        super().__init__()
        self.transform = transform

    def condition(self, context: Tensor) -> Transform:
        order = getattr(getattr(self.transform, "nn", None), "permutation", None)
        return _Bisect(self.transform.condition(context), order)


class FlowStack(StampedCacheMixin, ComposeTransformModule):
    """A stack of flow layers (base -> data) that checks its input and caches its last call.

    The cache answers ``inv(y)`` for the ``y`` it just produced (and the forward map for the last
    ``x``) without recomputing; it is dropped, with every layer's cache, when the stack changes
    (a parameter update, ``.train()``/``.eval()``, or a grad-enabled call after a ``no_grad`` one),
    so scoring the same data tensor at every training step is correct.

    Arguments:
        parts: The layers, applied in order.
        input_dim: Event dimension, checked on every call.
        inverse_error: Set when the stack has no inverse: the message of the
            ``NotImplementedError`` raised when a point it did not produce is inverted.
        owner: The module whose parameters the stack depends on, when it is not the stack itself
            (a conditioned stack depends on its conditional parent).

    Example:
        >>> flow = realnvp(4, num_layers=2)
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(flow.inv(flow(x).clone()), x, atol=1e-5)
        True
    """

    def __init__(
        self,
        parts: Sequence[Transform],
        input_dim: int,
        inverse_error: str | None = None,
        owner: torch.nn.Module | None = None,
    ) -> None:
        super().__init__(list(parts), cache_size=1)
        self.input_dim = input_dim
        self.inverse_error = inverse_error
        self._owner = [owner] if owner is not None else []  # a list: not registered as a child

    def _stamp_module(self) -> torch.nn.Module:
        return self._owner[0] if self._owner else self

    @property
    def inv(self) -> Transform:
        """The inverse, through each layer's inverse (answered from the cache when possible)."""
        return Transform.inv.fget(self)  # type: ignore[attr-defined]

    def _call(self, x: Tensor) -> Tensor:
        with _default_dtype(x.dtype):
            for part in self.parts:
                x = part(x)
        return x

    def _inverse(self, y: Tensor) -> Tensor:
        with _default_dtype(y.dtype):
            for part in reversed(self.parts):
                y = part.inv(y)
        return y

    def __call__(self, x: Tensor) -> Tensor:
        """The forward map (base -> data)."""
        check_flow_input("flow input", x, self.input_dim, self._stamp_module())
        key = self._drop_stale_cache()
        cached_x, cached_y = self._cached_x_y
        if x is cached_x:
            return cached_y
        with trusted_key(key):  # the stack's key, just checked, stands for its layers'
            y = self._call(x)
        self._cached_x_y = x, y
        self._cache_stamp = key
        return y

    def _inv_call(self, y: Tensor) -> Tensor:
        check_flow_input("flow output value", y, self.input_dim, self._stamp_module())
        key = self._drop_stale_cache()
        cached_x, cached_y = self._cached_x_y
        if y is cached_y:
            return cached_x
        if self.inverse_error is not None:
            raise NotImplementedError(self.inverse_error)
        with trusted_key(key):
            x = self._inverse(y)
        self._cached_x_y = x, y
        self._cache_stamp = key
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``log|det dy/dx|``, summed over the layers (from their caches when ``x`` was just mapped)."""
        key = self._drop_stale_cache()
        with _default_dtype(x.dtype), trusted_key(key):
            return super().log_abs_det_jacobian(x, y)

    def clear_cache(self) -> None:
        """Drop the stack's cached pair and every layer's."""
        self._cached_x_y = (None, None)
        for part in self.parts:
            clear = getattr(part, "clear_cache", None)
            if clear is not None:
                clear()
            else:
                part._cached_x_y = (None, None)

    def with_cache(self, cache_size: int = 1) -> Transform:
        """The stack itself: it always caches (``cache_size=1``)."""
        if cache_size != 1:
            raise ValueError("a FlowStack always caches its last call (cache_size=1)")
        return self

    __hash__ = ComposeTransformModule.__hash__


class ConditionalFlowStack(ConditionalComposeTransformModule):
    """A stack of conditional and plain layers; ``.condition(c)`` gives a :class:`FlowStack`.

    Arguments:
        transforms: Conditional transforms and plain transforms (used as they are).
        input_dim: Event dimension.
        context_dim: Context dimension, checked by :meth:`condition`.
        inverse_error: As for :class:`FlowStack`.

    Example:
        >>> flow = realnvp(4, num_layers=2, context_dim=3)
        >>> flow.condition(torch.randn(3))(torch.randn(5, 4)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        transforms: Sequence[Any],
        input_dim: int,
        context_dim: int,
        inverse_error: str | None = None,
    ) -> None:
        super().__init__(list(transforms), cache_size=1)
        self.input_dim = input_dim
        self.context_dim = context_dim
        self.inverse_error = inverse_error

    def condition(self, context: Tensor) -> FlowStack:
        """The stack at ``context`` (shape ``(..., context_dim)``)."""
        check_context(context, self.context_dim)
        parts = [t.condition(context) for t in self.transforms]
        return FlowStack(parts, self.input_dim, self.inverse_error, owner=self)

    __hash__ = ConditionalComposeTransformModule.__hash__


def _stack(
    input_dim: int,
    context_dim: int,
    layer: Callable[[int], Any],
    num_layers: int,
    permute: bool,
    inverse_error: str | None = None,
    prefix: Sequence[Callable[[int], Any]] = (),
) -> FlowStack | ConditionalFlowStack:
    check_positive_int("input_dim", input_dim)
    check_positive_int("num_layers", num_layers)
    if not isinstance(context_dim, int) or context_dim < 0:
        raise ValueError(f"context_dim must be a non-negative integer, got {context_dim!r}")
    parts: list[Any] = []
    for k in range(num_layers):
        parts.extend(make(k) for make in prefix)
        parts.append(layer(k))
        if permute and k < num_layers - 1:
            parts.append(_reverse(input_dim))
    if context_dim:
        return ConditionalFlowStack(parts, input_dim, context_dim, inverse_error)
    return FlowStack(parts, input_dim, inverse_error)


def _layer(
    context_dim: int, plain: Callable[[], Any], conditional: Callable[[], Any]
) -> Callable[[int], Any]:
    """The layer builder for a stack: ``conditional`` when there is a context, else ``plain``."""
    make = conditional if context_dim else plain
    return lambda k: make()


def _no_context(name: str, context_dim: int) -> None:
    if context_dim:
        raise ValueError(
            f"the {name} flow has no conditional variant (Pyro has no conditional layer)"
        )


def realnvp(
    input_dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    context_dim: int = 0,
) -> FlowStack | ConditionalFlowStack:
    r"""RealNVP: affine coupling layers with the halves swapped between layers.

    Each layer keeps :math:`x_{1:k}` and maps :math:`x_{k+1:d} \mapsto x_{k+1:d}\odot
    e^{s(x_{1:k})} + t(x_{1:k})` (Pyro's ``AffineCoupling``).

    References:
        | Density estimation using Real NVP (Dinh et al., 2017), https://arxiv.org/abs/1605.08803

    Arguments:
        input_dim: Event dimension (>= 2).
        num_layers: Number of coupling layers.
        hidden_dims: Hidden widths of each coupling network (Pyro's default when None).
        context_dim: Context dimension (0: unconditional).

    Example:
        >>> realnvp(4, num_layers=2)(torch.randn(3, 4)).shape
        torch.Size([3, 4])
    """
    layer = _layer(
        context_dim,
        lambda: T.affine_coupling(input_dim, hidden_dims),
        lambda: T.conditional_affine_coupling(input_dim, context_dim, hidden_dims),
    )
    return _stack(input_dim, context_dim, layer, num_layers, permute=True)


def glow(
    input_dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    context_dim: int = 0,
) -> FlowStack | ConditionalFlowStack:
    r"""Glow for vectors: ActNorm, an invertible LU-decomposed linear map, an affine coupling.

    References:
        | Glow (Kingma & Dhariwal, 2018), https://arxiv.org/abs/1807.03039

    Arguments:
        input_dim: Event dimension (>= 2).
        num_layers: Number of (ActNorm, LU linear, coupling) blocks.
        hidden_dims: Hidden widths of each coupling network.
        context_dim: Context dimension (0: unconditional).

    Example:
        >>> glow(4, num_layers=2)(torch.randn(3, 4)).shape
        torch.Size([3, 4])
    """
    coupling = _layer(
        context_dim,
        lambda: T.affine_coupling(input_dim, hidden_dims),
        lambda: T.conditional_affine_coupling(input_dim, context_dim, hidden_dims),
    )
    prefix = (lambda k: actnorm(input_dim), lambda k: lu_linear(input_dim))
    return _stack(input_dim, context_dim, coupling, num_layers, False, prefix=prefix)


def maf(
    input_dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    context_dim: int = 0,
) -> FlowStack | ConditionalFlowStack:
    r"""Masked autoregressive flow: fast density evaluation, sequential sampling.

    The inverse of Pyro's ``AffineAutoregressive`` layer, so that scoring data (the inverse
    direction, data -> base) is one network pass and sampling takes ``d`` passes.

    References:
        | Masked Autoregressive Flow (Papamakarios et al., 2017), https://arxiv.org/abs/1705.07057

    Arguments:
        input_dim: Event dimension.
        num_layers: Number of autoregressive layers.
        hidden_dims: Hidden widths of each MADE network.
        context_dim: Context dimension (0: unconditional).

    Example:
        >>> maf(3, num_layers=2)(torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """
    layer = _layer(
        context_dim,
        lambda: InverseTransformModule(T.affine_autoregressive(input_dim, hidden_dims)),
        lambda: T.conditional_affine_autoregressive(input_dim, context_dim, hidden_dims).inv,
    )
    return _stack(input_dim, context_dim, layer, num_layers, permute=True)


def iaf(
    input_dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    context_dim: int = 0,
) -> FlowStack | ConditionalFlowStack:
    r"""Inverse autoregressive flow: one-pass sampling (the guide direction), sequential inverse.

    References:
        | Improved Variational Inference with IAF (Kingma et al., 2016), https://arxiv.org/abs/1606.04934

    Arguments:
        input_dim: Event dimension.
        num_layers: Number of autoregressive layers.
        hidden_dims: Hidden widths of each MADE network.
        context_dim: Context dimension (0: unconditional).

    Example:
        >>> iaf(3, num_layers=2)(torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """
    layer = _layer(
        context_dim,
        lambda: T.affine_autoregressive(input_dim, hidden_dims),
        lambda: T.conditional_affine_autoregressive(input_dim, context_dim, hidden_dims),
    )
    return _stack(input_dim, context_dim, layer, num_layers, permute=True)


def nsf_coupling(
    input_dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    count_bins: int = 8,
    bound: float = 3.0,
    context_dim: int = 0,
) -> FlowStack:
    r"""Neural spline flow, coupling version: rational-quadratic spline coupling layers.

    References:
        | Neural Spline Flows (Durkan et al., 2019), https://arxiv.org/abs/1906.04032

    Arguments:
        input_dim: Event dimension (>= 2).
        num_layers: Number of coupling layers.
        hidden_dims: Hidden widths of each coupling network.
        count_bins: Spline segments.
        bound: Splines act on :math:`[-B, B]`, identity outside.
        context_dim: Must be 0 (Pyro has no conditional spline coupling).

    Example:
        >>> nsf_coupling(4, num_layers=2)(torch.randn(3, 4)).shape
        torch.Size([3, 4])
    """
    _no_context("nsf_coupling", context_dim)
    return _stack(
        input_dim,
        0,
        lambda k: T.spline_coupling(
            input_dim, hidden_dims=hidden_dims, count_bins=count_bins, bound=bound
        ),
        num_layers,
        True,
    )


def nsf_autoregressive(
    input_dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    count_bins: int = 8,
    bound: float = 3.0,
    context_dim: int = 0,
) -> FlowStack | ConditionalFlowStack:
    r"""Neural spline flow, autoregressive version (Pyro's ``SplineAutoregressive`` layers).

    References:
        | Neural Spline Flows (Durkan et al., 2019), https://arxiv.org/abs/1906.04032

    Arguments:
        input_dim: Event dimension.
        num_layers: Number of autoregressive spline layers.
        hidden_dims: Hidden widths of each autoregressive network.
        count_bins: Spline segments.
        bound: Splines act on :math:`[-B, B]`, identity outside.
        context_dim: Context dimension (0: unconditional).

    Example:
        >>> nsf_autoregressive(3, num_layers=2)(torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """
    layer = _layer(
        context_dim,
        lambda: T.spline_autoregressive(input_dim, hidden_dims, count_bins, bound),
        lambda: T.conditional_spline_autoregressive(
            input_dim, context_dim, hidden_dims, count_bins, bound
        ),
    )
    return _stack(input_dim, context_dim, layer, num_layers, permute=True)


def planar_flow(
    input_dim: int, num_layers: int = 8, context_dim: int = 0
) -> FlowStack | ConditionalFlowStack:
    r"""A stack of planar layers :math:`x + u \tanh(w^\top x + b)`, with a real inverse.

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015), https://arxiv.org/abs/1505.05770

    Arguments:
        input_dim: Event dimension.
        num_layers: Number of planar layers.
        context_dim: Context dimension (0: unconditional).

    Example:
        >>> planar_flow(2, num_layers=3)(torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """
    layer = _layer(
        context_dim, lambda: planar(input_dim), lambda: conditional_planar(input_dim, context_dim)
    )
    return _stack(input_dim, context_dim, layer, num_layers, permute=False)


def radial_flow(
    input_dim: int, num_layers: int = 8, context_dim: int = 0
) -> FlowStack | ConditionalFlowStack:
    r"""A stack of radial layers :math:`x + \beta (x - x_0)/(\alpha + \lVert x - x_0\rVert)`, with a real inverse.

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015), https://arxiv.org/abs/1505.05770

    Arguments:
        input_dim: Event dimension.
        num_layers: Number of radial layers.
        context_dim: Context dimension (0: unconditional).

    Example:
        >>> radial_flow(2, num_layers=3)(torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """
    layer = _layer(
        context_dim, lambda: radial(input_dim), lambda: conditional_radial(input_dim, context_dim)
    )
    return _stack(input_dim, context_dim, layer, num_layers, permute=False)


def sylvester_flow(input_dim: int, num_layers: int = 4, context_dim: int = 0) -> FlowStack:
    r"""A stack of Householder-Sylvester layers. No inverse.

    Built on Pyro's ``Sylvester`` with the factors reordered so that its log-determinant formula
    is exact (Pyro's own layer pairs :math:`\tanh(x S Q^\top + b) Q R` with a log-det that holds
    only for :math:`Q = I`; checked against the autograd Jacobian in our tests).

    The stack samples and scores its own samples (through the cache) and so serves as a guide; it
    cannot score other points: its inverse raises ``NotImplementedError``.

    References:
        | Sylvester Normalizing Flows (van den Berg et al., 2018), https://arxiv.org/abs/1803.05649

    Arguments:
        input_dim: Event dimension.
        num_layers: Number of Sylvester layers.
        context_dim: Must be 0.

    Example:
        >>> sylvester_flow(3, num_layers=2)(torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """
    _no_context("sylvester", context_dim)
    message = (
        "the sylvester flow has no inverse: it can score the samples it drew (cached) but not "
        "other points; use planar_flow, realnvp, maf or nsf to score data"
    )
    return _stack(input_dim, 0, lambda k: _Sylvester(input_dim), num_layers, True, message)


def householder_flow(
    input_dim: int, num_layers: int = 4, context_dim: int = 0
) -> FlowStack | ConditionalFlowStack:
    r"""Householder reflections (volume preserving): an orthogonal map learned as a product of reflections.

    References:
        | Improving VAEs with Householder Flow (Tomczak & Welling, 2016), https://arxiv.org/abs/1611.09630

    Arguments:
        input_dim: Event dimension (>= 2).
        num_layers: Number of reflections.
        context_dim: Context dimension (0: unconditional).

    Example:
        >>> householder_flow(3, num_layers=2)(torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """
    layer = _layer(
        context_dim,
        lambda: T.householder(input_dim),
        lambda: T.conditional_householder(input_dim, context_dim),
    )
    return _stack(input_dim, context_dim, layer, num_layers, permute=False)


def naf(
    input_dim: int,
    num_layers: int = 2,
    hidden_dims: Sequence[int] | None = None,
    width: int = 16,
    context_dim: int = 0,
) -> FlowStack | ConditionalFlowStack:
    r"""Neural autoregressive flow (Pyro's ``NeuralAutoregressive``), inverse by bisection.

    Each output coordinate is a monotone neural network of its input coordinate, conditioned on
    the earlier ones. The inverse (scoring points the flow did not draw) bisects one coordinate
    at a time; it is accurate but not differentiable with respect to the parameters.

    References:
        | Neural Autoregressive Flows (Huang et al., 2018), https://arxiv.org/abs/1804.00779

    Arguments:
        input_dim: Event dimension.
        num_layers: Number of NAF layers.
        hidden_dims: Hidden widths of each autoregressive network.
        width: Width of the monotone network of each coordinate.
        context_dim: Context dimension (0: unconditional).

    Example:
        >>> naf(2, num_layers=1)(torch.randn(3, 2)).shape
        torch.Size([3, 2])
    """

    def plain() -> _Bisect:
        module = T.neural_autoregressive(input_dim, hidden_dims, width=width)
        return _Bisect(module, module.arn.permutation)

    def conditional() -> _ConditionalBisect:
        return _ConditionalBisect(
            T.conditional_neural_autoregressive(input_dim, context_dim, hidden_dims, width=width)
        )

    return _stack(input_dim, context_dim, _layer(context_dim, plain, conditional), num_layers, True)


def bnaf(
    input_dim: int,
    num_layers: int = 2,
    hidden_factors: Sequence[int] = (8, 8),
    context_dim: int = 0,
) -> FlowStack:
    r"""Block neural autoregressive flow (Pyro's ``BlockAutoregressive``), inverse by bisection.

    References:
        | Block Neural Autoregressive Flow (De Cao et al., 2019), https://arxiv.org/abs/1904.04676

    Arguments:
        input_dim: Event dimension.
        num_layers: Number of BNAF layers.
        hidden_factors: Block widths as multiples of ``input_dim``.
        context_dim: Must be 0.

    Example:
        >>> bnaf(2, num_layers=1)(torch.randn(3, 2)).shape
        torch.Size([3, 2])
    """
    _no_context("bnaf", context_dim)

    def layer(k: int) -> Any:
        return _Bisect(T.block_autoregressive(input_dim, hidden_factors=list(hidden_factors)))

    return _stack(input_dim, 0, layer, num_layers, True)


def hybrid(
    input_dim: int,
    num_layers: int = 2,
    hidden_dims: Sequence[int] | None = None,
    context_dim: int = 0,
    **cnf_kwargs: Any,
) -> FlowStack | ConditionalFlowStack:
    r"""A discrete RealNVP stack followed by a CNF block: cheap coarse shape, then a smooth finish.

    Arguments:
        input_dim: Event dimension (>= 2).
        num_layers: Coupling layers before the CNF.
        hidden_dims: Hidden widths of the coupling networks.
        context_dim: Context dimension (0: unconditional); conditions both parts.
        **cnf_kwargs: Passed to :class:`~pyro_cnf.CNF` / :class:`~pyro_cnf.ConditionalCNF`.

    Example:
        >>> hybrid(2, num_layers=1)(torch.randn(3, 2)).shape
        torch.Size([3, 2])
    """
    head = realnvp(input_dim, num_layers, hidden_dims, context_dim)
    if isinstance(head, ConditionalFlowStack):
        tail = ConditionalCNF(input_dim, context_dim, **cnf_kwargs)
        return ConditionalFlowStack([*head, tail], input_dim, context_dim)
    return FlowStack([*head.parts, CNF(input_dim, **cnf_kwargs)], input_dim)
