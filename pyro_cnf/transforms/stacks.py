r"""Multi-layer discrete flows built from Pyro's transforms: one table, one factory per row.

Every factory (:func:`realnvp`, :func:`maf`, ...) is built from a row of :data:`RECIPES`: the
layer (plain, and conditional where Pyro has one), its options and their defaults, the layers put
before it in each block (Glow's ActNorm and LU linear map), and whether a reversing
:class:`~pyro_cnf.transforms.Permutation` sits between blocks. The registry
(:mod:`pyro_cnf.transforms.registry`) registers the same rows.

A factory returns a :class:`~pyro_cnf.FlowStack` or, with ``context_dim > 0``, a
:class:`~pyro_cnf.ConditionalFlowStack`. Layers are Pyro's own where Pyro has them (coupling,
autoregressive, spline, neural/block autoregressive, Sylvester, Householder); what Pyro lacks is
ours: invertible planar/radial layers, ActNorm, an LU linear layer, a registered inverse (for
MAF), a stored permutation, a bisection inverse for the neural/block autoregressive flows
(``Bisect``) and a Sylvester layer whose log-determinant is exact.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro.distributions.transforms as T
import torch

from .._checks import check_positive_int
from .compose import ConditionalFlowStack, FlowStack
from .continuous import CNF, ConditionalCNF
from .layers import Bisect, ConditionalBisect, Permutation, Sylvester
from .linear import InverseTransformModule, actnorm, lu_linear
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


def _naf_layer(input_dim: int, hidden_dims: Sequence[int] | None, width: int) -> Bisect:
    module = T.neural_autoregressive(input_dim, hidden_dims, width=width)
    return Bisect(module, module.arn.permutation)


# ----------------------------------------------------------------------------------------------
# The table.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackRecipe:
    """One row of :data:`RECIPES`: a stack factory and its registry entry.

    Attributes:
        name: The factory's name (``planar_flow``).
        flow: The name in the flow registry (``planar``).
        summary: The first line of the factory's docstring.
        description: One line for registry listings.
        reference: The paper, with its arXiv link.
        layer: ``layer(input_dim, **options)``: one layer.
        conditional_layer: ``conditional_layer(input_dim, context_dim, **options)``, or None when
            there is no conditional variant.
        options: The factory's options besides ``num_layers`` and ``context_dim``, with their
            defaults, in signature order (documented in ``_OPTIONS``).
        num_layers: The default number of blocks.
        prefix: ``make(input_dim)`` for the layers before ``layer`` in each block.
        permute: Whether a reversing permutation sits between consecutive blocks.
        counts: What ``num_layers`` counts, for the docstring.
        notes: More docstring (math, caveats), or empty.
        inverse: ``"exact"``, ``"bisection"`` or ``"none"``, as in the registry's ``FlowSpec``.
        inverse_error: The message raised when a stack without inverse inverts a point it did
            not produce.
        min_dim: The smallest ``input_dim`` (couplings need 2).
    """

    name: str
    flow: str
    summary: str
    description: str
    reference: str
    layer: Callable[..., Any]
    conditional_layer: Callable[..., Any] | None
    options: dict[str, Any] = field(default_factory=dict)
    num_layers: int = 4
    prefix: tuple[Callable[[int], Any], ...] = ()
    permute: bool = True
    counts: str = "layers"
    notes: str = ""
    inverse: str = "exact"
    inverse_error: str | None = None
    min_dim: int = 1


# every option of a stack factory: (its annotation, its line in the docstring)
_OPTIONS: dict[str, tuple[str, str]] = {
    "hidden_dims": (
        "Sequence[int] | None",
        "Hidden widths of each layer's network (Pyro's default when None).",
    ),
    "count_bins": ("int", "Spline segments."),
    "bound": ("float", r"Splines act on :math:`[-B, B]`, identity outside."),
    "width": ("int", "Width of the monotone network of each coordinate."),
    "hidden_factors": ("Sequence[int]", "Block widths as multiples of ``input_dim``."),
}
_NSF = "Neural Spline Flows (Durkan et al., 2019), https://arxiv.org/abs/1906.04032"
_RM = (
    "Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015), "
    "https://arxiv.org/abs/1505.05770"
)

RECIPES: tuple[StackRecipe, ...] = (
    StackRecipe(
        "realnvp",
        "realnvp",
        "RealNVP: affine coupling layers with the halves swapped between layers.",
        "affine coupling layers (RealNVP)",
        "Density estimation using Real NVP (Dinh et al., 2017), https://arxiv.org/abs/1605.08803",
        T.affine_coupling,
        T.conditional_affine_coupling,
        {"hidden_dims": None},
        counts="coupling layers",
        notes=r"Each layer keeps :math:`x_{1:k}` and maps :math:`x_{k+1:d} \mapsto x_{k+1:d}\odot "
        r"e^{s(x_{1:k})} + t(x_{1:k})` (Pyro's ``AffineCoupling``).",
        min_dim=2,
    ),
    StackRecipe(
        "glow",
        "glow",
        "Glow for vectors: ActNorm, an invertible LU-decomposed linear map, an affine coupling.",
        "ActNorm + LU linear + affine coupling (Glow)",
        "Glow (Kingma & Dhariwal, 2018), https://arxiv.org/abs/1807.03039",
        T.affine_coupling,
        T.conditional_affine_coupling,
        {"hidden_dims": None},
        prefix=(actnorm, lu_linear),
        permute=False,
        counts="(ActNorm, LU linear, coupling) blocks",
        min_dim=2,
    ),
    StackRecipe(
        "maf",
        "maf",
        "Masked autoregressive flow: fast density evaluation, sequential sampling.",
        "masked autoregressive flow: one-pass density, sequential sampling",
        "Masked Autoregressive Flow (Papamakarios et al., 2017), https://arxiv.org/abs/1705.07057",
        lambda d, **o: InverseTransformModule(T.affine_autoregressive(d, **o)),
        lambda d, c, **o: T.conditional_affine_autoregressive(d, c, **o).inv,
        {"hidden_dims": None},
        counts="autoregressive layers",
        notes="The inverse of Pyro's ``AffineAutoregressive`` layer, so that scoring data (the "
        "inverse direction, data -> base) is one network pass and sampling takes ``d`` passes.",
    ),
    StackRecipe(
        "iaf",
        "iaf",
        "Inverse autoregressive flow: one-pass sampling (the guide direction), sequential inverse.",
        "inverse autoregressive flow: one-pass sampling, sequential inverse",
        "Improved Variational Inference with IAF (Kingma et al., 2016), "
        "https://arxiv.org/abs/1606.04934",
        T.affine_autoregressive,
        T.conditional_affine_autoregressive,
        {"hidden_dims": None},
        counts="autoregressive layers",
    ),
    StackRecipe(
        "nsf_coupling",
        "nsf_coupling",
        "Neural spline flow, coupling version: rational-quadratic spline coupling layers.",
        "rational-quadratic spline couplings (NSF)",
        _NSF,
        T.spline_coupling,
        None,  # Pyro has no conditional spline coupling
        {"hidden_dims": None, "count_bins": 8, "bound": 3.0},
        counts="coupling layers",
        min_dim=2,
    ),
    StackRecipe(
        "nsf_autoregressive",
        "nsf_autoregressive",
        "Neural spline flow, autoregressive version (Pyro's ``SplineAutoregressive`` layers).",
        "autoregressive rational-quadratic splines (NSF)",
        _NSF,
        T.spline_autoregressive,
        T.conditional_spline_autoregressive,
        {"hidden_dims": None, "count_bins": 8, "bound": 3.0},
        counts="autoregressive spline layers",
    ),
    StackRecipe(
        "planar_flow",
        "planar",
        r"A stack of planar layers :math:`x + u \tanh(w^\top x + b)`, with a real inverse.",
        "planar layers with a root-finding inverse",
        _RM,
        planar,
        conditional_planar,
        num_layers=8,
        permute=False,
        counts="planar layers",
    ),
    StackRecipe(
        "radial_flow",
        "radial",
        r"A stack of radial layers :math:`x + \beta (x - x_0)/(\alpha + \lVert x - x_0\rVert)`, "
        "with a real inverse.",
        "radial layers with a closed-form inverse",
        _RM,
        radial,
        conditional_radial,
        num_layers=8,
        permute=False,
        counts="radial layers",
    ),
    StackRecipe(
        "householder_flow",
        "householder",
        "Householder reflections (volume preserving): an orthogonal map learned as a product of "
        "reflections.",
        "Householder reflections (volume preserving)",
        "Improving VAEs with Householder Flow (Tomczak & Welling, 2016), "
        "https://arxiv.org/abs/1611.09630",
        T.householder,
        T.conditional_householder,
        permute=False,
        counts="reflections",
        min_dim=2,
    ),
    StackRecipe(
        "sylvester_flow",
        "sylvester",
        "A stack of Householder-Sylvester layers. No inverse.",
        "Householder-Sylvester layers",
        "Sylvester Normalizing Flows (van den Berg et al., 2018), https://arxiv.org/abs/1803.05649",
        Sylvester,
        None,
        counts="Sylvester layers",
        notes="Built on Pyro's ``Sylvester`` with the factors reordered so that its "
        r"log-determinant formula is exact (Pyro's own layer pairs :math:`\tanh(x S Q^\top + b) Q R` "
        r"with a log-det that holds only for :math:`Q = I`; checked against the autograd Jacobian "
        "in our tests).\n\nThe stack samples and scores its own samples (through the cache) and "
        "so serves as a guide; it cannot score other points: its inverse raises "
        "``NotImplementedError``.",
        inverse="none",
        inverse_error="the sylvester flow has no inverse: it can score the samples it drew "
        "(cached) but not other points; use planar_flow, realnvp, maf or nsf to score data",
    ),
    StackRecipe(
        "naf",
        "naf",
        "Neural autoregressive flow (Pyro's ``NeuralAutoregressive``), inverse by bisection.",
        "neural autoregressive flow",
        "Neural Autoregressive Flows (Huang et al., 2018), https://arxiv.org/abs/1804.00779",
        _naf_layer,
        lambda d, c, hidden_dims, width: ConditionalBisect(
            T.conditional_neural_autoregressive(d, c, hidden_dims, width=width)
        ),
        {"hidden_dims": None, "width": 16},
        num_layers=2,
        counts="NAF layers",
        notes="Each output coordinate is a monotone neural network of its input coordinate, "
        "conditioned on the earlier ones. The inverse (scoring points the flow did not draw) "
        "bisects one coordinate at a time; it is accurate but not differentiable with respect to "
        "the parameters.",
        inverse="bisection",
    ),
    StackRecipe(
        "bnaf",
        "bnaf",
        "Block neural autoregressive flow (Pyro's ``BlockAutoregressive``), inverse by bisection.",
        "block neural autoregressive flow",
        "Block Neural Autoregressive Flow (De Cao et al., 2019), https://arxiv.org/abs/1904.04676",
        lambda d, hidden_factors: Bisect(
            T.block_autoregressive(d, hidden_factors=list(hidden_factors))
        ),
        None,
        {"hidden_factors": (8, 8)},
        num_layers=2,
        counts="BNAF layers",
        inverse="bisection",
    ),
)


# ----------------------------------------------------------------------------------------------
# A factory from a row.
# ----------------------------------------------------------------------------------------------


def _build(
    recipe: StackRecipe, input_dim: int, num_layers: int, context_dim: int, **options: Any
) -> FlowStack | ConditionalFlowStack:
    """The stack a row of :data:`RECIPES` describes, with these arguments."""
    if context_dim and recipe.conditional_layer is None:
        raise ValueError(
            f"the {recipe.flow} flow has no conditional variant (Pyro has no conditional layer)"
        )
    check_positive_int("input_dim", input_dim)
    check_positive_int("num_layers", num_layers)
    if not isinstance(context_dim, int) or context_dim < 0:
        raise ValueError(f"context_dim must be a non-negative integer, got {context_dim!r}")
    parts: list[Any] = []
    for k in range(num_layers):
        parts.extend(make(input_dim) for make in recipe.prefix)
        if context_dim:
            parts.append(recipe.conditional_layer(input_dim, context_dim, **options))
        else:
            parts.append(recipe.layer(input_dim, **options))
        if recipe.permute and k < num_layers - 1:
            parts.append(Permutation(torch.arange(input_dim - 1, -1, -1)))
    if context_dim:
        return ConditionalFlowStack(parts, input_dim, context_dim, recipe.inverse_error)
    return FlowStack(parts, input_dim, recipe.inverse_error)


def _docstring(recipe: StackRecipe) -> str:
    """The one docstring of every factory, filled in from its row."""
    dim = " (>= 2)" if recipe.min_dim > 1 else ""
    arguments = [
        f"input_dim: Event dimension{dim}.",
        f"num_layers: Number of {recipe.counts}.",
        *(f"{name}: {_OPTIONS[name][1]}" for name in recipe.options),
        "context_dim: Context dimension (0: unconditional)."
        if recipe.conditional_layer is not None
        else "context_dim: Must be 0 (Pyro has no conditional variant of this layer).",
    ]
    notes = f"{recipe.notes}\n\n" if recipe.notes else ""
    returns = "A :class:`~pyro_cnf.FlowStack` (base -> data)"
    if recipe.conditional_layer is not None:
        returns += ", or a :class:`~pyro_cnf.ConditionalFlowStack` when ``context_dim > 0``"
    dim = max(recipe.min_dim, 3)
    lines = [
        f"{recipe.summary}\n\n{notes}References:",
        f"    | {recipe.reference}\n\nArguments:",
        *(f"    {line}" for line in arguments),
        "\nReturns:",
        f"    {returns}.\n\nExample:",
        f"    >>> {recipe.name}({dim}, num_layers=2)(torch.randn(5, {dim})).shape",
        f"    torch.Size([5, {dim}])",
    ]
    return "\n".join(lines) + "\n"


def _factory(recipe: StackRecipe) -> Callable[..., FlowStack | ConditionalFlowStack]:
    """The public factory of a row: ``factory(input_dim, num_layers, *options, context_dim)``."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [
        inspect.Parameter("input_dim", kind, annotation="int"),
        inspect.Parameter("num_layers", kind, default=recipe.num_layers, annotation="int"),
        *(
            inspect.Parameter(name, kind, default=default, annotation=_OPTIONS[name][0])
            for name, default in recipe.options.items()
        ),
        inspect.Parameter("context_dim", kind, default=0, annotation="int"),
    ]
    returns = (
        "FlowStack" if recipe.conditional_layer is None else "FlowStack | ConditionalFlowStack"
    )
    signature = inspect.Signature(parameters, return_annotation=returns)

    def factory(*args: Any, **kwargs: Any) -> FlowStack | ConditionalFlowStack:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return _build(recipe, **bound.arguments)

    factory.__name__ = factory.__qualname__ = recipe.name
    factory.__doc__ = _docstring(recipe)
    factory.__signature__ = signature  # type: ignore[attr-defined]
    factory.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": returns}
    return factory


FACTORIES = {recipe.name: _factory(recipe) for recipe in RECIPES}
realnvp = FACTORIES["realnvp"]
glow = FACTORIES["glow"]
maf = FACTORIES["maf"]
iaf = FACTORIES["iaf"]
nsf_coupling = FACTORIES["nsf_coupling"]
nsf_autoregressive = FACTORIES["nsf_autoregressive"]
planar_flow = FACTORIES["planar_flow"]
radial_flow = FACTORIES["radial_flow"]
sylvester_flow = FACTORIES["sylvester_flow"]
householder_flow = FACTORIES["householder_flow"]
naf = FACTORIES["naf"]
bnaf = FACTORIES["bnaf"]


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
