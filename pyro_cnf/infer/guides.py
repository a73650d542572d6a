r"""Flow guides for SVI: :class:`AutoCNF` (the default choice) and :class:`AutoFlow` (any registry flow).

Both are Pyro ``AutoContinuous`` guides over the flattened unconstrained latent vector. From the
base draw :math:`\epsilon \sim \mathcal N(0, I)` to the model's latents the layers are

.. math:: \theta = N\bigl(\hat u + L\, g(f(\epsilon))\bigr),

a normalizing flow :math:`f` that starts at (CNF) or near (discrete flows) the identity, an
optional tail layer :math:`g`, an affine map :math:`u \mapsto \hat u + L u`, and an optional
non-centering :math:`N`. A fresh guide is therefore the Gaussian of its affine map, and the flow
learns only what that Gaussian cannot. :class:`AutoCNF` turns on what fits real posteriors
best (``docs/benchmarks.md``); :class:`AutoFlow` has the warm start on (it puts any flow in
whitened coordinates, where coupling and autoregressive layers train stably on sharp
likelihoods) and the other layers off unless asked. In both, the output layer of each
coupling or autoregressive network is divided by its fan-in, so that an Adam step moves the
flow by about the learning rate whatever the network's width.

**Warm start** (``warm_start``). With ``"laplace"`` the guide finds, when it first runs, the
mode :math:`\hat u` of the log density in the affine map's output coordinates (L-BFGS from the
init location and from three draws of the prior; of several modes, the one whose Gaussian holds
the most mass, :math:`p(\hat u)\,\lvert 2\pi H^{-1}\rvert^{1/2}`) and the
Hessian :math:`H` of :math:`-\log p` there, and starts at :math:`\mathcal N(\hat u, H^{-1})`
with a learned full lower-triangular scale. The affine map is learned relative to the Laplace
factor :math:`L_0` (:math:`L_0 L_0^\top = H^{-1}`): :math:`\hat u + L_0\delta` and
:math:`L_0 \operatorname{diag}(s) U` with :math:`\delta = 0`, :math:`s = 1`, :math:`U = I` at
the start, so that the optimizer's steps are in posterior standard deviations whatever the units
of each coordinate. This is what wide or flat priors, unscaled predictors and correlated
coefficients need: from the prior median, SVI spends its steps walking to the posterior or never
arrives. Where there is no Laplace approximation (a density that grows without bound, as in a
centered funnel; a Hessian that is not positive definite; a subsampled likelihood, whose log
density is a minibatch estimate) the guide starts at the init location with a diagonal scale
``init_scale``: ``"auto"`` does so quietly (it logs why at INFO level), ``"laplace"`` warns.
``None`` always starts there (the diagonal affine map of Pyro's ``AutoNormal``).

**Non-centering** (``noncentered``). Each chosen latent site of a location-scale family on the
real line (Normal, Student-t, Cauchy, Laplace, ...) is represented by
:math:`\tilde\theta = (\theta - \mathrm{loc}) / \mathrm{scale}`, with loc and scale computed by
the model from the earlier sites (one pass of the model per map, its likelihood not scored). The
guide then fits the non-centered posterior while the model stays centered (its sites,
``Predictive`` and ArviZ output are the model's own). This is exact at every scale, down the neck
of a funnel where no learned layer has seen a draw. ``"auto"`` chooses the sites whose loc or
scale depends on other latent sites (the hierarchical ones: :math:`\theta_j \sim \mathcal N(\mu,
\tau)`); ``True`` every location-scale site; or name the sites. Pyro's ``LocScaleReparam`` does
the same to the model instead (renaming its sites); Gorinova, Moore & Hoffman, ICML 2020,
`arXiv:1906.03028 <https://arxiv.org/abs/1906.03028>`_, learn a partial version.

**Tails** (``tail_layer``). A flow whose map is Lipschitz (every CNF with a smooth bounded-slope
field, affine and coupling layers) keeps the Gaussian tails of its base (Jaini et al., ICML 2020,
`arXiv:1907.04481 <https://arxiv.org/abs/1907.04481>`_), so importance weights :math:`p/q` grow
without bound where the posterior's tails are heavier, e.g. :math:`\log\tau` near
:math:`\tau = 0` (large Pareto :math:`\hat k`). An :class:`~pyro_cnf.transforms.ExponentialTails`
layer after the flow gives each side of each coordinate an exponential tail whose weight the fit
sets (near zero at the start).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import AffineTransform, LowerCholeskyAffine
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.guides import prototype_hide_fn
from pyro.infer.autoguide.initialization import init_to_median
from pyro.nn import PyroParam
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import Transform, biject_to

from ..distributions import FlowDistribution
from ..ode import Solver
from ..transforms.registry import flow_spec, make_flow
from ..transforms.tails import ExponentialTails
from ._guide_setup import LaplaceWarmStart, ParamStoreSync, scale_output_layers
from ._noncentering import LocScaleNoncentering, hierarchical_sites, loc_scale_sites

__all__ = ["AutoCNF", "AutoFlow"]

#: AutoCNF's training solver: dopri5 at a loose tolerance. Error control matters in training: on
#: a fixed grid the optimizer learns to exploit the gap between the discrete map and the
#: integrated log-determinant (the ELBO estimate then exceeds log Z).
TRAINING_SOLVER = Solver("dopri5", rtol=1e-3, atol=1e-4)


class AutoFlow(LaplaceWarmStart, ParamStoreSync, AutoContinuous):
    r"""A normalizing-flow guide: a registry flow, then optional tails, an affine map, non-centering.

    The flow trains in the coordinates of the Laplace approximation (``warm_start="auto"``);
    tails and non-centering are off unless asked for (see the module docs). :class:`AutoCNF` is
    the guide with the best defaults.

    Arguments:
        model: A Pyro model with continuous latent sites.
        flow: A registry name (see :func:`~pyro_cnf.flow_names`) or a factory
            ``flow(latent_dim) -> TransformModule``.
        init_loc_fn: Per-site start of the affine map's location (default ``init_to_median``);
            the point the Laplace warm start searches from.
        init_scale: Initial diagonal scale (every coordinate), > 0, where there is no warm start.
        num_quantile_samples: Draws used by the Monte Carlo :meth:`median` and :meth:`quantiles`.
        noncentered: Sites to non-center inside the guide: ``False``, ``"auto"`` (those whose
            loc or scale depends on other latent sites), ``True`` (every location-scale site)
            or a sequence of site names. Name the sites yourself to leave a data-dominated
            group centered.
        tail_layer: Put an :class:`~pyro_cnf.transforms.ExponentialTails` layer after the flow,
            so that the fit can give each coordinate exponential tails.
        warm_start: ``None`` (start at the init location, scale ``init_scale``), ``"auto"``
            (the Laplace approximation where the posterior has one, else as ``None``) or
            ``"laplace"`` (the same, warning where it falls back).
        **flow_kwargs: Options of the registry flow (``num_layers``, ``hidden_dims``, ...).

    Raises:
        ValueError: On a discrete latent site, or a latent site inside a subsampled plate (its
            dimension would change with the subsample); both when the guide is first run.

    **Saving and loading.** Every value the guide uses (the flow's parameters, the affine map,
    the fixed warm-start factor) is in Pyro's param store, so
    ``pyro.get_param_store().save(path)`` and, in a new process, ``load(path)`` before or after
    the new guide's first call restore it exactly. ``guide.state_dict()`` works too: save it
    with ``torch.save``, build and call the new guide once (to set it up), then
    ``guide.load_state_dict(torch.load(path, weights_only=True))``.

    Example:
        >>> import pyro
        >>> pyro.clear_param_store()
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoFlow(model, "realnvp", num_layers=2)
        >>> sorted(guide())
        ['x']
        >>> state = guide.state_dict()
        >>> pyro.clear_param_store()
        >>> restored = AutoFlow(model, "realnvp", num_layers=2)
        >>> _ = restored()  # set up, then load
        >>> restored.load_state_dict(state)
        <All keys matched successfully>
    """

    scale_constraint = constraints.softplus_positive
    scale_tril_constraint = constraints.unit_lower_cholesky
    _warm_starts = ("auto", "laplace")

    def __init__(
        self,
        model: Callable[..., Any],
        flow: str | Callable[[int], Transform] = "realnvp",
        init_loc_fn: Callable[..., Any] = init_to_median,
        init_scale: float = 0.1,
        num_quantile_samples: int = 4096,
        noncentered: bool | str | Sequence[str] = False,
        tail_layer: bool = False,
        warm_start: str | None = "auto",
        **flow_kwargs: Any,
    ) -> None:
        if isinstance(flow, str):
            flow_spec(flow)  # unknown names fail here, listing the valid ones
        elif not callable(flow):
            raise TypeError(f"flow must be a registry name or a factory, got {flow!r}")
        if not (isinstance(init_scale, (int, float)) and init_scale > 0):
            raise ValueError(f"init_scale must be positive, got {init_scale!r}")
        if not isinstance(tail_layer, bool):
            raise TypeError(f"tail_layer must be True or False, got {tail_layer!r}")
        if isinstance(noncentered, str):
            if noncentered != "auto":
                raise ValueError(
                    f"noncentered must be True, False, 'auto' or a sequence of site names, got "
                    f"{noncentered!r}"
                )
        elif not isinstance(noncentered, bool) and not (
            isinstance(noncentered, Sequence) and all(isinstance(name, str) for name in noncentered)
        ):
            raise TypeError(
                "noncentered must be True, False, 'auto' or a sequence of site names, got "
                f"{noncentered!r}"
            )
        if warm_start is not None and warm_start not in self._warm_starts:
            raise ValueError(
                f"warm_start must be None or one of {list(self._warm_starts)}, got {warm_start!r}"
            )
        self._warm_start = warm_start
        self._tail_layer = tail_layer
        self._noncentered = (
            noncentered if isinstance(noncentered, (bool, str)) else tuple(noncentered)
        )
        self._noncentered_sites: tuple[str, ...] = ()
        self._use_flow = True
        self._flow_factory = flow
        self._flow_kwargs = flow_kwargs
        self._init_scale = float(init_scale)
        self.num_quantile_samples = num_quantile_samples
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        self._check_model_sites(*args, **kwargs)
        super()._setup_prototype(*args, **kwargs)
        init_loc = self._init_loc()
        self._noncentered_sites = self._select_noncentered_sites(args, kwargs)
        if self._noncentered_sites:  # the affine map acts on the standardized coordinates
            init_loc = self._noncentering(args, kwargs).inv(init_loc)
        init_loc = init_loc.detach()
        init_scale = init_loc.new_full((self.latent_dim,), self._init_scale)
        if isinstance(self._flow_factory, str):
            flow = make_flow(self._flow_factory, self.latent_dim, **self._flow_kwargs)
        else:
            flow = self._flow_factory(self.latent_dim, **self._flow_kwargs)
        if isinstance(flow, nn.Module):
            scale_output_layers(flow)
            flow = flow.to(dtype=init_loc.dtype)
        self.flow = flow
        if self._tail_layer:
            self.tails = ExponentialTails(self.latent_dim).to(dtype=init_loc.dtype)
        if self._warm_start is not None:
            laplace = self._laplace_start(init_loc, args, kwargs)
            self.register_buffer("laplace_mode", None if laplace is None else laplace[0])
            self.register_buffer("laplace_tril", None if laplace is None else laplace[1])
            if laplace is not None:
                # The affine map is learned relative to the Laplace factor (a preconditioning:
                # Adam's steps are then in posterior sds, whatever the units of each coordinate).
                init_loc, init_scale = torch.zeros_like(init_loc), torch.ones_like(init_scale)
            self.scale_tril = PyroParam(
                torch.eye(self.latent_dim, dtype=init_loc.dtype, device=init_loc.device),
                self.scale_tril_constraint,
            )
        # Each parameter is assigned once: PyroModule drops the param store's value of an
        # attribute assigned again, which would undo a get_param_store().load(path).
        self.loc = nn.Parameter(init_loc)
        self.scale = PyroParam(init_scale, self.scale_constraint)

    def _select_noncentered_sites(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, ...]:
        if self._noncentered is False:
            return ()
        eligible = loc_scale_sites(self)
        if self._noncentered == "auto":
            return hierarchical_sites(self, eligible, args, kwargs)
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

    @staticmethod
    def _prototype_hide_fn(msg: dict[str, Any]) -> bool:
        """Leave out of the guide what Pyro's guides leave out, and enumerated discrete sites."""
        return prototype_hide_fn(msg) or msg["infer"].get("enumerate") == "parallel"

    def _noncentering(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LocScaleNoncentering:
        return LocScaleNoncentering(self, self._noncentered_sites, args, kwargs)

    def _check_model_sites(self, *args: Any, **kwargs: Any) -> None:
        trace = poutine.block(poutine.trace(self.model).get_trace)(*args, **kwargs)
        for name, site in trace.iter_stochastic_nodes():
            if site_is_subsample(site):
                continue
            if site["infer"].get("enumerate") == "parallel":
                continue  # summed out by TraceEnum_ELBO; the guide leaves it alone
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"{type(self).__name__} cannot fit the discrete latent site {name!r}: mark "
                    "it for enumeration (pyro.infer.config_enumerate(model), or "
                    'infer={"enumerate": "parallel"} at the site) and fit with '
                    "TraceEnum_ELBO, which sums it out; the guide then leaves it alone"
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
        """The base on the latent vector: a standard normal."""
        zeros = torch.zeros_like(self.loc)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> list[Transform]:
        """The flow (unless :meth:`without_flow`), tail, affine and non-centering layers."""
        self._use_param_store()
        layers: list[Transform] = [self.flow] if self._use_flow else []
        if self._tail_layer:
            layers.append(self.tails)
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
        mode, factor = self.laplace_mode.detach(), self.laplace_tril.detach()  # fixed, not trained
        return mode + factor @ self.loc, factor @ tril

    @contextmanager
    def without_flow(self) -> Iterator[None]:
        r"""Run the guide without its flow: the tail, affine and non-centering layers alone.

        Inside the block the flow's parameters are not used (an optimizer sees none of them)
        and no ODE is solved. An :class:`AutoCNF`'s flow starts as the identity, so a fit
        continued with the flow starts from exactly the guide fitted without it.

        Example:
            >>> import pyro
            >>> pyro.clear_param_store()
            >>> def model():
            ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            >>> guide = AutoCNF(model, hidden_dims=(8, 8))
            >>> with guide.without_flow():
            ...     draw = guide()  # builds the guide, draws without an ODE solve
            ...     transforms = guide.get_transform()
            >>> [type(t).__name__ for t in transforms]
            ['ExponentialTails', 'LowerCholeskyAffine']
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
    r"""A continuous-normalizing-flow guide: the recommended guide, with the best defaults on.

    ``AutoCNF(model)`` in a plain Pyro ``SVI`` loop starts at the Laplace approximation where
    the posterior has one, non-centers the model's hierarchical location-scale sites, gives each
    coordinate learnable exponential tails, and learns the rest with a
    :class:`~pyro_cnf.CNF` (see the module docs):

    .. math:: \theta = N\bigl(\hat u + L\, g(z_T)\bigr), \qquad
        z_T = \epsilon + \int_0^1 v(z_t, t)\,dt, \qquad \epsilon \sim \mathcal N(0, I).

    The field :math:`v` starts at zero, so a fresh guide is exactly the Gaussian of its affine
    map. Each SVI step makes one ODE solve (sampling and scoring share it) with dopri5 at
    ``rtol=1e-3, atol=1e-4``; after ``guide.eval()`` draws and their log-densities come from the
    tighter ``eval_solver`` (dopri5 at 1e-6, every draw held to it), which is what
    :func:`~pyro_cnf.importance_diagnostics` and ``Predictive`` then use.

    Arguments:
        model: A Pyro model with continuous latent sites.
        init_loc_fn: Per-site start of the Laplace search (default ``init_to_median``).
        init_scale: Initial diagonal scale where the posterior has no Laplace approximation.
        num_quantile_samples: Draws for :meth:`median` and :meth:`quantiles`.
        noncentered: ``"auto"`` (default: the sites whose loc or scale depends on other latent
            sites), ``True``, ``False`` or site names; name the sites to keep a group whose
            data dominate its prior centered.
        tail_layer: Learnable exponential tails (default ``True``); ``False`` only to compare.
        warm_start: ``"auto"`` (default), ``"laplace"`` (warn where there is no Laplace
            approximation) or ``None`` (start at the init location, diagonal scale).
        **cnf_kwargs: Options of :func:`~pyro_cnf.cnf`. Defaults: ``hidden_dims=(32, 32)``,
            ``gated=True`` (a multiplicative term that rescales coordinates),
            ``solver=Solver(rtol=1e-3, atol=1e-4)`` (training); also ``activation``, ``T``,
            ``divergence``, ``eval_solver``, ``regularization``. A wider field
            (``hidden_dims=(64, 64)``) for posteriors far from Gaussian after non-centering.

    On a posterior of tens of dimensions each step is a few hundred small tensor operations:
    call ``torch.set_num_threads(1)`` first. A second OpenMP thread gains nothing on such
    tensors, and when another process keeps a core busy it makes every operation wait.

    Example:
        >>> import pyro
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> pyro.clear_param_store()
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = AutoCNF(model)
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 5e-3}), Trace_ELBO())
        >>> loss = svi.step(torch.tensor([1.0, 2.0]))
        >>> sorted(guide(torch.tensor([1.0, 2.0])))
        ['mu']
    """

    def __init__(
        self,
        model: Callable[..., Any],
        init_loc_fn: Callable[..., Any] = init_to_median,
        init_scale: float = 0.1,
        num_quantile_samples: int = 4096,
        noncentered: bool | str | Sequence[str] = "auto",
        tail_layer: bool = True,
        warm_start: str | None = "auto",
        **cnf_kwargs: Any,
    ) -> None:
        cnf_kwargs.setdefault("hidden_dims", (32, 32))
        cnf_kwargs.setdefault("gated", True)
        cnf_kwargs.setdefault("solver", TRAINING_SOLVER)
        super().__init__(
            model,
            "cnf",
            init_loc_fn,
            init_scale,
            num_quantile_samples,
            noncentered,
            tail_layer,
            warm_start,
            **cnf_kwargs,
        )
