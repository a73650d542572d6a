r"""Continuous normalizing flows as Pyro transforms.

A CNF maps base samples :math:`z_0` to data :math:`z_T` by integrating :math:`\dot z = f(z, t)`
from :math:`t = 0` to :math:`t = T`. Its log-determinant rides along in the same solve,

.. math::
    \frac{d}{dt} \begin{bmatrix} z \\ \ell \end{bmatrix}
    = \begin{bmatrix} f(z, t) \\ \operatorname{Tr}(\partial f / \partial z) \end{bmatrix},
    \qquad \log\lvert\det \partial z_T / \partial z_0\rvert = \ell(T),

so a sample and its log-density cost one solve: the transform caches the log-determinant of the
pair it produced, and Pyro's ``TransformedDistribution.log_prob`` then needs no inverse solve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import Transform

from .._checks import check_context, check_flow_input, check_positive_int
from ..divergence import Divergence, Exact
from ..nn import MLPField
from ..ode import Solver, solve
from ._cache import CacheKey, current_key, is_stale

__all__ = ["CNF", "ConditionalCNF", "SolveStats", "cnf", "conditional_cnf"]

_REGULARIZERS = ("kinetic", "jacobian")
#: Solver after ``.eval()`` unless given: tighter than the training default, for diagnostics.
DEFAULT_EVAL_SOLVER = Solver("dopri5", rtol=1e-6, atol=1e-6, norm="max")


@dataclass
class SolveStats:
    """Counters of the ODE solves a flow has made since the last :meth:`reset`.

    Attributes:
        forward_solves: Solves base -> data (sampling).
        inverse_solves: Solves data -> base (scoring points the flow did not produce).
        nfe_forward: Vector-field evaluations made by forward solves.
        nfe_inverse: Vector-field evaluations made by inverse solves.
        nfe_backward: Evaluations made after a solve returned, i.e. by the adjoint's backward solve.
        last_nfe: Evaluations of the most recent solve.
    """

    forward_solves: int = 0
    inverse_solves: int = 0
    nfe_forward: int = 0
    nfe_inverse: int = 0
    nfe_backward: int = 0
    last_nfe: int = 0

    def reset(self) -> None:
        """Set every counter to zero."""
        for name in self.__dataclass_fields__:
            setattr(self, name, 0)


class _Dynamics:
    """The augmented right-hand side ``(f, div[, 1/2 |f|^2][, |df/dz|_F^2])`` of one solve."""

    def __init__(self, flow: CNFBase, context: Tensor | None, noise: Tensor | None) -> None:
        self.flow = flow
        self.context = context
        self.noise = noise
        self.kinetic = "kinetic" in flow.regularization
        self.jacobian = "jacobian" in flow.regularization
        self.solving = True
        self.nfe = 0

    def __call__(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        flow = self.flow
        f, div, frob = flow.divergence(
            flow.field, t, state[0], self.context, self.noise, frobenius=self.jacobian
        )
        if self.solving:
            self.nfe += 1
        else:
            flow.stats.nfe_backward += 1
        out = (f, div)
        if self.kinetic:
            out += (0.5 * f.pow(2).sum(-1),)
        if self.jacobian:
            out += (frob,)
        return out


class CNFBase(nn.Module):
    """Settings and the solve shared by :class:`CNF` and :class:`ConditionalCNF`."""

    def __init__(
        self,
        input_dim: int,
        field: Callable[..., Tensor],
        T: float,
        divergence: Divergence,
        solver: Solver | None,
        eval_solver: Solver | None,
        regularization: Iterable[str],
        context_dim: int,
    ) -> None:
        if not (isinstance(T, (int, float)) and T > 0):
            raise ValueError(f"integration time T must be positive, got {T!r}")
        if not isinstance(divergence, Divergence):
            raise TypeError(
                f"divergence must be a Divergence strategy (Exact() or Hutchinson()), got {divergence!r}"
            )
        for name, value in (("solver", solver), ("eval_solver", eval_solver)):
            if value is not None and not isinstance(value, Solver):
                raise TypeError(f"{name} must be a pyro_cnf.Solver, got {value!r}")
        regularization = tuple(regularization)
        unknown = [r for r in regularization if r not in _REGULARIZERS]
        if unknown:
            raise ValueError(f"unknown regularization {unknown}; valid: {list(_REGULARIZERS)}")
        self.input_dim = input_dim
        self.context_dim = context_dim
        self.field = field
        self.T = float(T)
        self.divergence = divergence
        self.solver = solver if solver is not None else Solver()
        self.eval_solver = eval_solver if eval_solver is not None else DEFAULT_EVAL_SOLVER
        self.regularization = regularization
        self.stats = SolveStats()
        self.regularization_terms: dict[str, Tensor] = {}

    def _cache_settings(self) -> tuple[Any, ...]:
        """What a solve depends on besides parameters (part of the cache key)."""
        return (self.T, self.solver, self.eval_solver, self.divergence, self.regularization)

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, T={self.T}, divergence={self.divergence}, "
            f"solver={self.solver}, eval_solver={self.eval_solver}"
        )

    @property
    def active_solver(self) -> Solver:
        """The solver in use: ``solver`` in training mode, ``eval_solver`` after ``.eval()``."""
        return self.solver if self.training else self.eval_solver

    def _integrate(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        """Solve forward (0 -> T) or backward from ``x``; return the end point and the forward ladj."""
        check_flow_input(f"CNF {'output value' if inverse else 'input'}", x, self.input_dim, self)
        solver = self.active_solver
        eps = torch.finfo(x.dtype).eps
        if solver.adaptive and solver.rtol < eps:
            raise ValueError(
                f"solver rtol={solver.rtol:g} is below the resolution of {x.dtype} ({eps:.2g}): "
                f"no step can meet it; use rtol >= {10 * eps:.0e} or float64 (flow.double() "
                "and float64 inputs)"
            )
        batch = x.shape[:-1]
        if context is not None:
            batch = torch.broadcast_shapes(batch, context.shape[:-1])
            context = context.expand(*batch, self.context_dim).reshape(-1, self.context_dim)
        z = x.expand(*batch, self.input_dim).reshape(-1, self.input_dim)
        dynamics = _Dynamics(self, context, self.divergence.init(z))
        state = (z, z.new_zeros(z.shape[0]))
        state += tuple(z.new_zeros(z.shape[0]) for _ in self.regularization)
        params: list[Tensor] = []
        if solver.adjoint:  # only the adjoint needs the tensors the dynamics depend on
            params = [p for p in self.parameters() if p.requires_grad]
            if context is not None and context.requires_grad:
                params.append(context)
        t0, t1 = (self.T, 0.0) if inverse else (0.0, self.T)
        out = solve(dynamics, state, t0, t1, solver, params)
        dynamics.solving = False
        self.stats.last_nfe = dynamics.nfe
        if inverse:
            self.stats.inverse_solves += 1
            self.stats.nfe_inverse += dynamics.nfe
        else:
            self.stats.forward_solves += 1
            self.stats.nfe_forward += dynamics.nfe
        sign = -1.0 if inverse else 1.0
        self.regularization_terms = {
            name: (sign * term).reshape(batch)
            for name, term in zip(self.regularization, out[2:], strict=True)
        }
        return out[0].reshape(*batch, self.input_dim), (sign * out[1]).reshape(batch)


class _CachedSolveMixin:
    """Transform methods for a CNF: one solve per call, cached with its log-det.

    The cache holds the last ``(x, y, log|det|)`` and answers a call on the same tensor object
    (``x`` for the forward map, ``y`` for the inverse) without solving, only while the flow is
    unchanged (:func:`~pyro_cnf.transforms._cache.cache_key`: parameters, their values, ``T``,
    the solvers, train/eval and grad mode). So scoring the same data tensor at every training
    step is correct.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    _solve_cache: tuple[Any, ...] = (None, None, None, None)

    def _solve(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _owner(self) -> CNFBase:
        raise NotImplementedError

    def _stamp(self) -> CacheKey:
        return current_key(self._owner(), self._stamp_extra())

    def _stamp_extra(self) -> tuple[Tensor, ...]:
        return ()

    def _lookup(
        self, x: Tensor | None, y: Tensor | None
    ) -> tuple[CacheKey, tuple[Tensor, Tensor, Tensor] | None]:
        """The current key, and the cached triple if it answers this call."""
        key = self._stamp()
        cached_x, cached_y, ladj, stamp = self._solve_cache
        if cached_x is None or not (
            (x is not None and x is cached_x) or (y is not None and y is cached_y)
        ):
            return key, None
        if is_stale(stamp, key):
            return key, None
        return stamp, (cached_x, cached_y, ladj)

    def __call__(self, x: Tensor) -> Tensor:
        key, hit = self._lookup(x, None)
        if hit is not None:
            return hit[1]
        y, ladj = self._solve(x, inverse=False)
        self._solve_cache = (x, y, ladj, key)
        return y

    def _inv_call(self, y: Tensor) -> Tensor:
        key, hit = self._lookup(None, y)
        if hit is not None:
            return hit[0]
        x, ladj = self._solve(y, inverse=True)
        self._solve_cache = (x, y, ladj, key)
        return x

    def _call(self, x: Tensor) -> Tensor:
        return self._solve(x, inverse=False)[0]

    def _inverse(self, y: Tensor) -> Tensor:
        return self._solve(y, inverse=True)[0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``log|det dy/dx|``: the cached value when ``x`` is the last solve's input or output, else a new solve."""
        key, hit = self._lookup(x, None)  # the log-det is a function of x alone
        if hit is not None:
            return hit[2]
        y_new, ladj = self._solve(x, inverse=False)
        self._solve_cache = (x, y_new, ladj, key)
        return ladj

    def clear_cache(self) -> None:
        """Drop the cached solve."""
        self._solve_cache = (None, None, None, None)

    def with_cache(self, cache_size: int = 1) -> Transform:
        if cache_size != 1:
            raise ValueError("a CNF always caches its last solve (cache_size=1)")
        return self  # type: ignore[return-value]


class CNF(_CachedSolveMixin, CNFBase, TransformModule):
    r"""A continuous normalizing flow, as a Pyro ``TransformModule``.

    The forward map integrates :math:`\dot z = f(z, t)` from :math:`0` to :math:`T`; the inverse
    integrates back from :math:`T` to :math:`0`. The log-determinant of the forward map,
    :math:`\int_0^T \operatorname{Tr}(\partial f/\partial z)\,dt`, is integrated in the same solve
    and cached for the ``(x, y)`` pair: ``TransformedDistribution(base, [cnf])`` samples and scores
    with one solve, and scores data points with one inverse solve.

    Optional regularization states are integrated in the same solve and left in
    :attr:`regularization_terms` after every solve (per sample, batch-shaped):
    ``"kinetic"`` :math:`\int_0^T \tfrac12\lVert f\rVert^2 dt` and ``"jacobian"``
    :math:`\int_0^T \lVert \partial f/\partial z\rVert_F^2 dt` (RNODE).

    References:
        | Neural Ordinary Differential Equations (Chen et al., 2018), https://arxiv.org/abs/1806.07366
        | FFJORD (Grathwohl et al., 2018), https://arxiv.org/abs/1810.01367
        | How to train your neural ODE (Finlay et al., 2020), https://arxiv.org/abs/2002.02798

    Arguments:
        input_dim: Event dimension :math:`d`.
        field: The vector field ``f(t, z)``; default :class:`~pyro_cnf.nn.MLPField` ``(input_dim)``
            (zero last layer: the flow starts as the identity).
        T: Integration time.
        divergence: Trace strategy, :class:`~pyro_cnf.Exact` (default) or
            :class:`~pyro_cnf.Hutchinson`.
        solver: Solver in training mode (default: ``Solver()``, dopri5 at rtol = atol = 1e-5).
        eval_solver: Solver after ``.eval()`` (default: dopri5 at rtol = atol = 1e-6 with the
            per-point ``"max"`` error norm, so every draw's log-density meets the tolerance;
            the training default, RMS norm at 1e-5, gave about 1e-3 nats of error on a 10-D
            random field -- see ``docs/benchmarks.md``).
        regularization: Any of ``"kinetic"``, ``"jacobian"``.

    Attributes:
        stats: :class:`SolveStats`, solve and evaluation counters.
        regularization_terms: ``{name: tensor}`` from the most recent solve.

    Example:
        >>> import pyro.distributions as dist
        >>> flow = CNF(2, field=MLPField(2, zero_init=False))
        >>> q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
        >>> x = q.rsample((4,))
        >>> q.log_prob(x).shape, flow.stats.forward_solves, flow.stats.inverse_solves
        (torch.Size([4]), 1, 0)
    """

    def __init__(
        self,
        input_dim: int,
        field: Callable[..., Tensor] | None = None,
        T: float = 1.0,
        divergence: Divergence | None = None,
        solver: Solver | None = None,
        eval_solver: Solver | None = None,
        regularization: Iterable[str] = (),
    ) -> None:
        TransformModule.__init__(self, cache_size=1)
        check_positive_int("input_dim", input_dim)
        if field is None:
            field = MLPField(input_dim)
        CNFBase.__init__(
            self,
            input_dim,
            field,
            T,
            Exact() if divergence is None else divergence,
            solver,
            eval_solver,
            regularization,
            context_dim=0,
        )

    def _solve(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return self._integrate(x, None, inverse)

    def _owner(self) -> CNFBase:
        return self

    __hash__ = TransformModule.__hash__


class _ConditionedCNF(_CachedSolveMixin, Transform):
    """A :class:`ConditionalCNF` bound to one context (what ``.condition(c)`` returns)."""

    def __init__(self, flow: ConditionalCNF, context: Tensor) -> None:
        super().__init__(cache_size=1)
        self.flow = flow
        self.context = context

    def _solve(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return self.flow._integrate(x, self.context, inverse)

    def _owner(self) -> CNFBase:
        return self.flow

    def _stamp_extra(self) -> tuple[Tensor, ...]:
        return (self.context,)


class ConditionalCNF(CNFBase, ConditionalTransformModule):
    r"""A CNF whose vector field :math:`f(z, t, c)` reads a context vector :math:`c`.

    ``.condition(c)`` returns a transform that caches and solves as :class:`CNF`; ``c``, of shape
    ``(..., context_dim)``, broadcasts against the batch shape of the points.

    Arguments:
        input_dim: Event dimension :math:`d`.
        context_dim: Dimension of the context.
        field: ``f(t, z, context)``; default :class:`~pyro_cnf.nn.MLPField` with ``context_dim``.
        T: Integration time.
        divergence: Trace strategy (default :class:`~pyro_cnf.Exact`).
        solver: Solver in training mode.
        eval_solver: Solver after ``.eval()`` (default: dopri5 at rtol = atol = 1e-6 with the
            per-point ``"max"`` error norm, so every draw's log-density meets the tolerance;
            the training default, RMS norm at 1e-5, gave about 1e-3 nats of error on a 10-D
            random field -- see ``docs/benchmarks.md``).
        regularization: Any of ``"kinetic"``, ``"jacobian"``.

    Example:
        >>> flow = ConditionalCNF(2, context_dim=3, field=MLPField(2, context_dim=3, zero_init=False))
        >>> t = flow.condition(torch.randn(3))
        >>> t(torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        field: Callable[..., Tensor] | None = None,
        T: float = 1.0,
        divergence: Divergence | None = None,
        solver: Solver | None = None,
        eval_solver: Solver | None = None,
        regularization: Iterable[str] = (),
    ) -> None:
        ConditionalTransformModule.__init__(self)
        check_positive_int("input_dim", input_dim)
        check_positive_int("context_dim", context_dim)
        if field is None:
            field = MLPField(input_dim, context_dim=context_dim)
        CNFBase.__init__(
            self,
            input_dim,
            field,
            T,
            Exact() if divergence is None else divergence,
            solver,
            eval_solver,
            regularization,
            context_dim=context_dim,
        )

    def condition(self, context: Tensor) -> Transform:
        """Bind the flow to ``context`` (shape ``(..., context_dim)``)."""
        check_context(context, self.context_dim)
        return _ConditionedCNF(self, context)

    __hash__ = ConditionalTransformModule.__hash__


def cnf(
    input_dim: int,
    hidden_dims: tuple[int, ...] = (64, 64, 64),
    activation: str = "tanh",
    time_frequencies: int = 3,
    gated: bool = False,
    **kwargs: Any,
) -> CNF:
    r"""Build a :class:`CNF` with an :class:`~pyro_cnf.nn.MLPField` (Pyro-style factory).

    Arguments:
        input_dim: Event dimension.
        hidden_dims: Hidden widths of the field.
        activation: Field activation (see :class:`~pyro_cnf.nn.MLPField`).
        time_frequencies: Number of time frequencies of the field.
        gated: Give the field a multiplicative term :math:`a(t, z) \odot z` (see
            :class:`~pyro_cnf.nn.MLPField`): for funnel-shaped targets.
        **kwargs: Passed to :class:`CNF` (``T``, ``divergence``, ``solver``, ...).

    Example:
        >>> flow = cnf(3, hidden_dims=(32, 32))
        >>> x = torch.randn(2, 3)
        >>> bool(torch.allclose(flow(x), x))  # a new flow is the identity
        True
    """
    field = MLPField(
        input_dim, hidden_dims, activation, time_frequencies=time_frequencies, gated=gated
    )
    return CNF(input_dim, field=field, **kwargs)


def conditional_cnf(
    input_dim: int,
    context_dim: int,
    hidden_dims: tuple[int, ...] = (64, 64, 64),
    activation: str = "tanh",
    time_frequencies: int = 3,
    gated: bool = False,
    **kwargs: Any,
) -> ConditionalCNF:
    """Build a :class:`ConditionalCNF` with a context-reading :class:`~pyro_cnf.nn.MLPField`.

    Arguments:
        input_dim: Event dimension.
        context_dim: Context dimension.
        hidden_dims: Hidden widths of the field.
        activation: Field activation.
        time_frequencies: Number of time frequencies of the field.
        gated: Give the field a multiplicative term (see :func:`cnf`).
        **kwargs: Passed to :class:`ConditionalCNF`.

    Example:
        >>> flow = conditional_cnf(2, context_dim=1)
        >>> flow.condition(torch.ones(1))(torch.zeros(4, 2)).shape
        torch.Size([4, 2])
    """
    field = MLPField(input_dim, hidden_dims, activation, context_dim, time_frequencies, gated=gated)
    return ConditionalCNF(input_dim, context_dim, field=field, **kwargs)
