r"""An amortized flow guide for models with a latent per group, fitted on subsamples of the groups.

A hierarchical model has global latents :math:`\phi` (outside a plate) and local latents
:math:`\theta_i`, one per member :math:`i` of a plate of :math:`N` groups, users or documents. The
guide

.. math::
    q(\phi, \theta_{1:N}) = q(\phi) \prod_{i=1}^N q(\theta_i \mid c_i, \phi)

gives the globals a joint :class:`~pyro_cnf.AutoCNF` and every group the *same* conditional
flow, read at the group's context :math:`c_i` (its data or a summary of it) and at the drawn
globals (in a hierarchical model :math:`\theta_i` depends on them). Its size does not grow with
:math:`N`, so the plate can be subsampled: a step draws :math:`B` groups, and the ELBO scales
their terms by :math:`N / B` as for any subsampled plate. The conditional flow is

.. math::
    \theta_i = T\bigl(m(x_i) + \sigma(x_i) \odot F(\epsilon_i;\, x_i)\bigr), \qquad
    x_i = (\bar c_i, u(\phi)), \quad \epsilon_i \sim \mathcal N(0, I),

an amortized Gaussian (:math:`m` a linear map plus a residual network, :math:`\log\sigma` a
network) after a conditional CNF :math:`F` that starts as the identity; :math:`\bar c_i` is the
context standardized by the first subsample's mean and scale, :math:`u(\phi)` the globals in
unconstrained coordinates, :math:`T` the map to each local site's support. Pyro's autoguides
assume a fixed latent dimension and refuse local latents under subsampling (except
``AutoNormal``, which keeps a mean field per group and so cannot share anything across groups),
hence this guide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median, init_to_value
from pyro.infer.mcmc.util import initialize_model
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import site_is_subsample
from pyro.util import get_rng_state, set_rng_state
from torch import Tensor, nn
from torch.distributions import biject_to

from ..nn import MLPField
from ..transforms.continuous import ConditionalCNF
from ._laplace import OUTSIDE as LAPLACE_OUTSIDE
from ._laplace import laplace_approximation
from .guides import TRAINING_SOLVER, AutoCNF

logger = logging.getLogger(__name__)

__all__ = ["AutoAmortizedCNF"]


class _PlateFound(Exception):
    def __init__(self, fn: _Subsample, subsample: Tensor | None) -> None:
        super().__init__()
        self.size, self.subsample_size, self.subsample = fn.size, fn.subsample_size, subsample


class _FindPlate(Messenger):
    """Stop the model at the named plate and report its size, subsample size and indices."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def _pyro_sample(self, msg: Any) -> None:
        if isinstance(msg["fn"], _Subsample) and msg["name"] == self.name:
            raise _PlateFound(msg["fn"], msg["value"])


class _AmortizedAffine(nn.Module):
    """``z -> m(x) + exp(s(x)) * z`` with ``m`` linear plus a residual MLP and ``s`` an MLP."""

    def __init__(
        self, cond_dim: int, dim: int, hidden_dims: Sequence[int], loc: Tensor, log_scale: float
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, dim)
        nn.init.zeros_(self.linear.weight)
        with torch.no_grad():
            self.linear.bias.copy_(loc)
        layers: list[nn.Module] = []
        width = cond_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        out = nn.Linear(width, 2 * dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)
        self.log_scale = nn.Parameter(torch.full((dim,), float(log_scale)))

    def forward(self, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self.net(x).chunk(2, dim=-1)
        log_scale = log_scale + self.log_scale
        return self.linear(x) + shift + log_scale.exp() * z, log_scale.sum(-1)


class _GlobalCNF(AutoCNF):
    """The globals' AutoCNF, its warm start given by the amortized guide (see there)."""

    def __init__(self, model: Callable[..., Any], start: Callable[[], Any], **options: Any) -> None:
        super().__init__(model, **options)
        self._start = start

    def _laplace_start(
        self, init_loc: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Tensor, Tensor] | None:
        return self._start()


class AutoAmortizedCNF(AutoGuide):
    r"""A guide for models with local latents in a (subsampled) plate: see the module docs.

    The global latents (every latent site outside ``plate``) get an :class:`~pyro_cnf.AutoCNF`;
    the local latents (those inside ``plate``) a conditional flow shared by all groups, read at
    ``context(idx, *args, **kwargs)`` and at the drawn globals. The guide enters ``plate`` with
    the model's size and subsample size (the model then reuses the guide's indices), so it
    drops into a plain Pyro ``SVI`` loop on minibatches, with vectorized particles too; called
    for a model without subsampling (all groups), e.g. by
    :func:`~pyro_cnf.importance_diagnostics`, it draws every group.

    Use it when there are many groups (too many for a full-data step, or for a parameter per
    group), when the groups' posteriors are alike given their data (amortization shares what
    one group teaches across all), and when the posterior of a group depends on the globals
    (a mean-field guide of the local latents misses that). With few groups and no subsampling,
    :class:`~pyro_cnf.AutoCNF` of the whole model is exact where this guide amortizes.

    What ``context`` should hold: whatever the local posterior depends on, per group, as a fixed
    length row: the group's observations when they have a fixed count (as in the example), else
    sufficient statistics (count, sums, means of the data and of covariates). It is called with
    the indices of the subsample (a ``LongTensor``) and the model's arguments.

    Arguments:
        model: A Pyro model whose local latent sites sit in ``plate`` (the rightmost batch
            dimension, ``dim=-1``, no other plate around them).
        plate: Name of the plate that holds the local latents.
        context: ``context(idx, *args, **kwargs) -> Tensor`` of shape ``(len(idx), c)``.
        init_loc_fn: Start of the local and global locations (default ``init_to_median``).
        init_scale: Initial scale of every local latent (unconstrained coordinates).
        hidden_dims: Widths of the local networks and of the local CNF's field.
        local_cnf: Put a conditional CNF under the amortized Gaussian (default ``True``);
            ``False`` leaves an amortized Gaussian, enough when the local posteriors are
            Gaussian given their context and the globals.
        warm_start: ``"auto"`` (default): start the globals at the Laplace approximation of
            the joint posterior of the globals and the first subsample's locals (the model's
            own N / B scaling makes its globals' block the right curvature, so that the
            optimizer's steps are in posterior sds), where there is one; ``None``: at the init
            location with scale ``init_scale``.
        **global_options: Options of the globals' :class:`~pyro_cnf.AutoCNF` (``noncentered``,
            ``tail_layer``, ``hidden_dims``, ...; ``noncentered`` defaults to ``False``).

    Raises:
        ValueError: When first run: no latent site in ``plate``, a local site in another plate
            or at another dimension, a discrete local site, or a context of the wrong shape.

    Example:
        >>> import pyro
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> pyro.clear_param_store()
        >>> y = torch.randn(500, 3) + 1.0
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("groups", len(y), subsample_size=50) as idx:
        ...         theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        ...         pyro.sample("y", dist.Normal(theta[:, None], 1.0).to_event(1), obs=y[idx])
        >>> guide = AutoAmortizedCNF(model, "groups", lambda idx, y: y[idx])
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
        >>> loss = svi.step(y)
        >>> {name: tuple(value.shape) for name, value in guide(y).items()}
        {'mu': (), 'theta': (50,)}
    """

    def __init__(
        self,
        model: Callable[..., Any],
        plate: str,
        context: Callable[..., Tensor],
        *,
        init_loc_fn: Callable[..., Any] = init_to_median,
        init_scale: float = 0.1,
        hidden_dims: Sequence[int] = (32, 32),
        local_cnf: bool = True,
        warm_start: str | None = "auto",
        **global_options: Any,
    ) -> None:
        if not isinstance(plate, str):
            raise TypeError(f"plate must be the name of a plate, got {plate!r}")
        if not callable(context):
            raise TypeError(
                f"context must be callable as context(idx, *args, **kwargs), got {context!r}"
            )
        if not (isinstance(init_scale, (int, float)) and init_scale > 0):
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
        super().__init__(model)
        self.plate_name = plate
        self.context_fn = context
        self.init_loc_fn = init_loc_fn
        self._init_scale = float(init_scale)
        self._hidden_dims = tuple(hidden_dims)
        self._local_cnf = local_cnf
        if warm_start not in ("auto", None):
            raise ValueError(f"warm_start must be 'auto' or None, got {warm_start!r}")
        if "warm_start" in global_options:
            raise TypeError("give warm_start to AutoAmortizedCNF itself, not as a global option")
        global_options.setdefault("noncentered", False)
        global_options.setdefault("init_scale", init_scale)
        self._warm_start = warm_start
        self._global_options = global_options

    # ----------------------------------------------------------------- set-up
    def _is_local(self, msg: Any) -> bool:
        return any(frame.name == self.plate_name for frame in msg["cond_indep_stack"])

    def _global_model(self, *args: Any, **kwargs: Any) -> Any:
        with poutine.block(hide_fn=self._is_local):
            return self.model(*args, **kwargs)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        model = InitMessenger(self.init_loc_fn)(self.model)
        trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
        self.prototype_trace = trace
        self._prototype_frames = {}
        self.plates: dict[str, Any] = {}  # the globals' guide reads its plates here (none)
        local, global_ = [], []
        for name, site in trace.iter_stochastic_nodes():
            if site_is_subsample(site):
                continue
            (local if self._is_local(site) else global_).append((name, site))
        if not local:
            raise ValueError(
                f"AutoAmortizedCNF: the model has no latent site in plate {self.plate_name!r}"
            )
        self._local_sites: list[tuple[str, torch.Size, Any, int]] = []
        values = []
        for name, site in local:
            frames = [f for f in site["cond_indep_stack"] if f.vectorized]
            if len(frames) != 1 or frames[0].dim != -1:
                where = ", ".join(f"{f.name!r} (dim {f.dim})" for f in frames)
                raise ValueError(
                    f"AutoAmortizedCNF: local site {name!r} is in the plates {where}; it must "
                    f"be in plate {self.plate_name!r} at dim=-1 and in no other plate"
                )
            if site["fn"].support.is_discrete:
                raise ValueError(f"AutoAmortizedCNF cannot fit the discrete local site {name!r}")
            event = site["fn"].event_shape
            support = site["fn"].support
            u = biject_to(support).inv(site["value"]).reshape(site["value"].shape[0], -1)
            self._local_sites.append((name, event, support, u.shape[-1]))
            values.append(u)
        num_groups = frames[0].size
        local_u = torch.cat(values, -1)
        idx = trace.nodes[self.plate_name]["value"] if self.plate_name in trace.nodes else None
        if idx is None:
            idx = torch.arange(num_groups)
        context = self._context(idx, args, kwargs)
        self.register_buffer("context_loc", context.mean(0).detach())
        scale = context.std(0) if context.shape[0] > 1 else torch.ones_like(context[0])
        self.register_buffer("context_scale", scale.detach().clamp_min(1e-6))
        self._global_sites = [
            (name, site["fn"].support, site["value"].dim()) for name, site in global_
        ]
        global_dim = sum(biject_to(s["fn"].support).inv(s["value"]).numel() for _, s in global_)
        if global_:
            start = self._joint_laplace(trace, global_, local, args, kwargs)
            self.global_guide = _GlobalCNF(
                self._global_model,
                lambda: start,
                init_loc_fn=self.init_loc_fn,
                warm_start="auto" if start is not None else None,
                **self._global_options,
            )
        dtype = local_u.dtype
        cond_dim = context.shape[-1] + global_dim
        local_dim = local_u.shape[-1]
        self.affine = _AmortizedAffine(
            cond_dim,
            local_dim,
            self._hidden_dims,
            local_u.mean(0).detach(),
            torch.tensor(self._init_scale).log().item(),
        ).to(dtype=dtype, device=local_u.device)
        if self._local_cnf:
            field = MLPField(local_dim, self._hidden_dims, context_dim=cond_dim)
            self.flow = ConditionalCNF(local_dim, cond_dim, field=field, solver=TRAINING_SOLVER).to(
                dtype=dtype, device=local_u.device
            )

    def _joint_laplace(
        self,
        trace: Any,
        global_: list[tuple[str, Any]],
        local: list[tuple[str, Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[Tensor, Tensor] | None:
        """Mode and Cholesky factor of the globals' block of the subsample joint's Laplace."""
        if self._warm_start is None or self._global_options.get("noncentered"):
            return None
        sites = [*global_, *local]
        fixed = {  # the prototype's subsample of every subsampled plate
            name: site["value"] for name, site in trace.nodes.items() if site_is_subsample(site)
        }
        model = poutine.condition(self.model, data=fixed)
        initial = {name: site["value"].detach() for name, site in sites}
        rng_state = get_rng_state()
        try:
            with poutine.block(), torch.enable_grad():
                _, potential_fn, _, _ = initialize_model(
                    model,
                    args,
                    kwargs,
                    max_plate_nesting=1,
                    init_strategy=init_to_value(values=initial),
                    initial_params={
                        name: biject_to(site["fn"].support).inv(site["value"].detach())
                        for name, site in sites
                    },
                )
                shapes = [
                    (name, biject_to(s["fn"].support).inv(s["value"]).shape) for name, s in sites
                ]
                sizes = [int(torch.Size(shape).numel()) for _, shape in shapes]

                def potential(u: Tensor) -> Tensor:
                    parts = u.split(sizes)
                    params = {
                        name: p.reshape(shape)
                        for (name, shape), p in zip(shapes, parts, strict=True)
                    }
                    return potential_fn(params)

                init = torch.cat(
                    [
                        biject_to(s["fn"].support).inv(s["value"].detach()).reshape(-1)
                        for _, s in sites
                    ]
                )
                result = laplace_approximation(potential, init)
        except (NotImplementedError, *LAPLACE_OUTSIDE) as error:
            logger.info("AutoAmortizedCNF: no Laplace start for the globals: %s", error)
            return None
        finally:
            set_rng_state(rng_state)
        if result.reason is not None:
            logger.info("AutoAmortizedCNF: no Laplace start for the globals: %s", result.reason)
            return None
        assert result.mode is not None and result.scale_tril is not None
        g = sum(sizes[: len(global_)])
        block = result.scale_tril[:g] @ result.scale_tril[:g].T
        return result.mode[:g].detach().clone(), torch.linalg.cholesky(block).detach()

    def _context(self, idx: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        context = self.context_fn(idx, *args, **kwargs)
        if not isinstance(context, Tensor) or context.dim() != 2 or context.shape[0] != len(idx):
            shape = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(
                f"context(idx, ...) must return a tensor of shape (len(idx), c) = ({len(idx)}, c), "
                f"one row per group in the subsample; got {shape}"
            )
        if not torch.isfinite(context).all():
            raise ValueError("context(idx, ...) returned NaN or inf")
        return context

    def _find_plate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _PlateFound:
        """The model's plate as this call makes it (size, subsample size, given indices)."""
        try:
            with poutine.block(), _FindPlate(self.plate_name):
                self.model(*args, **kwargs)
        except _PlateFound as found:
            return found
        raise ValueError(f"AutoAmortizedCNF: the model has no plate named {self.plate_name!r}")

    def _check_prototype(self, part_trace: Any) -> None:
        """The globals' guide sees the globals only: nothing to reconcile."""

    # ---------------------------------------------------------------- drawing
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Draw the globals, then the locals of the plate's subsample (all groups without one)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        result: dict[str, Tensor] = {}
        flat_globals = []
        if self._global_sites:
            result.update(self.global_guide(*args, **kwargs))
            for name, support, site_dim in self._global_sites:
                u = biject_to(support).inv(result[name])
                batch = u.shape[: u.dim() - site_dim]
                flat_globals.append(u.reshape(*batch, -1))
        found = self._find_plate(args, kwargs)
        with pyro.plate(
            self.plate_name,
            found.size,
            subsample_size=found.subsample_size,
            subsample=found.subsample,
            dim=-1,
        ) as idx:
            context = (self._context(idx, args, kwargs) - self.context_loc) / self.context_scale
            if flat_globals:
                g = (
                    torch.cat(torch.broadcast_tensors(*flat_globals), -1)
                    if len(flat_globals) > 1
                    else flat_globals[0]
                )
                batch = torch.broadcast_shapes(g.shape[:-1], context.shape[:-1])
                x = torch.cat(
                    [g.expand(*batch, g.shape[-1]), context.expand(*batch, context.shape[-1])], -1
                )
            else:
                x = context
            eps = torch.randn(
                *x.shape[:-1], self.affine.linear.out_features, dtype=x.dtype, device=x.device
            )
            log_q = dist.Normal(0.0, 1.0).log_prob(eps).sum(-1)
            if self._local_cnf:
                transform = self.flow.condition(x)
                z = transform(eps)
                log_q = log_q - transform.log_abs_det_jacobian(eps, z)
            else:
                z = eps
            u, log_scale = self.affine(z, x)
            log_q = log_q - log_scale
            start = 0
            for k, (name, event, support, size) in enumerate(self._local_sites):
                piece = u[..., start : start + size].reshape(*u.shape[:-1], *event)
                start += size
                to_support = biject_to(support)
                value = to_support(piece)
                if poutine.get_mask() is False:
                    log_density: Tensor | float = 0.0
                else:
                    ladj = to_support.log_abs_det_jacobian(piece, value)
                    ladj = (
                        ladj.reshape(*u.shape[:-1], -1).sum(-1)
                        if ladj.dim() > u.dim() - 1
                        else ladj
                    )
                    log_density = (log_q if k == 0 else 0.0) - ladj
                result[name] = pyro.sample(
                    name, dist.Delta(value, log_density=log_density, event_dim=len(event))
                )
        return result
