r"""Non-centering inside a guide: the model's own loc-scale conditionals as the guide's last layer.

For a latent site :math:`\theta \sim F(\mathrm{loc}, \mathrm{scale})` of a location-scale family
on the real line (Normal, Student-t, Cauchy, Laplace, ...), where loc and scale are computed by the
model from the sites sampled before it, the guide can work in the standardized coordinate
:math:`\tilde\theta = (\theta - \mathrm{loc}) / \mathrm{scale}` and map back with one pass of the
model:

.. math:: \theta = \mathrm{loc}(\text{earlier sites}) + \mathrm{scale}(\text{earlier sites})\,
    \tilde\theta, \qquad \log\lvert\det\rvert = \textstyle\sum \log \mathrm{scale}.

This is the non-centered parametrization of a hierarchical model, done by the guide (the model is
left as written): Pyro's :class:`~pyro.infer.reparam.LocScaleReparam` does the same to the model
instead, which changes its sites. Because the map is the model's own, it is exact at every scale,
down the neck of a funnel where no learned layer has seen a draw (Gorinova, Moore & Hoffman,
"Automatic reparameterisation of probabilistic programs", ICML 2020,
`arXiv:1906.03028 <https://arxiv.org/abs/1906.03028>`_, and the embedded-model flows of
Silvestri et al., ICLR 2022, `arXiv:2110.06021 <https://arxiv.org/abs/2110.06021>`_, build the
same map into the model or the flow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.distributions import Distribution, Independent, Transform, biject_to

if TYPE_CHECKING:
    from pyro.infer.autoguide import AutoContinuous

__all__ = ["LocScaleNoncentering", "hierarchical_sites", "loc_scale_sites"]


def _loc_scale(fn: Distribution) -> tuple[Tensor, Tensor] | None:
    """``(loc, scale)`` of a location-scale distribution on the real line, else ``None``."""
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    loc, scale = getattr(fn, "loc", None), getattr(fn, "scale", None)
    if not (isinstance(loc, Tensor) and isinstance(scale, Tensor)):
        return None
    if fn.support is not constraints.real:
        return None
    return loc, scale


def loc_scale_sites(guide: AutoContinuous) -> tuple[str, ...]:
    """The latent sites of the guide's prototype trace that can be non-centered, in order."""
    return tuple(
        name
        for name, site in guide.prototype_trace.iter_stochastic_nodes()
        if _loc_scale(site["fn"]) is not None
    )


class _DependencyProbe(Messenger):
    """Give each latent site a fresh leaf tensor as value; record the candidates' loc and scale."""

    def __init__(self, values: dict[str, Tensor], candidates: frozenset[str]) -> None:
        super().__init__()
        self.values = values
        self.candidates = candidates
        self.leaves: dict[str, Tensor] = {}
        self.loc_scales: dict[str, tuple[Tensor, Tensor]] = {}

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        name = msg["name"]
        if name not in self.values or msg["is_observed"]:
            return
        loc_scale = _loc_scale(msg["fn"]) if name in self.candidates else None
        if loc_scale is not None:
            self.loc_scales[name] = loc_scale
        leaf = self.values[name].detach().clone().requires_grad_()
        self.leaves[name] = leaf
        msg["value"] = leaf
        msg["is_observed"] = True


def hierarchical_sites(
    guide: AutoContinuous,
    candidates: Sequence[str],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
) -> tuple[str, ...]:
    """The candidate sites whose loc or scale depends on the value of another latent site.

    One pass of the model at the prototype trace's values, each latent value a leaf tensor;
    a site qualifies when autograd connects its loc or scale to another site's leaf. Sites of a
    fixed prior (a regression coefficient's ``Normal(0, 10)``) gain nothing from non-centering
    inside the guide and are left out.
    """
    values = {name: site["value"] for name, site in guide.prototype_trace.iter_stochastic_nodes()}
    probe = _DependencyProbe(values, frozenset(candidates))
    with torch.enable_grad(), poutine.block(), probe:
        guide.model(*args, **({} if kwargs is None else kwargs))
    chosen = []
    for name in candidates:
        if name not in probe.loc_scales:
            continue
        outputs = [t for t in probe.loc_scales[name] if t.requires_grad]
        others = [leaf for other, leaf in probe.leaves.items() if other != name]
        if not outputs or not others:
            continue
        grads = torch.autograd.grad(
            outputs,
            others,
            grad_outputs=[torch.ones_like(t) for t in outputs],
            retain_graph=True,
            allow_unused=True,
        )
        if any(g is not None for g in grads):
            chosen.append(name)
    return tuple(chosen)


class _Standardize(Messenger):
    """Set each latent site's value from the guide's vector, mapping loc-scale sites on the way.

    ``inputs`` holds each latent's unconstrained value in the *source* coordinates: the
    standardized ones (``forward=True``) or the model's (``forward=False``). The handler records
    each site's value in the other coordinates and the log-scale of the mapped sites.
    """

    def __init__(self, inputs: dict[str, Tensor], sites: frozenset[str], forward: bool) -> None:
        super().__init__()
        self.inputs = inputs
        self.sites = sites
        self.forward = forward
        self.outputs: dict[str, Tensor] = {}
        self.log_scales: dict[str, Tensor] = {}

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        name = msg["name"]
        if name not in self.inputs or msg["is_observed"]:
            return
        u = self.inputs[name]
        if name in self.sites:
            loc_scale = _loc_scale(msg["fn"])
            if loc_scale is None:
                raise ValueError(
                    f"non-centering: site {name!r} was a location-scale site on the real line in "
                    f"the prototype trace, but now has {type(msg['fn']).__name__}"
                )
            loc, scale = loc_scale
            shape = torch.broadcast_shapes(u.shape, loc.shape, scale.shape)
            if shape != u.shape:
                raise ValueError(
                    f"non-centering: the loc/scale of site {name!r} have shapes "
                    f"{tuple(loc.shape)}/{tuple(scale.shape)}, wider than its value "
                    f"{tuple(u.shape)}; non-center only sites whose loc and scale fit their value"
                )
            value = loc + scale * u if self.forward else u
            self.outputs[name] = value if self.forward else (u - loc) / scale
            self.log_scales[name] = scale.log().expand(shape)
        else:
            value = biject_to(msg["fn"].support)(u)
            self.outputs[name] = u
        msg["value"] = value
        msg["is_observed"] = True


class LocScaleNoncentering(Transform):
    r"""Standardized latent vector -> the model's unconstrained latent vector, by running the model.

    Built by :class:`~pyro_cnf.AutoFlow` (``noncentered=``) as the last transform of the guide;
    both directions make one pass of the model (its observed sites are not scored), hidden from
    Pyro's handlers outside. Batch dimensions of any kind (particles, draws) are moved to the left
    of the model's plates for that pass.

    Arguments:
        guide: The (set-up) ``AutoContinuous`` guide whose latent layout to use.
        sites: Names of the location-scale sites to map (see :func:`loc_scale_sites`).
        args: Positional arguments of the model.
        kwargs: Keyword arguments of the model.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(
        self,
        guide: AutoContinuous,
        sites: Sequence[str],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(cache_size=1)
        self.guide = guide
        self.sites = frozenset(sites)
        self.args = args
        self.kwargs = {} if kwargs is None else kwargs
        frames = getattr(guide, "_prototype_frames", {})
        self._plate_dims = max((-frame.dim for frame in frames.values()), default=0)
        self._last_ladj: tuple[Tensor, Tensor, Tensor] | None = None

    def _pass(self, v: Tensor, forward: bool) -> tuple[Tensor, Tensor]:
        """(the other coordinates, log|det| of the forward map), both for the batch of ``v``."""
        batch = v.shape[:-1]
        padded = v.reshape(batch + (1,) * self._plate_dims + v.shape[-1:])
        inputs = {site["name"]: u for site, u in self.guide._unpack_latent(padded)}
        handler = _Standardize(inputs, self.sites, forward)
        with poutine.block(), handler:
            self.guide.model(*self.args, **self.kwargs)
        missing = set(inputs) - set(handler.outputs)
        if missing:
            raise ValueError(
                f"non-centering: the model did not sample {sorted(missing)} when run again; "
                "its latent sites must not depend on randomness outside Pyro"
            )
        parts, ladj = [], v.new_zeros(batch)
        for name in inputs:
            out = handler.outputs[name]
            parts.append(out.reshape(batch + (-1,)))
            if name in handler.log_scales:
                ladj = ladj + handler.log_scales[name].reshape(batch + (-1,)).sum(-1)
        return torch.cat(parts, dim=-1), ladj

    def _call(self, x: Tensor) -> Tensor:
        y, ladj = self._pass(x, forward=True)
        self._last_ladj = (x, y, ladj)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        x, ladj = self._pass(y, forward=False)
        self._last_ladj = (x, y, ladj)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\sum \log\mathrm{scale}` over the mapped sites, shape ``x.shape[:-1]``."""
        last = self._last_ladj
        if last is not None and last[0] is x and last[1] is y:
            return last[2]
        return self._pass(x, forward=True)[1]
