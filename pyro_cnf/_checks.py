"""Input validation shared by every module: one wording for every error of the same kind.

Numbers and options, flow inputs and contexts, and data sets (rows of points) with the flow
facts they are checked against (dimension, context, dtype, device).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import Tensor, nn


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


_SHOWN_ROWS = 10


def flow_input_dim(flow: object) -> int | None:
    """The event dimension a flow declares (``input_dim``), or ``None`` when it declares none."""
    dim = getattr(flow, "input_dim", None)
    return dim if isinstance(dim, int) else None


def flow_context_dim(flow: object) -> int | None:
    """The context dimension of a conditional flow (``None`` when it does not say)."""
    dim = getattr(flow, "context_dim", None)
    return dim if isinstance(dim, int) and dim > 0 else None


def is_conditional(flow: object) -> bool:
    """Whether ``flow`` must be bound to a context (``.condition(c)``) before use."""
    return isinstance(flow, ConditionalTransformModule)


def parameter_dtype(flow: object) -> torch.dtype | None:
    """The dtype of a flow's first floating-point parameter (``None`` without parameters)."""
    if isinstance(flow, nn.Module):
        for p in flow.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
    return None


def parameter_device(flow: object) -> torch.device:
    """The device of a flow's first parameter (the CPU without parameters)."""
    if isinstance(flow, nn.Module):
        for p in flow.parameters():
            return p.device
    return torch.device("cpu")


def check_device(name: str, x: object, flow: object) -> None:
    """Refuse a tensor on another device than the flow's parameters (naming both)."""
    device = parameter_device(flow)
    if isinstance(x, Tensor) and x.device != device:
        raise ValueError(
            f"{name} is on {x.device} but the flow's parameters are on {device}; move one of "
            f"them (e.g. {name}.to('{device}') or flow.to('{x.device}'))"
        )


def check_rows(name: str, x: object, dim: int | None, dtype: torch.dtype | None = None) -> Tensor:
    """Check that ``x`` is a finite ``(num_points, dim)`` floating tensor; name any bad rows.

    Raises:
        TypeError: Not a floating-point tensor.
        ValueError: Not 2-D, wrong trailing dimension, another dtype than the flow's, or rows
            with NaN/inf (their indices are listed).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    shape = f"(num_points, {dim if dim is not None else 'dim'})"
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be a 2-D tensor of shape {shape}, got shape {tuple(x.shape)}"
        )
    if dim is not None and x.shape[1] != dim:
        raise ValueError(
            f"{name} has dimension {x.shape[1]} (shape {tuple(x.shape)}) but the flow's input "
            f"dimension is {dim}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no points (shape {tuple(x.shape)})")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(
            f"{name} has dtype {x.dtype} but the flow's parameters are {dtype}; convert one of "
            f"them (e.g. {name}.to({dtype}) or flow.to({x.dtype}))"
        )
    bad = (~torch.isfinite(x)).any(-1).nonzero().flatten()
    if bad.numel():
        rows = bad[:_SHOWN_ROWS].tolist()
        more = f" and {bad.numel() - _SHOWN_ROWS} more" if bad.numel() > _SHOWN_ROWS else ""
        raise ValueError(
            f"{name} has NaN or inf in row{'s' if bad.numel() > 1 else ''} {rows}{more} "
            f"(of {x.shape[0]} rows); drop or impute them"
        )
    return x


def check_context_rows(
    flow: object, data_name: str, data: Tensor, context: object, dtype: torch.dtype | None
) -> Tensor | None:
    """Check the context of ``data`` against the flow: required iff the flow is conditional.

    Returns:
        The context (``None`` for an unconditional flow).
    """
    context_name = "context" if data_name == "data" else f"{data_name.split('_')[0]}_context"
    if not is_conditional(flow):
        if context is not None:
            raise ValueError(
                f"{context_name} was given but the flow is not conditional; build it with "
                "context_dim > 0 (e.g. make_flow(name, dim, context_dim=...))"
            )
        return None
    context_dim = flow_context_dim(flow)
    if context is None:
        size = f" of size {context_dim}" if context_dim is not None else ""
        raise ValueError(
            f"the flow is conditional: pass {context_name}= with one context row{size} per "
            f"row of {data_name}"
        )
    context = check_rows(context_name, context, None, dtype)
    if context_dim is not None and context.shape[1] != context_dim:
        raise ValueError(
            f"{context_name} has dimension {context.shape[1]} but the flow's context_dim is "
            f"{context_dim}"
        )
    if context.shape[0] != data.shape[0]:
        raise ValueError(
            f"{context_name} has {context.shape[0]} rows but {data_name} has {data.shape[0]}; "
            "give one context row per point"
        )
    return context


def check_batch_size(batch_size: object, num_points: int, name: str = "data") -> int:
    """Check ``batch_size`` is a positive integer no larger than the number of points."""
    check_positive_int("batch_size", batch_size)
    assert isinstance(batch_size, int)
    if num_points < batch_size:
        raise ValueError(
            f"{name} has {num_points} points, fewer than batch_size={batch_size}; lower "
            "batch_size or give more points"
        )
    return batch_size


def chunks(num_points: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` rows."""
    for start in range(0, num_points, size):
        yield slice(start, min(start + size, num_points))


def check_ema_decay(ema_decay: object) -> None:
    """An EMA decay is a float in (0, 1), or ``None`` (no average)."""
    if ema_decay is not None and not (isinstance(ema_decay, float) and 0.0 < ema_decay < 1.0):
        raise ValueError(f"ema_decay must be a float in (0, 1) or None, got {ema_decay!r}")
