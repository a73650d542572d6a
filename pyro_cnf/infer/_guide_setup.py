"""The set-up pieces of the flow guides, kept apart so that the guide module reads as the guide.

:class:`LaplaceWarmStart` finds the Laplace approximation the affine map starts from (see the
guides module for the math), :class:`ParamStoreSync` makes ``pyro.get_param_store().load(path)``
restore a guide exactly (both mixins of :class:`~pyro_cnf.AutoFlow`), and
:func:`scale_output_layers` makes a discrete flow's steps independent of its width.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.util import initialize_model
from pyro.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN
from pyro.params.param_store import param_with_module_name
from pyro.util import get_rng_state, set_rng_state
from torch import Tensor, nn
from torch.distributions import biject_to
from torch.nn.utils import parametrize

from ._laplace import OUTSIDE as LAPLACE_OUTSIDE
from ._laplace import laplace_approximation

logger = logging.getLogger("pyro_cnf.infer.guides")  # where users look for the guides' messages

#: Draws from the prior that the Laplace warm start also searches from, besides the init location.
LAPLACE_PRIOR_STARTS = 3


class LaplaceWarmStart:
    """The Laplace warm start of :class:`~pyro_cnf.AutoFlow` (a mixin of the guide)."""

    # set by the guide
    model: Callable[..., Any]
    prototype_trace: Any
    _warm_start: str | None
    _init_scale: float
    _noncentered_sites: tuple[str, ...]

    def _laplace_start(
        self, init_loc: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Tensor, Tensor] | None:
        """The Laplace approximation's mode and Cholesky factor, or ``None`` (logged or warned).

        Leaves the random state as it found it (Pyro's ``initialize_model`` runs the model under
        its init strategy, which may draw), so that a fallback is the default start exactly.
        """
        rng_state = get_rng_state()
        try:
            return self._find_laplace(init_loc, args, kwargs)
        finally:
            set_rng_state(rng_state)

    def _find_laplace(
        self, init_loc: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Tensor, Tensor] | None:
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
                starts = [init_loc, *self._prior_starts(init_loc, args, kwargs)]
                results = [laplace_approximation(potential, start) for start in starts]
            # several modes: keep the one whose Gaussian holds the most mass
            result = max(results, key=lambda r: r.log_mass)
            reason = results[0].reason if result.reason is not None else None
        if reason is not None:
            message = (
                f"{type(self).__name__}(warm_start={self._warm_start!r}): no Laplace "
                f"approximation, so the default start (init location, scale "
                f"{self._init_scale:g}): {reason}"
            )
            if self._warm_start == "laplace":
                warnings.warn(message, UserWarning, stacklevel=2)
            else:
                logger.info(message)
            return None
        assert result.mode is not None and result.scale_tril is not None
        return result.mode.detach().clone(), result.scale_tril.detach().clone()

    def _prior_starts(
        self, like: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[Tensor]:
        """Extra starting points of the mode search: draws of the latent sites from the prior.

        In the affine map's output coordinates (shaped and typed ``like`` the init location);
        none where the prior cannot be sampled (an improper prior) or a draw is not finite.
        """
        starts = []
        for _ in range(LAPLACE_PRIOR_STARTS):
            try:
                with torch.no_grad():
                    trace = poutine.block(poutine.trace(self.model).get_trace)(*args, **kwargs)
                    parts = []
                    for name, site in self.prototype_trace.iter_stochastic_nodes():
                        value = trace.nodes[name]["value"]
                        unconstrained = biject_to(site["fn"].support).inv(value)
                        parts.append(unconstrained.reshape(-1))
                    start = torch.cat(parts).to(like)
                    if self._noncentered_sites:
                        start = self._noncentering(args, kwargs).inv(start)
            except (NotImplementedError, *LAPLACE_OUTSIDE):
                continue
            if start.shape == like.shape and torch.isfinite(start).all():
                starts.append(start)
        return starts

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


class ParamStoreSync:
    """Restoring from Pyro's param store for :class:`~pyro_cnf.AutoFlow` (a mixin of the guide)."""

    def _use_param_store(self) -> None:
        """Use the values in Pyro's param store, so that ``get_param_store().load(path)`` restores the guide.

        ``PyroModule`` reads its ``PyroParam`` attributes from the store, but keeps its own plain
        ``nn.Parameter`` attributes (``loc``) and the parameters of plain submodules (the
        flow, the tails) when the store holds other tensors under their names: here the stored
        tensors replace them. The fixed Laplace factor is kept in the store too (it is not
        trained: it is used detached).
        """
        if not self._pyro_context.active:
            return
        stored = dict(pyro.get_param_store().named_parameters())  # unconstrained values
        for name, value in list(self._parameters.items()):
            if not name.endswith("_unconstrained"):  # PyroParams read the store themselves
                self._parameters[name] = stored.get(self._pyro_get_fullname(name), value)
        for name, module in list(self._modules.items()):
            prefix = self._pyro_get_fullname(name)
            if any(
                stored.get(param_with_module_name(prefix, param_name), param) is not param
                for param_name, param in module.named_parameters()
            ):
                pyro.module(prefix, module, update_module_params=True)
        synced = self.__dict__.setdefault("_laplace_in_store", {})
        for name in ("laplace_mode", "laplace_tril"):
            value = self._buffers.get(name)
            if value is None:
                continue
            in_store = pyro.param(self._pyro_get_fullname(name), lambda v=value: v.clone())
            with torch.no_grad():
                if in_store is not synced.get(name):  # registered now, or loaded into the store
                    value.copy_(in_store)
                    synced[name] = in_store
                elif not torch.equal(in_store, value):  # loaded by load_state_dict
                    in_store.copy_(value)


class _PerInput(nn.Module):
    """``weight -> weight / fan_in`` (a parametrization of a layer's weight)."""

    def __init__(self, fan_in: int) -> None:
        super().__init__()
        self.fan_in = fan_in

    def forward(self, weight: Tensor) -> Tensor:
        return weight / self.fan_in


def scale_output_layers(flow: nn.Module) -> None:
    """Divide the output layer of every conditioning network of ``flow`` by its fan-in.

    Adam moves every weight by about the learning rate whatever its gradient, so a layer with
    ``fan_in`` inputs moves its outputs (a coupling's or an autoregressive layer's shift and
    log-scale) by about ``lr * fan_in`` per step: at lr 0.01 with a few hundred hidden units,
    several posterior sds at once. A masked autoregressive guide of a 103-dimensional
    stochastic-volatility posterior diverged within 15 steps. Divided by the fan-in, a step moves
    them by about the learning rate, in the warm start's units of posterior sds, at any width
    (and the flow starts nearer the identity). Pyro's networks have no such option, hence this
    parametrization.
    """
    for module in flow.modules():
        if isinstance(module, (ConditionalAutoRegressiveNN, ConditionalDenseNN)):
            last = module.layers[-1]
            parametrize.register_parametrization(last, "weight", _PerInput(last.weight.shape[1]))
