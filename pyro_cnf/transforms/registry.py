"""One registry of every flow, discrete and continuous, by name.

``make_flow("realnvp", 4)`` builds a flow; ``make_flow("cnf", 4, context_dim=2)`` its conditional
variant. :func:`flow_names` lists the names; :func:`register_flow` adds one (and with it, the
project's invariant tests run over it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch  # noqa: F401  (used by the doctests)
from torch.distributions import Transform

from .continuous import CNF, ConditionalCNF
from .stacks import FACTORIES, RECIPES, hybrid

__all__ = ["FlowSpec", "flow_names", "flow_spec", "make_flow", "register_flow"]


@dataclass(frozen=True)
class FlowSpec:
    """What the registry knows about a flow.

    Attributes:
        name: Registry name.
        factory: ``factory(input_dim, context_dim=0, **kwargs)`` returning the flow (a transform,
            or a conditional transform when ``context_dim > 0``).
        description: One line for listings.
        inverse: ``"exact"`` (closed form or ODE solve), ``"bisection"`` (numerical, not
            differentiable with respect to parameters) or ``"none"`` (scores only its own samples).
        conditional: Whether ``context_dim > 0`` is supported.
        min_dim: Smallest ``input_dim`` it supports (couplings need 2).
    """

    name: str
    factory: Callable[..., Any]
    description: str
    inverse: str = "exact"
    conditional: bool = True
    min_dim: int = 1


_REGISTRY: dict[str, FlowSpec] = {}


def register_flow(spec: FlowSpec) -> None:
    """Add a flow to the registry (its name must be new).

    Example:
        >>> from pyro_cnf.transforms.stacks import realnvp
        >>> def realnvp8(input_dim, context_dim=0):
        ...     return realnvp(input_dim, num_layers=8, context_dim=context_dim)
        >>> register_flow(FlowSpec("realnvp8", realnvp8, "RealNVP with 8 couplings", min_dim=2))
        >>> "realnvp8" in flow_names()
        True
        >>> _ = _REGISTRY.pop("realnvp8")
    """
    if spec.inverse not in ("exact", "bisection", "none"):
        raise ValueError(f"inverse must be 'exact', 'bisection' or 'none', got {spec.inverse!r}")
    if spec.name in _REGISTRY:
        raise ValueError(f"a flow named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def flow_names() -> list[str]:
    """The names of all registered flows, sorted.

    Example:
        >>> "cnf" in flow_names() and "realnvp" in flow_names()
        True
    """
    return sorted(_REGISTRY)


def flow_spec(name: str) -> FlowSpec:
    """The :class:`FlowSpec` registered under ``name``.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown flow {name!r}; valid flows: {', '.join(flow_names())}") from None


def make_flow(name: str, input_dim: int, context_dim: int = 0, **kwargs: Any) -> Transform | Any:
    """Build the flow registered under ``name``.

    Arguments:
        name: A name from :func:`flow_names`.
        input_dim: Event dimension.
        context_dim: Context dimension; > 0 builds the conditional variant.
        **kwargs: Options of that flow's factory (e.g. ``num_layers``, ``hidden_dims``).

    Example:
        >>> flow = make_flow("maf", 3, num_layers=2)
        >>> flow(torch.zeros(5, 3)).shape
        torch.Size([5, 3])
    """
    spec = flow_spec(name)
    if not isinstance(input_dim, int) or input_dim < spec.min_dim:
        raise ValueError(
            f"flow {name!r} needs an integer input_dim >= {spec.min_dim}, got {input_dim!r}"
        )
    if context_dim and not spec.conditional:
        conditional = [n for n in flow_names() if _REGISTRY[n].conditional]
        raise ValueError(
            f"flow {name!r} has no conditional variant; conditional flows: {', '.join(conditional)}"
        )
    return spec.factory(input_dim, context_dim=context_dim, **kwargs)


def _cnf(input_dim: int, context_dim: int = 0, **kwargs: Any) -> CNF | ConditionalCNF:
    from .continuous import cnf, conditional_cnf

    if context_dim:
        return conditional_cnf(input_dim, context_dim, **kwargs)
    return cnf(input_dim, **kwargs)


register_flow(FlowSpec("cnf", _cnf, "continuous normalizing flow (neural ODE, exact trace)"))
register_flow(FlowSpec("hybrid", hybrid, "RealNVP couplings followed by a CNF block", min_dim=2))
for _recipe in RECIPES:  # the discrete stacks: one row of their table each
    register_flow(
        FlowSpec(
            _recipe.flow,
            FACTORIES[_recipe.name],
            _recipe.description,
            inverse=_recipe.inverse,
            conditional=_recipe.conditional_layer is not None,
            min_dim=_recipe.min_dim,
        )
    )
