"""Input validation shared by every module: one wording for every error of the same kind."""

from __future__ import annotations

import torch
from torch import Tensor


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` >= 1 (``bool`` excluded)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


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
