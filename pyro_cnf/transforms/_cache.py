"""A one-pair transform cache that notices when the transform has changed.

Torch's transform cache (``cache_size=1``) returns the last output whenever it is called again on
the same tensor object, even after an optimizer step has changed the parameters: a density
estimation loop scoring the same data tensor every step then reuses the first step's result (and
its freed graph). :class:`StampedCacheMixin` keeps torch's cache but drops it when it is stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["StampedCacheMixin", "cache_stamp", "is_stale", "stamp_parameters"]


def stamp_parameters(module: torch.nn.Module) -> tuple[Tensor, ...]:
    """The module's parameters, listed on first use and kept.

    Walking the module tree at every call costs more than the transform itself for small flows.
    The kept list stays right under ``.to()``, ``load_state_dict`` and optimizer steps (they
    update parameters in place). Parameters added to a module after its first call are not
    watched.
    """
    cached = module.__dict__.get("_stamp_parameter_list")
    if cached is None:
        cached = tuple(module.parameters())
        module.__dict__["_stamp_parameter_list"] = cached
    return cached


Stamp = tuple[bool, bool, tuple[int, ...]]


def cache_stamp(module: torch.nn.Module, tensors: Iterable[Tensor] | None = None) -> Stamp:
    """What a cached result depends on: training mode, grad mode, parameter versions."""
    tensors = stamp_parameters(module) if tensors is None else tensors
    return module.training, torch.is_grad_enabled(), tuple(t._version for t in tensors)


def is_stale(old: Stamp, new: Stamp) -> bool:
    """Whether a result cached under ``old`` is wrong under ``new``.

    It is when the module changed mode or parameters, or a graph is needed now and was not built.
    """
    return old[0] != new[0] or old[2] != new[2] or (new[1] and not old[1])


class StampedCacheMixin:
    """Drop torch's cached ``(x, y)`` when it no longer describes the transform.

    The cache is stale after a change of any tensor in :meth:`_stamp_tensors` (an in-place
    optimizer step bumps their version counters), a switch between ``.train()`` and ``.eval()``
    of :meth:`_stamp_module`, or for a grad-enabled call when the pair was computed without grad.
    Put it before the transform class in the bases; it calls ``clear_cache()`` (Pyro's patch of
    ``Transform``, or an override) to drop the cache.
    """

    _cache_stamp: tuple[Any, ...] | None = None
    _cached_x_y: tuple[Any, Any]

    def _stamp_module(self) -> torch.nn.Module:
        return self  # type: ignore[return-value]

    def _stamp_tensors(self) -> Iterable[Tensor]:
        return stamp_parameters(self._stamp_module())

    def _current_stamp(self) -> Stamp:
        return cache_stamp(self._stamp_module(), self._stamp_tensors())

    def _drop_stale_cache(self) -> None:
        old = self._cache_stamp
        if old is None:
            return
        if is_stale(old, self._current_stamp()):
            self.clear_cache()  # type: ignore[attr-defined]
            self._cache_stamp = None

    def __call__(self, x: Tensor) -> Tensor:
        """The forward map, answered from the cache when ``x`` is the last input and nothing changed."""
        self._drop_stale_cache()
        hit = x is self._cached_x_y[0]
        y = super().__call__(x)  # type: ignore[misc]
        if not hit:
            self._cache_stamp = self._current_stamp()
        return y

    def _inv_call(self, y: Tensor) -> Tensor:
        self._drop_stale_cache()
        hit = y is self._cached_x_y[1]
        x = super()._inv_call(y)  # type: ignore[misc]
        if not hit:
            self._cache_stamp = self._current_stamp()
        return x
