r"""Flow guides for SVI: :class:`AutoFlow` (any registry flow) and :class:`AutoCNF`.

Both are Pyro ``AutoContinuous`` guides over the flattened unconstrained latent vector. The
posterior is

.. math:: \theta = \mu + \sigma \odot f(\epsilon), \qquad \epsilon \sim \mathcal N(0, I),

(or :math:`\epsilon_i \sim t_\nu` with ``base_df=ν``, see below) with :math:`\mu` initialised at
the model's init location (``init_loc_fn``), :math:`\sigma` at ``init_scale`` and :math:`f` a
normalizing flow that starts near the identity, so the flow learns only what the affine guide
cannot: a fresh :class:`AutoCNF` *is* the diagonal-Normal guide.
Pyro's ``AutoNormalizingFlow`` instead starts from :math:`\mathcal N(0, I)` at a feasible point,
which is badly scaled for most posteriors.

**Tails.** A flow whose map is Lipschitz (every CNF with a smooth bounded-slope field, affine
and coupling layers) keeps the tail class of its base: from a Gaussian base it cannot make the
exponential or polynomial tails of, e.g., :math:`\log\tau` in a hierarchical model, and the
importance weights :math:`p/q` then grow without bound in those tails (large Pareto
:math:`\hat k`); see Jaini et al., "Tails of Lipschitz triangular flows", ICML 2020,
`arXiv:1907.04481 <https://arxiv.org/abs/1907.04481>`_. ``base_df=ν`` uses independent
Student-t coordinates with learnable degrees of freedom (initialised at :math:`\nu`) instead.
The ELBO barely pays for tail mass, so it raises :math:`\nu` as it fits: the tails stay heavy
only while :math:`\nu` is still rising, and a mass-covering finish
(:class:`~pyro_cnf.InclusiveKL`) is what puts some tail mass back. ``tail_layer=True`` works
better: an
:class:`~pyro_cnf.transforms.ExponentialTails` layer between the flow and the affine map
(after the flow, so the CNF solves on Gaussian-tailed points) gives each side of each
coordinate an exponential tail whose weight the fit sets, and the
ELBO *does* keep that weight where the posterior has such a tail (on centered eight schools,
non-centered as below, the left tail of :math:`\log\tau`, where
:math:`p(\log\tau) \propto \tau`, keeps a weight near 1 and the others go to 0).

**Funnels.** ``funnel_layer=True`` puts a :class:`~pyro_cnf.transforms.LogLinearAutoregressive`
layer between the flow and the affine map,

.. math:: \theta = \mu + \sigma \odot g(f(\epsilon)), \qquad
    g(u)_i = u_i\, e^{\sum_{j<i} A_{ij} u_j} + \textstyle\sum_{j<i} C_{ij} u_j,

(:math:`A, C` learned, zero at the start) so that each coordinate's scale can be the
exponential of a linear function of the latents sampled before it: the posterior of a centered
hierarchical model (:math:`\theta_j \sim \mathcal N(\mu, \tau)`, a funnel in
:math:`(\log\tau, \theta)`) is then a learned non-centering away from the flow's reach.
It relies on Pyro's latent order, which is the model's sample order: scale parameters
(:math:`\tau`) must be sampled before the sites they scale, as in any top-down model.

**Non-centering.** ``noncentered=True`` (or a list of site names) makes the guide's last layer
the model's own conditionals: each latent site of a location-scale family on the real line
(Normal, Student-t, Cauchy, Laplace, ...) is represented by
:math:`\tilde\theta = (\theta - \mathrm{loc}) / \mathrm{scale}`, with loc and scale computed by
the model from the earlier sites (one pass of the model per map, its likelihood not scored), so

.. math:: \theta = \mathrm{loc}(\ldots) + \mathrm{scale}(\ldots)\,
    \bigl[\mu + \sigma \odot g(f(\epsilon))\bigr]_\theta .

The guide then fits the non-centered posterior while the model stays centered (the sites,
``Predictive`` and ArviZ output are the model's). Unlike the learned funnel layer this is exact
at every :math:`\tau`: a learned non-centering is right only to the precision the bulk of the
draws pins it down, below which :math:`\tau` is too small to sample, which is where the
largest importance weights came from. Pyro's ``LocScaleReparam`` does the same to the model
instead (it renames the sites); Gorinova, Moore & Hoffman, ICML 2020,
`arXiv:1906.03028 <https://arxiv.org/abs/1906.03028>`_, learn a partial version. A site whose
data dominate its prior is better left centered: name the sites to map.

**Warm start.** ``warm_start="laplace"`` starts the guide at the Laplace approximation
instead: use it when the posterior is far from the prior median or at a very different scale
(wide or flat priors, unscaled predictors) or strongly correlated, where SVI from the default
start spends its steps walking there or never arrives. When the guide sets itself up it finds
the mode :math:`\hat u` of the log density in the affine map's output coordinates by L-BFGS
and the Hessian :math:`H` of :math:`-\log p` there, and starts at

.. math:: \theta = \hat u + L\, f(\epsilon), \qquad L L^\top = H^{-1},

with :math:`L` a full lower-triangular scale, so a fresh :class:`AutoCNF` *is*
:math:`\mathcal N(\hat u, H^{-1})` and the flow learns the non-Gaussian part. The affine map
is learned relative to the Laplace factor :math:`L_0` (:math:`L_0 L_0^\top = H^{-1}`):
:math:`\hat u + L_0 \delta` and :math:`L_0 \operatorname{diag}(s) U` with :math:`\delta = 0`,
:math:`s = 1` and a unit lower-triangular :math:`U = I` at the start, so that the optimizer's
steps are in posterior standard deviations whatever the units of each coordinate. The log
density is the model's in unconstrained coordinates, with the log-Jacobian of the constraints
(and of the non-centering layer, which stays after the affine map). Where there is no Laplace
approximation (a funnel such as centered eight schools, whose density grows without bound as
:math:`\tau \to 0`; a Hessian that is not positive definite; non-finite values) the guide warns
and keeps the default start.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import AffineTransform, LowerCholeskyAffine
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median, init_to_value
from pyro.infer.mcmc.util import initialize_model
from pyro.nn import PyroParam
from pyro.poutine.util import site_is_subsample
from pyro.util import get_rng_state, set_rng_state
from torch import Tensor, nn
from torch.distributions import Transform, biject_to

from ..distributions import FlowDistribution
from ..transforms.linear import LogLinearAutoregressive
from ..transforms.registry import flow_spec, make_flow
from ..transforms.tails import ExponentialTails
from ._laplace import laplace_approximation
from ._noncentering import LocScaleNoncentering, loc_scale_sites

__all__ = ["AutoCNF", "AutoFlow"]


class AutoFlow(AutoContinuous):
    r"""A normalizing-flow guide: an affine map at the model's init location after a flow.

    Arguments:
        model: A Pyro model with continuous latent sites.
        flow: A registry name (see :func:`~pyro_cnf.flow_names`) or a factory
            ``flow(latent_dim) -> TransformModule``.
        init_loc_fn: Per-site initialisation of :math:`\mu` (default ``init_to_median``).
        init_scale: Initial :math:`\sigma` (every coordinate), > 0.
        num_quantile_samples: Draws used by the Monte Carlo :meth:`median` and :meth:`quantiles`.
        base_df: ``None`` (default) for a standard-normal base; a number :math:`\nu > 0` for a
            heavy-tailed base of independent Student-t coordinates whose degrees of freedom
            start at :math:`\nu` and are learned with the other parameters.
        funnel_layer: Add a :class:`~pyro_cnf.transforms.LogLinearAutoregressive` layer after
            the flow (see the module docs): for centered hierarchical models.
        noncentered: Work in non-centered coordinates of the model's location-scale latent
            sites (see the module docs): ``True`` for every such site, or a sequence of site
            names. For centered hierarchical models; exact where the funnel layer is learned.
        tail_layer: Put an :class:`~pyro_cnf.transforms.ExponentialTails` layer between the
            flow and the funnel layer (or affine map), so that the fit can give each
            coordinate exponential tails (see the module docs).
        warm_start: ``None`` (default): :math:`\mu` at the init location, :math:`\sigma` at
            ``init_scale``. ``"laplace"``: start at the Laplace approximation
            :math:`\mathcal N(\hat u, H^{-1})` of the posterior, with a learned full
            lower-triangular scale (see the module docs); for posteriors far from the prior
            median, unscaled predictors or strong correlations. Without a finite mode (e.g. a
            funnel) it warns and keeps the default start.
        **flow_kwargs: Options of the registry flow (``num_layers``, ``hidden_dims``, ...).

    Raises:
        ValueError: On a discrete latent site, or a latent site inside a subsampled plate (its
            dimension would change with the subsample); both when the guide is first run.

    Example:
        >>> import pyro
        >>> pyro.clear_param_store()
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoFlow(model, "realnvp", num_layers=2)
        >>> sorted(guide())
        ['x']
    """

    scale_constraint = constraints.softplus_positive
    scale_tril_constraint = constraints.unit_lower_cholesky
    _warm_starts = ("laplace",)

    def __init__(
        self,
        model: Callable[..., Any],
        flow: str | Callable[[int], Transform] = "realnvp",
        init_loc_fn: Callable[..., Any] = init_to_median,
        init_scale: float = 0.1,
        num_quantile_samples: int = 4096,
        base_df: float | None = None,
        funnel_layer: bool = False,
        noncentered: bool | Sequence[str] = False,
        tail_layer: bool = False,
        warm_start: str | None = None,
        **flow_kwargs: Any,
    ) -> None:
        if isinstance(flow, str):
            flow_spec(flow)  # unknown names fail here, listing the valid ones
        elif not callable(flow):
            raise TypeError(f"flow must be a registry name or a factory, got {flow!r}")
        if not (isinstance(init_scale, (int, float)) and init_scale > 0):
            raise ValueError(f"init_scale must be positive, got {init_scale!r}")
        if base_df is not None and not (isinstance(base_df, (int, float)) and base_df > 0):
            raise ValueError(f"base_df must be None or positive, got {base_df!r}")
        if not isinstance(funnel_layer, bool):
            raise TypeError(f"funnel_layer must be True or False, got {funnel_layer!r}")
        if not isinstance(tail_layer, bool):
            raise TypeError(f"tail_layer must be True or False, got {tail_layer!r}")
        if not isinstance(noncentered, bool) and not (
            isinstance(noncentered, Sequence)
            and not isinstance(noncentered, str)
            and all(isinstance(name, str) for name in noncentered)
        ):
            raise TypeError(
                f"noncentered must be True, False or a sequence of site names, got {noncentered!r}"
            )
        if warm_start is not None and warm_start not in self._warm_starts:
            raise ValueError(
                f"warm_start must be None or one of {list(self._warm_starts)}, got {warm_start!r}"
            )
        self._warm_start = warm_start
        self._funnel_layer = funnel_layer
        self._tail_layer = tail_layer
        self._noncentered = noncentered if isinstance(noncentered, bool) else tuple(noncentered)
        self._noncentered_sites: tuple[str, ...] = ()
        self._use_flow = True
        self._base_df = None if base_df is None else float(base_df)
        self._flow_factory = flow
        self._flow_kwargs = flow_kwargs
        self._init_scale = float(init_scale)
        self.num_quantile_samples = num_quantile_samples
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        self._check_model_sites(*args, **kwargs)
        super()._setup_prototype(*args, **kwargs)
        init_loc = self._init_loc()
        self._noncentered_sites = self._select_noncentered_sites()
        if self._noncentered_sites:  # the affine map acts on the standardized coordinates
            init_loc = self._noncentering(args, kwargs).inv(init_loc)
        self.loc = nn.Parameter(init_loc.detach())
        self.scale = PyroParam(
            self.loc.new_full((self.latent_dim,), self._init_scale), self.scale_constraint
        )
        if self._base_df is not None:
            self.base_df = PyroParam(self.loc.new_tensor(self._base_df), constraints.positive)
        if isinstance(self._flow_factory, str):
            flow = make_flow(self._flow_factory, self.latent_dim, **self._flow_kwargs)
        else:
            flow = self._flow_factory(self.latent_dim, **self._flow_kwargs)
        self.flow = flow.to(dtype=self.loc.dtype) if isinstance(flow, nn.Module) else flow
        if self._funnel_layer:
            self.funnel = LogLinearAutoregressive(self.latent_dim).to(dtype=self.loc.dtype)
        if self._tail_layer:
            self.tails = ExponentialTails(self.latent_dim).to(dtype=self.loc.dtype)
        if self._warm_start == "laplace":
            self._laplace_start(args, kwargs)

    def _laplace_start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Set ``loc``, ``scale`` and ``scale_tril`` to the Laplace approximation, or warn.

        Leaves the random state as it found it (Pyro's ``initialize_model`` runs the model under
        its init strategy, which may draw), so that a fallback is the default start exactly.
        """
        rng_state = get_rng_state()
        try:
            self._set_laplace_start(args, kwargs)
        finally:
            set_rng_state(rng_state)

    def _set_laplace_start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        eye = torch.eye(self.latent_dim, dtype=self.loc.dtype, device=self.loc.device)
        self.scale_tril = PyroParam(eye, self.scale_tril_constraint)
        self.register_buffer("laplace_mode", None)
        self.register_buffer("laplace_tril", None)
        # Every site, observed ones too (the prototype trace holds the latent ones only), with
        # the latents at their init values.
        values = {
            name: site["value"].detach()
            for name, site in self.prototype_trace.iter_stochastic_nodes()
        }
        model = poutine.condition(self.model, data=values)
        trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
        frames = [
            frame
            for site in trace.nodes.values()
            if site["type"] == "sample"
            for frame in site["cond_indep_stack"]
            if frame.vectorized
        ]
        subsampled = sorted(
            {f.name for f in frames if f.full_size is not None and f.full_size != f.size}
        )
        if subsampled:
            reason = (
                f"the model subsamples the plates {subsampled}, so its log density is a "
                "minibatch estimate"
            )
        else:
            nesting = max((-frame.dim for frame in frames), default=0)
            # Hidden from the caller's handlers (SVI's trace, a particle plate), with gradients
            # even under torch.no_grad (median and quantiles may set the guide up there).
            with poutine.block(), torch.enable_grad():
                potential = self._log_density_potential(args, kwargs, values, nesting)
                result = laplace_approximation(potential, self.loc)
            reason = result.reason
        if reason is not None:
            warnings.warn(
                f"{type(self).__name__}(warm_start='laplace'): no Laplace approximation, so the "
                f"default start (init location, scale {self._init_scale:g}): {reason}",
                UserWarning,
                stacklevel=2,
            )
            return
        assert result.mode is not None and result.scale_tril is not None
        # The affine map is learned relative to the Laplace factor (a preconditioning: Adam's
        # steps are then in posterior sds, whatever the units of each coordinate).
        self.laplace_mode = result.mode.detach().clone()
        self.laplace_tril = result.scale_tril.detach().clone()
        self.loc = nn.Parameter(torch.zeros_like(self.laplace_mode))
        self.scale = PyroParam(torch.ones_like(self.laplace_mode), self.scale_constraint)

    def _log_density_potential(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        values: dict[str, Tensor],
        max_plate_nesting: int,
    ) -> Callable[[Tensor], Tensor]:
        r"""``u -> -log p(u)`` over the affine map's output coordinates.

        That is the unconstrained latent vector, or its standardized form when sites are
        non-centered (then :math:`\log p(T(u)) + \log|\det T'(u)|`). ``values``: the latent
        sites' init values, for the prototype run of Pyro's ``initialize_model``.
        """
        initial = {
            site["name"]: value.detach() for site, value in self._unpack_latent(self._init_loc())
        }
        _, potential_fn, _, _ = initialize_model(
            self.model,
            args,
            kwargs,
            max_plate_nesting=max_plate_nesting,
            init_strategy=init_to_value(values=values),
            initial_params=initial,
        )
        noncentering = self._noncentering(args, kwargs) if self._noncentered_sites else None

        def potential(u: Tensor) -> Tensor:
            latent, log_det = u, 0.0
            if noncentering is not None:  # a fresh tensor: the transform caches by identity
                u = u.clone()
                latent = noncentering(u)
                log_det = noncentering.log_abs_det_jacobian(u, latent)
            params = {site["name"]: value for site, value in self._unpack_latent(latent)}
            return potential_fn(params) - log_det

        return potential

    def _select_noncentered_sites(self) -> tuple[str, ...]:
        if self._noncentered is False:
            return ()
        eligible = loc_scale_sites(self)
        if self._noncentered is True:
            if not eligible:
                raise ValueError(
                    f"{type(self).__name__}(noncentered=True): the model has no latent site of a "
                    "location-scale family on the real line (Normal, StudentT, Cauchy, ...)"
                )
            return eligible
        latent = [name for name, _ in self.prototype_trace.iter_stochastic_nodes()]
        for name in self._noncentered:
            if name not in latent:
                raise ValueError(
                    f"{type(self).__name__}(noncentered=...): {name!r} is not a latent site of "
                    f"the model (latent sites: {latent})"
                )
            if name not in eligible:
                raise ValueError(
                    f"{type(self).__name__}(noncentered=...): site {name!r} is not of a "
                    "location-scale family on the real line (Normal, StudentT, Cauchy, ...), so "
                    "it has no non-centered form"
                )
        return tuple(name for name in eligible if name in self._noncentered)

    def _noncentering(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LocScaleNoncentering:
        return LocScaleNoncentering(self, self._noncentered_sites, args, kwargs)

    def _check_model_sites(self, *args: Any, **kwargs: Any) -> None:
        trace = poutine.block(poutine.trace(self.model).get_trace)(*args, **kwargs)
        for name, site in trace.iter_stochastic_nodes():
            if site_is_subsample(site):
                continue
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"{type(self).__name__} cannot fit the discrete latent site {name!r}: "
                    "enumerate it out of the model (config_enumerate + TraceEnum_ELBO) or give "
                    "it a separate guide"
                )
            for frame in site["cond_indep_stack"]:
                if (
                    frame.vectorized
                    and frame.full_size is not None
                    and frame.full_size != frame.size
                ):
                    raise ValueError(
                        f"{type(self).__name__} cannot fit the local latent site {name!r} inside "
                        f"the subsampled plate {frame.name!r} ({frame.size} of "
                        f"{frame.full_size}): the latent dimension would change with each "
                        "subsample; do not subsample that plate, or use an amortized guide"
                    )

    def get_base_dist(self) -> dist.Distribution:
        """The base on the latent vector: standard normal, or Student-t with ``base_df``."""
        zeros = torch.zeros_like(self.loc)
        if self._base_df is None:
            return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)
        return dist.StudentT(self.base_df.expand_as(zeros), zeros, torch.ones_like(zeros)).to_event(
            1
        )

    def get_transform(self, *args: Any, **kwargs: Any) -> list[Transform]:
        """The flow (unless :meth:`without_flow`), tail, funnel, affine and non-centering layers."""
        layers: list[Transform] = [self.flow] if self._use_flow else []
        if self._tail_layer:
            layers.append(self.tails)
        if self._funnel_layer:
            layers.append(self.funnel)
        if self._warm_start is None:
            layers.append(AffineTransform(self.loc, self.scale, event_dim=1, cache_size=1))
        else:
            layers.append(LowerCholeskyAffine(*self._affine_loc_tril(), cache_size=1))
        if self._noncentered_sites:
            layers.append(self._noncentering(args, kwargs))
        return layers

    def _affine_loc_tril(self) -> tuple[Tensor, Tensor]:
        """The full affine map's location and lower-triangular scale (``warm_start`` only).

        ``scale_tril`` has a unit diagonal, so log|det| = sum(log scale) (+ that of the fixed
        Laplace factor ``laplace_tril`` when the warm start found one).
        """
        tril = self.scale[:, None] * self.scale_tril
        if getattr(self, "laplace_tril", None) is None:
            return self.loc, tril
        return self.laplace_mode + self.laplace_tril @ self.loc, self.laplace_tril @ tril

    @contextmanager
    def without_flow(self) -> Iterator[None]:
        r"""Run the guide without its flow: the affine map (and the funnel layer) alone.

        For a cheap first stage: fit the base, the affine map and the funnel layer (no ODE
        solves), then the whole guide from there. An :class:`AutoCNF`'s flow starts as the
        identity, so its second stage starts from exactly the guide the first one fitted
        (other registry flows start near the identity, not at it). Inside the block the
        flow's parameters are not used (an optimizer sees none of them).

        Example:
            >>> import pyro
            >>> pyro.clear_param_store()
            >>> def model():
            ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            >>> guide = AutoCNF(model, hidden_dims=(8, 8), funnel_layer=True)
            >>> with guide.without_flow():
            ...     draw = guide()  # builds the guide, draws without an ODE solve
            ...     transforms = guide.get_transform()
            >>> [type(t).__name__ for t in transforms]
            ['LogLinearAutoregressive', 'AffineTransform']
        """
        previous, self._use_flow = self._use_flow, False
        try:
            yield
        finally:
            self._use_flow = previous

    def get_posterior(self, *args: Any, **kwargs: Any) -> FlowDistribution:
        """The posterior over the unconstrained latent vector, a :class:`~pyro_cnf.FlowDistribution`."""
        return FlowDistribution(self.get_base_dist(), self.get_transform(*args, **kwargs))

    @torch.no_grad()
    def _latent_draws(self, num_samples: int | None, *args: Any, **kwargs: Any) -> Tensor:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        num_samples = self.num_quantile_samples if num_samples is None else num_samples
        return self.get_posterior(*args, **kwargs).sample((num_samples,))

    def _constrain(self, latent: Tensor) -> dict[str, Tensor]:
        return {
            site["name"]: biject_to(site["fn"].support)(value)
            for site, value in self._unpack_latent(latent)
        }

    @torch.no_grad()
    def median(
        self, *args: Any, num_samples: int | None = None, **kwargs: Any
    ) -> dict[str, Tensor]:
        """Posterior medians by Monte Carlo: coordinate-wise median of unconstrained draws, constrained.

        Exact (up to Monte Carlo error) for sites whose constraint maps coordinates one by one
        (real, positive, interval); for simplex or correlation sites it is the image of the
        coordinate-wise median, as in Pyro's other autoguides.
        """
        draws = self._latent_draws(num_samples, *args, **kwargs)
        return self._constrain(draws.median(0).values)

    @torch.no_grad()
    def quantiles(
        self,
        quantiles: Sequence[float] | Tensor,
        *args: Any,
        num_samples: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Tensor]:
        """Posterior quantiles by Monte Carlo (coordinate-wise, like :meth:`median`).

        Returns:
            ``{site: tensor}`` with the quantiles stacked along a new leading dimension.
        """
        draws = self._latent_draws(num_samples, *args, **kwargs)
        levels = torch.as_tensor(quantiles, dtype=draws.dtype)
        latents = torch.quantile(draws, levels, dim=0)
        result: dict[str, list[Tensor]] = {}
        for latent in latents:
            for name, value in self._constrain(latent).items():
                result.setdefault(name, []).append(value)
        return {name: torch.stack(values) for name, values in result.items()}


class AutoCNF(AutoFlow):
    r"""A continuous-normalizing-flow guide: :class:`AutoFlow` with a :class:`~pyro_cnf.CNF`.

    The CNF's last layer starts at zero, so a fresh guide is exactly the diagonal Normal
    :math:`\mathcal N(\mu, \sigma^2)` at the init location; the field then learns the
    non-Gaussian part. Each SVI step makes one ODE solve (sampling and scoring share it).

    Arguments:
        model: A Pyro model with continuous latent sites.
        init_loc_fn: Per-site initialisation of :math:`\mu`.
        init_scale: Initial :math:`\sigma`.
        num_quantile_samples: Draws for :meth:`median` and :meth:`quantiles`.
        base_df: ``None`` for a standard-normal base, or the initial degrees of freedom of a
            heavy-tailed Student-t base (see :class:`AutoFlow`).
        funnel_layer: Add a :class:`~pyro_cnf.transforms.LogLinearAutoregressive` layer after
            the CNF, for centered hierarchical models (see :class:`AutoFlow`).
        noncentered: Non-center the model's location-scale sites inside the guide (``True``
            or site names; see :class:`AutoFlow`).
        tail_layer: Add an :class:`~pyro_cnf.transforms.ExponentialTails` layer after the
            CNF (see :class:`AutoFlow`).
        warm_start: ``None``, or ``"laplace"`` to start at the Laplace approximation with a
            full scale (see :class:`AutoFlow`): for posteriors far from the prior median or
            strongly correlated, e.g. regressions on unscaled predictors; a funnel without a
            mode falls back to the default start with a warning.
        **cnf_kwargs: Options of :func:`~pyro_cnf.cnf`: ``hidden_dims`` (default ``(64, 64)``:
            with two hidden layers the fused exact trace costs one extra :math:`O(BH^2)` product
            whatever the latent dimension; three cost two :math:`O(BdH^2)`), ``activation``, ``T``,
            ``divergence``, ``solver`` (training), ``eval_solver`` (after ``guide.eval()``),
            ``regularization``, ``gated``.

    Which settings for which posterior (measured in ``docs/benchmarks.md``): for funnels and
    hierarchical models (centered eight schools, Neal's funnel) and curved ones (the banana),
    ``gated=True`` with an adaptive training solver, e.g. ``solver=Solver(rtol=1e-3,
    atol=1e-4)``. For a centered hierarchical model add ``noncentered=True``,
    ``tail_layer=True`` and ``funnel_layer=True``, and fit first without the flow
    (:meth:`~AutoFlow.without_flow`, no ODE solves): on centered eight schools 1500 such steps
    and 3000 with the flow gave KL 0.020-0.024, Pareto :math:`\hat k` 0.40-0.48 (medians over
    draw seeds), the guide's own mean of :math:`\tau` within 0.05 of exact and its sd 3-6 %
    short on each of three fits, in 5.5-7.5 minutes of fit on one core, where the learned
    funnel layer alone (with a Student-t base, ``base_df=5.0``, and an inclusive polish)
    stayed at :math:`\hat k` 0.50-0.62 after 11 minutes (1000-1500 steps with the flow left
    the sd of :math:`\tau` 6-15 % short on some fits); for several modes, anneal
    (:func:`~pyro_cnf.fit_svi`'s ``anneal_steps``). To finish,
    *polish*: a second :func:`~pyro_cnf.fit_svi` call of a few hundred steps with many
    particles (e.g. ``Trace_ELBO(num_particles=256, vectorize_particles=True)``) at a small
    constant learning rate (e.g. ``ClippedAdam({"lr": 5e-4})``) takes out the optimizer's noise
    floor, which is most of the KL left once the guide has the posterior's shape. With
    ``loss=InclusiveKL(num_particles=256, reverse_weight=0.5)`` instead, that stage also pays
    for posterior mass the guide misses (:class:`~pyro_cnf.InclusiveKL`; the ELBO barely sees
    it): on centered eight schools it brought :math:`E[\tau]` from the guide's own draws to
    within 0.09-0.13 of exact (0.18 with the ELBO), at about 2.5x the cost of an ELBO step.
    A wider field buys KL with time: ``hidden_dims=(128, 128)`` took centered eight schools
    from a KL of 0.09 to 0.055 at 2.5-3x the fit time, without lowering its Pareto
    :math:`\hat k` (0.53-0.63 against 0.48-0.74 for ``(64, 64)``): check :math:`\hat k` with
    :func:`~pyro_cnf.importance_diagnostics` and use its resampled draws where it is high.

    Example:
        >>> import pyro
        >>> pyro.clear_param_store()
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoCNF(model, hidden_dims=(16, 16))
        >>> guide()["x"].shape
        torch.Size([2])
    """

    def __init__(
        self,
        model: Callable[..., Any],
        init_loc_fn: Callable[..., Any] = init_to_median,
        init_scale: float = 0.1,
        num_quantile_samples: int = 4096,
        base_df: float | None = None,
        funnel_layer: bool = False,
        noncentered: bool | Sequence[str] = False,
        tail_layer: bool = False,
        warm_start: str | None = None,
        **cnf_kwargs: Any,
    ) -> None:
        cnf_kwargs.setdefault("hidden_dims", (64, 64))
        super().__init__(
            model,
            "cnf",
            init_loc_fn,
            init_scale,
            num_quantile_samples,
            base_df,
            funnel_layer,
            noncentered,
            tail_layer,
            warm_start,
            **cnf_kwargs,
        )
