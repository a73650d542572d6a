r"""The model record shared by the zoo: :class:`BayesianModel`, its :class:`Reference`, the registry.

A zoo entry bundles a Pyro model (data baked in) with a *reference answer*: the normalizing
constant :math:`\log Z = \log \int p(\theta, y)\, d\theta` where it is known, and posterior means
and standard deviations of every latent (and deterministic) site in the constrained space. The
reference is computed in code, in float64, the first time it is asked for, and cached on the
object; :attr:`Reference.kind` says how it was made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import sum_rightmost
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = ["BayesianModel", "Reference", "get_model", "zoo"]


@dataclass(frozen=True, eq=False)
class Reference:
    r"""A model's reference answer.

    Attributes:
        log_Z: :math:`\log p(y)`, the log normalizing constant of the unnormalized posterior
            :math:`p(\theta, y)` that the model's trace scores, or ``None`` when unknown.
        mean: Posterior mean per site (float64 tensors shaped like the site, constrained space).
            Keys: the latent sites, plus deterministic sites where the model has them.
        sd: Posterior standard deviation per site, same keys and shapes as ``mean``.
        kind: How it was computed: ``"analytic"``, ``"quadrature (...)"`` or
            ``"NUTS (made by pyro-cnf ...)"``.
        details: Extra facts about the computation (grid, refinement change, R-hat, wall time, ...).
        draws: Reference posterior draws where the reference is a sample, ``{site: (chains,
            draws, *site_shape)}`` (float64, constrained space), else ``None``.
    """

    log_Z: float | None
    mean: dict[str, Tensor]
    sd: dict[str, Tensor]
    kind: str
    details: dict[str, Any] = field(default_factory=dict)
    draws: dict[str, Tensor] | None = field(default=None, repr=False)


@dataclass(frozen=True, eq=False)
class _SiteInfo:
    shapes: dict[str, torch.Size]  # value shape of each latent site in an unbatched trace
    batch_ndims: dict[str, int]  # len(fn.batch_shape) of each latent site
    nesting: int  # plate dims (and site batch dims) the model uses, right of any user batch


@dataclass(frozen=True, eq=False)
class BayesianModel:
    r"""A Pyro model with its data baked in and a lazily computed :class:`Reference`.

    Calling the object calls :attr:`model`, so it can be handed to Pyro directly
    (``AutoCNF(m)``, ``SVI(m, guide, ...)``, ``NUTS(m)``). Data tensors are created at call
    time in the current default dtype.

    Attributes:
        name: Zoo name (see :func:`zoo`).
        model: The Pyro model, a callable with no arguments.
        latent_sites: Names of the latent sample sites, in the order the model draws them.
        description: One paragraph: the model, its prior and data, how the reference is made.
        reference_fn: Computes the reference (called once, by :attr:`reference`).

    Example:
        >>> m = get_model("banana")
        >>> m.latent_sites
        ('x0', 'x1')
        >>> m.reference.log_Z, m.reference_kind
        (0.0, 'analytic')
        >>> float(m.log_joint({"x0": torch.tensor(0.0), "x1": torch.tensor(-3.0)}))  # doctest: +ELLIPSIS
        -4.14...
    """

    name: str
    model: Callable[[], Any]
    latent_sites: tuple[str, ...]
    description: str
    reference_fn: Callable[[], Reference] = field(repr=False)

    def __call__(self) -> Any:
        return self.model()

    @cached_property
    def reference(self) -> Reference:
        """The reference answer, computed on first access (float64) and cached."""
        return self.reference_fn()

    @property
    def log_Z(self) -> float | None:
        """Shortcut for ``reference.log_Z`` (computes the reference if needed)."""
        return self.reference.log_Z

    @property
    def reference_kind(self) -> str:
        """Shortcut for ``reference.kind`` (computes the reference if needed)."""
        return self.reference.kind

    @property
    def latent_dim(self) -> int:
        """Total number of latent coordinates (the length of a guide's flat latent vector)."""
        return sum(shape.numel() for shape in self._site_info.shapes.values())

    @cached_property
    def _site_info(self) -> _SiteInfo:
        with torch.random.fork_rng(devices=[]):  # a prior draw must not move the caller's RNG
            trace = poutine.block(poutine.trace(self.model).get_trace)()
        shapes: dict[str, torch.Size] = {}
        batch_ndims: dict[str, int] = {}
        nesting = 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.dim is not None:
                    nesting = max(nesting, -frame.dim)
            if name in self.latent_sites:
                shapes[name] = site["value"].shape
                batch_ndims[name] = len(site["fn"].batch_shape)
                nesting = max(nesting, batch_ndims[name])
            elif not site["is_observed"]:
                raise RuntimeError(f"model {self.name!r} has an undeclared latent site {name!r}")
        missing = [name for name in self.latent_sites if name not in shapes]
        if missing:
            raise RuntimeError(f"model {self.name!r} has no latent sites named {missing}")
        return _SiteInfo(shapes, batch_ndims, nesting)

    def log_joint(self, values: Mapping[str, Tensor]) -> Tensor:
        r"""The log joint :math:`\log p(\theta, y)` at latent values :math:`\theta`.

        Arguments:
            values: A value for every latent site, in the constrained space, shaped
                ``batch_shape + site_shape`` with the same ``batch_shape`` for every site
                (``site_shape`` as in one trace of the model, e.g. ``reference.mean[site].shape``;
                ``Predictive`` output keeps singleton plate dims on sites outside a plate: drop
                them). Keys that are not latent sites (e.g. deterministic sites) are ignored.

        Returns:
            A tensor of shape ``batch_shape`` (differentiable with respect to ``values``).

        Raises:
            KeyError: If a latent site is missing.
            ValueError: If a value's trailing shape is not its site's, or batch shapes differ.
        """
        info = self._site_info
        missing = [name for name in self.latent_sites if name not in values]
        if missing:
            raise KeyError(
                f"log_joint of {self.name!r} needs values for the latent sites {missing}"
            )
        batch_shape: torch.Size | None = None
        for name in self.latent_sites:
            value, shape = values[name], info.shapes[name]
            ndim = value.dim() - len(shape)
            if ndim < 0 or value.shape[ndim:] != shape:
                raise ValueError(
                    f"value of {name!r} must have shape batch_shape + {tuple(shape)}, "
                    f"got {tuple(value.shape)}"
                )
            if batch_shape is None:
                batch_shape = value.shape[:ndim]
            elif value.shape[:ndim] != batch_shape:
                raise ValueError(
                    f"all values must share one batch shape: {tuple(batch_shape)} "
                    f"(site {self.latent_sites[0]!r}) vs {tuple(value.shape[:ndim])} (site {name!r})"
                )
        assert batch_shape is not None
        size = math.prod(batch_shape)
        # Batch dims sit left of every plate dim; the flattened batch becomes one outer plate.
        data = {
            name: values[name].reshape(
                (size,) + (1,) * (info.nesting - info.batch_ndims[name]) + info.shapes[name]
            )
            for name in self.latent_sites
        }
        with pyro.plate("_log_joint_batch", size, dim=-(info.nesting + 1)):
            trace = poutine.trace(poutine.condition(self.model, data=data)).get_trace()
        trace.compute_log_prob(lambda name, site: not site_is_subsample(site))
        total = values[self.latent_sites[0]].new_zeros(size)
        for site in trace.nodes.values():
            if site["type"] == "sample" and "log_prob" in site:
                total = total + sum_rightmost(site["log_prob"], info.nesting)
        return total.reshape(batch_shape)


@contextmanager
def float64() -> Iterator[None]:
    """Make float64 the default dtype inside the block (reference computations run in it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextmanager
def own_rng(seed: int) -> Iterator[None]:
    """Seed Pyro's RNGs (torch, random, numpy) inside the block, then restore the caller's state."""
    state = pyro.util.get_rng_state()
    pyro.set_rng_seed(seed)
    try:
        yield
    finally:
        pyro.util.set_rng_state(state)


_INSTANCES: dict[tuple[Any, ...], BayesianModel] = {}


def shared(key: tuple[Any, ...], build: Callable[[], BayesianModel]) -> BayesianModel:
    """One instance per key and process, so each reference is computed at most once."""
    if key not in _INSTANCES:
        _INSTANCES[key] = build()
    return _INSTANCES[key]


def _factories() -> dict[str, Callable[[], BayesianModel]]:
    from .banana import banana
    from .eight_schools import eight_schools_centered, eight_schools_noncentered
    from .energies import energy_u1, energy_u2, energy_u3, energy_u4
    from .funnel import funnel
    from .logistic import logistic_regression

    return {
        "eight_schools_centered": eight_schools_centered,
        "eight_schools_noncentered": eight_schools_noncentered,
        "funnel": funnel,
        "banana": banana,
        "energy_u1": energy_u1,
        "energy_u2": energy_u2,
        "energy_u3": energy_u3,
        "energy_u4": energy_u4,
        "logistic_regression": logistic_regression,
    }


def zoo() -> dict[str, BayesianModel]:
    """Every model of the zoo at its default settings, by name.

    The objects are shared within a process (the factories cache them), so a reference computed
    once is reused. Building the zoo computes no reference and loads no data.

    Example:
        >>> sorted(zoo())  # doctest: +NORMALIZE_WHITESPACE
        ['banana', 'eight_schools_centered', 'eight_schools_noncentered', 'energy_u1', 'energy_u2',
         'energy_u3', 'energy_u4', 'funnel', 'logistic_regression']
    """
    return {name: factory() for name, factory in _factories().items()}


def get_model(name: str) -> BayesianModel:
    """The zoo model called ``name`` (at its default settings).

    Raises:
        KeyError: For an unknown name; the message lists the valid ones.

    Example:
        >>> get_model("funnel").latent_sites
        ('v', 'x')
    """
    factories = _factories()
    if name not in factories:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(factories))}")
    return factories[name]()
