r"""Flow layers composed into one flow: :class:`FlowStack`, :class:`ConditionalFlowStack`.

A stack maps base -> data through its layers in order, checks its input and caches its last
call: a sample drawn through the stack is scored without inverting it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pyro.distributions.conditional import ConditionalComposeTransformModule
from pyro.distributions.torch_transform import ComposeTransformModule
from torch import Tensor
from torch.distributions import Transform

from .._checks import check_context, check_flow_input
from ._cache import StampedCacheMixin, trusted_key
from .linear import default_dtype

__all__ = ["ConditionalFlowStack", "FlowStack"]


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
        >>> from pyro_cnf.transforms import realnvp
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
        with default_dtype(x.dtype):
            for part in self.parts:
                x = part(x)
        return x

    def _inverse(self, y: Tensor) -> Tensor:
        with default_dtype(y.dtype):
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
        with default_dtype(x.dtype), trusted_key(key):
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
        >>> from pyro_cnf.transforms import realnvp
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
