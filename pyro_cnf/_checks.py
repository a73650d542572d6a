"""Input validation shared by every module: one wording for every error of the same kind."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` >= 1 (``bool`` excluded)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_number(name: str, value: object, positive: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number >= 0 (> 0 with ``positive``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (positive and value == 0):  # type: ignore[arg-type]
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a {kind} finite number, got {value!r}")


def check_vector(name: str, x: object, dim: int | None, finite: bool = True) -> None:
    """Raise unless ``x`` is a tensor of shape ``(..., dim)`` (and, with ``finite``, has no NaN/inf)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or (dim is not None and x.shape[-1] != dim):
        expected = "at least one dimension" if dim is None else f"trailing dimension {dim}"
        raise ValueError(f"{name} must have {expected}, got shape {tuple(x.shape)}")
    if finite and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def check_context(context: object, context_dim: int | None) -> None:
    """Raise unless ``context`` is a finite tensor of shape ``(..., context_dim)``."""
    check_vector("context", context, context_dim)


def check_flow_input(name: str, x: object, dim: int | None, module: torch.nn.Module) -> None:
    """:func:`check_vector`, plus: at least one point, and the dtype of the flow's parameters."""
    check_vector(name, x, dim)
    assert isinstance(x, Tensor)
    if x.shape[:-1].numel() == 0:
        raise ValueError(f"{name} has no points (shape {tuple(x.shape)})")
    param = next(module.parameters(), None)
    if param is not None and param.dtype != x.dtype:
        raise ValueError(
            f"{name} has dtype {x.dtype} but the flow's parameters are {param.dtype}; convert "
            f"one of them (e.g. x.to({param.dtype}) or flow.to({x.dtype}))"
        )
