"""The one key that decides whether a flow's cached ``(x, y, log|det|)`` still holds.

Every flow in this package caches its last pair so that sampling and then scoring the sample
costs one pass (one ODE solve for a CNF). Torch's own transform cache returns the last output
whenever it is called on the same tensor object, even after the parameters changed; a loop
scoring one data tensor at every step would then reuse the first step's result and its freed
graph. A cached pair here is used only under the :class:`CacheKey` it was made under, which
records everything the result depends on:

* the module's parameters as objects (walked at every call, so ``load_state_dict(...,
  assign=True)`` or a reassigned parameter is seen), their version counters (in-place optimizer
  steps) and a copy of their values (writes through ``.data``, which bump no version counter);
* settings that are not parameters, from every submodule with a ``_cache_settings()`` method
  (a CNF's integration time, solvers and trace estimator);
* training mode and grad mode (a pair computed without grad is not reused with grad).

Written by hand: torch and Pyro key their caches on the input tensor's identity alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "CacheKey",
    "StampedCacheMixin",
    "cache_key",
    "current_key",
    "is_stale",
    "trusted_key",
]


class CacheKey(NamedTuple):
    """What a cached result depends on (see the module docstring)."""

    training: bool
    grad: bool
    tensors: tuple[Tensor, ...]
    versions: tuple[int, ...]
    values: tuple[Tensor, ...]
    settings: tuple[Any, ...]


def _snapshot(params: list[Tensor]) -> tuple[Tensor, ...]:
    """A copy of the parameters' values: one flat tensor per dtype and device (one op each)."""
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p.data.reshape(-1))
    return tuple(torch.cat(group) for group in groups.values())


_structure_generation = 0


def _structure_changed(*_: Any) -> None:
    global _structure_generation
    _structure_generation += 1


# Any parameter or submodule registered anywhere (a new module, ``module.w = nn.Parameter(...)``,
# ``load_state_dict(..., assign=True)``) may change a flow's parameter list: walk it again then.
torch.nn.modules.module.register_module_parameter_registration_hook(_structure_changed)
torch.nn.modules.module.register_module_module_registration_hook(_structure_changed)


def _parameters_and_settings(module: torch.nn.Module) -> tuple[list[Tensor], list[Any]]:
    """Every parameter of the module tree, and every submodule's ``_cache_settings()``.

    The walk (which parameter slots and which submodules) is kept on the module until a
    parameter or module is registered anywhere; the parameters are read from their slots at
    every call, so one replaced in ``module._parameters`` directly (as ``pyro.module`` does) is
    seen too.
    """
    kept = module.__dict__.get("_cache_walk")
    if kept is None or kept[0] != _structure_generation:
        slots: list[tuple[dict[str, Any], str]] = []
        with_settings: list[Any] = []
        for m in module.modules():
            slots.extend((m._parameters, name) for name in m._parameters)
            if hasattr(type(m), "_cache_settings"):
                with_settings.append(m)
        kept = (_structure_generation, slots, with_settings)
        module.__dict__["_cache_walk"] = kept
    params = [p for p in (slot[name] for slot, name in kept[1]) if p is not None]
    return params, [m._cache_settings() for m in kept[2]]


def cache_key(module: torch.nn.Module, extra: Iterable[Tensor] = ()) -> CacheKey:
    """The key of a result computed now by ``module`` (and from the tensors in ``extra``)."""
    params, settings = _parameters_and_settings(module)
    tensors = (*params, *extra)
    return CacheKey(
        module.training,
        torch.is_grad_enabled(),
        tensors,
        tuple(t._version for t in tensors),
        _snapshot(params),
        tuple(settings),
    )


def is_stale(old: CacheKey, new: CacheKey) -> bool:
    """Whether a result cached under ``old`` is wrong under ``new``.

    It is when anything in the key changed, or a graph is needed now and was not built.
    """
    if old is new:
        return False
    return (
        old.training != new.training
        or (new.grad and not old.grad)
        or len(old.tensors) != len(new.tensors)
        or any(a is not b for a, b in zip(old.tensors, new.tensors, strict=True))
        or old.versions != new.versions
        or old.settings != new.settings
        or len(old.values) != len(new.values)
        or not all(torch.equal(a, b) for a, b in zip(old.values, new.values, strict=True))
    )


# Inside a stack's call the stack's key, just checked, stands for every layer in it: the layers
# reuse it instead of each building its own (a planar stack of 8 layers built 24 keys a call).
_TRUSTED: ContextVar[CacheKey | None] = ContextVar("pyro_cnf_trusted_cache_key", default=None)


@contextmanager
def trusted_key(key: CacheKey) -> Iterator[None]:
    """Let the transforms called inside use ``key`` (the enclosing stack's, just checked)."""
    token = _TRUSTED.set(key)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def current_key(module: torch.nn.Module, extra: Iterable[Tensor] = ()) -> CacheKey:
    """The enclosing stack's checked key inside its call, else :func:`cache_key`."""
    key = _TRUSTED.get()
    return key if key is not None else cache_key(module, extra)


class StampedCacheMixin:
    """Keep torch's cached ``(x, y)`` only while :func:`cache_key` of the transform is unchanged.

    Put it before the transform class in the bases; it calls ``clear_cache()`` (Pyro's patch of
    ``Transform``, or an override) to drop a stale pair. :meth:`_stamp_module` names the module
    whose parameters the result depends on (a conditioned transform: its conditional parent) and
    :meth:`_stamp_extra` any other tensors (its context).
    """

    _cache_stamp: CacheKey | None = None
    _cached_x_y: tuple[Any, Any]

    def _stamp_module(self) -> torch.nn.Module:
        return self  # type: ignore[return-value]

    def _stamp_extra(self) -> Iterable[Tensor]:
        return ()

    def _current_stamp(self) -> CacheKey:
        return current_key(self._stamp_module(), self._stamp_extra())

    def _drop_stale_cache(self) -> CacheKey:
        """Clear the cache if it no longer holds; return the key to store with a result.

        That is the stored key itself while it holds and the grad mode is the same, so that its
        identity says "unchanged".
        """
        key = self._current_stamp()
        old = self._cache_stamp
        if old is not None and is_stale(old, key):
            self.clear_cache()  # type: ignore[attr-defined]
            self._cache_stamp = None
            return key
        return old if old is not None and old.grad == key.grad else key

    def __call__(self, x: Tensor) -> Tensor:
        """The forward map, answered from the cache when ``x`` is the last input and nothing changed."""
        key = self._drop_stale_cache()
        hit = x is self._cached_x_y[0]
        y = super().__call__(x)  # type: ignore[misc]
        if not hit:
            self._cache_stamp = key
        return y

    def _inv_call(self, y: Tensor) -> Tensor:
        key = self._drop_stale_cache()
        hit = y is self._cached_x_y[1]
        x = super()._inv_call(y)  # type: ignore[misc]
        if not hit:
            self._cache_stamp = key
        return x
