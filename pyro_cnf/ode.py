r"""ODE solver settings and the one place that calls torchdiffeq.

Everything that integrates an ODE in pyro-cnf goes through :func:`solve`, a thin wrapper over
:func:`torchdiffeq.odeint` / :func:`torchdiffeq.odeint_adjoint`. It adds only what torchdiffeq
lacks for flows: validated settings (:class:`Solver`), a fixed number of steps for fixed-grid
methods, and a clear :class:`SolverError` instead of a bare ``AssertionError`` or a silent ``NaN``
when the dynamics blow up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Solver", "SolverError", "solve"]

#: torchdiffeq methods with an adaptive step size (error control through ``rtol``/``atol``).
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: torchdiffeq methods on a fixed grid (``steps`` of equal size).
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")


class SolverError(RuntimeError):
    """The ODE solve failed: too many steps, step-size underflow, or a non-finite state."""


@dataclass(frozen=True)
class Solver:
    r"""How to integrate an ODE: method, tolerances, steps, gradients.

    Adaptive methods (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) choose
    their step from the error estimate, accepting a step when

    .. math:: \lVert e \rVert_{\mathrm{RMS}} \le \mathrm{atol} + \mathrm{rtol}\,\lvert y \rvert ,

    and give up with :class:`SolverError` after ``max_num_steps`` steps. Fixed-grid methods (``rk4``,
    ``euler``, ...) take ``steps`` equal steps over the integration interval and ignore the
    tolerances.

    Arguments:
        method: A torchdiffeq method name.
        rtol: Relative tolerance (adaptive methods), > 0.
        atol: Absolute tolerance (adaptive methods), > 0.
        steps: Number of equal steps over the interval (fixed-grid methods only).
        adjoint: Compute gradients with the adjoint method (:func:`torchdiffeq.odeint_adjoint`):
            memory constant in the number of steps, but about twice the compute of backpropagating
            through the solver on the problem sizes of Bayesian posteriors.
        max_num_steps: Step budget of an adaptive solve; exceeding it raises :class:`SolverError`.
        options: Extra options passed to torchdiffeq unchanged (e.g. ``{"first_step": 0.1}``).
        norm: Error norm of adaptive steps. ``"rms"`` (torchdiffeq's default) averages the error
            over the whole batch, so a few outlying points can be solved loosely; ``"max"``
            takes the worst point (RMS over each point's coordinates), so every point meets the
            tolerance -- what per-draw log-densities for importance weights need.

    Example:
        >>> Solver("rk4", steps=16).steps, Solver("dopri5", rtol=1e-7, norm="max").adaptive
        (16, True)
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    steps: int | None = None
    adjoint: bool = False
    max_num_steps: int = 1000
    options: Mapping[str, Any] = field(default_factory=dict)
    norm: str = "rms"

    def __post_init__(self) -> None:
        if self.norm not in ("rms", "max"):
            raise ValueError(f"norm must be 'rms' or 'max', got {self.norm!r}")
        if self.method not in ADAPTIVE_METHODS + FIXED_METHODS:
            raise ValueError(
                f"unknown ODE solver method {self.method!r}; valid methods are "
                f"{', '.join(ADAPTIVE_METHODS + FIXED_METHODS)}"
            )
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and 0 < value < float("inf")
            ):
                raise ValueError(
                    f"solver tolerance {name} must be a positive finite number, got {value!r}"
                )
        if self.adaptive:
            if self.steps is not None:
                raise ValueError(
                    f"steps={self.steps} applies to fixed-grid methods only; {self.method!r} is "
                    "adaptive and is controlled by rtol/atol"
                )
        elif self.steps is None:
            object.__setattr__(self, "steps", 16)
        if self.steps is not None and (
            not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1
        ):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not isinstance(self.max_num_steps, int) or self.max_num_steps < 1:
            raise ValueError(
                f"max_num_steps must be a positive integer, got {self.max_num_steps!r}"
            )
        object.__setattr__(self, "options", dict(self.options))

    @property
    def adaptive(self) -> bool:
        """Whether the method chooses its own step size."""
        return self.method in ADAPTIVE_METHODS

    def torchdiffeq_options(self, t0: float, t1: float) -> dict[str, Any]:
        """The ``options`` dict for torchdiffeq on the interval ``[t0, t1]``."""
        options = dict(self.options)
        if self.adaptive:
            options.setdefault("max_num_steps", self.max_num_steps)
            # torchdiffeq picks its first step from |f(y0)|; a flow that starts as the identity
            # has f = 0 there, gets 1e-6 and spends ~30 evaluations growing it tenfold per step
            options.setdefault("first_step", abs(t1 - t0) / 10)
            if self.norm == "max":
                options.setdefault("norm", _worst_point_norm)
        else:
            steps = self.steps

            def grid(func: Any, y0: Tensor, t: Tensor) -> Tensor:
                return torch.linspace(float(t[0]), float(t[-1]), steps + 1, dtype=t.dtype)

            options.setdefault("grid_constructor", grid)
        return options


def _worst_point_norm(state: tuple[Tensor, ...]) -> Tensor:
    """The largest per-point RMS over a batch: the leading dimension indexes points."""
    norms = [x.reshape(x.shape[0], -1).pow(2).mean(-1).sqrt().max() for x in state if x.dim()]
    return torch.stack(norms).max()


def solve(
    func: Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]],
    y0: tuple[Tensor, ...],
    t0: float,
    t1: float,
    solver: Solver,
    params: Sequence[Tensor] = (),
) -> tuple[Tensor, ...]:
    r"""Integrate :math:`\dot y = \mathrm{func}(t, y)` from ``t0`` to ``t1`` and return :math:`y(t_1)`.

    Arguments:
        func: The dynamics, taking ``t`` and a tuple of tensors and returning a tuple of the same
            shapes.
        y0: The initial state, a tuple of tensors.
        t0: Start time.
        t1: End time (may be smaller than ``t0``: the solve then runs backwards).
        solver: Solver settings.
        params: The tensors ``func`` depends on that need gradients; required by the adjoint
            method, ignored otherwise.

    Returns:
        The state at ``t1``, a tuple like ``y0``.

    Raises:
        SolverError: The step budget was exhausted, the step size underflowed, or the solution is
            not finite.

    Example:
        >>> decay = lambda t, y: (-y[0],)
        >>> (y1,) = solve(decay, (torch.ones(1, dtype=torch.float64),), 0.0, 1.0, Solver(rtol=1e-9, atol=1e-9))
        >>> round(float(y1), 6)
        0.367879
    """
    from torchdiffeq import odeint, odeint_adjoint

    dtype = y0[0].dtype
    t = torch.tensor(
        [t0, t1], dtype=dtype if dtype.is_floating_point else torch.get_default_dtype()
    )
    options = solver.torchdiffeq_options(t0, t1)
    kwargs: dict[str, Any] = dict(rtol=solver.rtol, atol=solver.atol, method=solver.method)
    try:
        if solver.adjoint:
            params = tuple(p for p in params if p.requires_grad)
            out = odeint_adjoint(func, y0, t, options=options, adjoint_params=params, **kwargs)
        else:
            out = odeint(func, y0, t, options=options, **kwargs)
    except AssertionError as error:
        message = str(error)
        if "max_num_steps" in message:
            raise SolverError(
                f"ODE solver {solver.method!r} reached max_num_steps={solver.max_num_steps} "
                f"before t={t1} (rtol={solver.rtol}, atol={solver.atol}): the dynamics are too "
                "stiff or blow up; raise Solver.max_num_steps or the tolerances, or regularize "
                "the flow"
            ) from error
        if "underflow" in message or "non-finite" in message:
            raise SolverError(
                f"ODE solver {solver.method!r} failed ({message.splitlines()[0][:120]}): the "
                "dynamics produced non-finite values or an unresolvable step"
            ) from error
        raise
    final = tuple(y[-1] for y in out)
    for y in final:
        if not torch.isfinite(y).all():
            raise SolverError(
                f"ODE solution is not finite at t={t1} with solver {solver.method!r}: the "
                "dynamics blow up; use an adaptive method, more steps, or regularize the flow"
            )
    return final
