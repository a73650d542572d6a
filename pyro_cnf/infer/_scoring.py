"""Scoring guide draws under the model: the machinery behind :func:`~pyro_cnf.importance_draws`.

One guide run replayed through the model gives the structure (plate nesting, each draw's shape,
the observed sites); then batches of draws are scored in one vectorized pass
(Pyro's ``vectorized_importance_weights``), or one model run per draw where the model is not
vectorizable over a leading draw dimension or enumerates discrete sites (summed out by
``TraceEnum_ELBO`` with a point-mass guide). Sites in a subsampled plate are refused: their
log-densities are a minibatch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.infer.importance import vectorized_importance_weights
from pyro.infer.util import plate_log_prob_sum
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch import Tensor


def _is_draw(site: dict[str, Any]) -> bool:
    """A latent sample site or a ``pyro.deterministic`` site (what a posterior draw holds)."""
    if site["type"] != "sample" or site_is_subsample(site) or _is_enumerated(site):
        return False
    return not site["is_observed"] or site["infer"].get("_deterministic", False)


def _is_enumerated(site: dict[str, Any]) -> bool:
    """A latent site marked for parallel enumeration (``config_enumerate``): summed out, not drawn."""
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and site["infer"].get("enumerate") == "parallel"
    )


def _is_likelihood(site: dict[str, Any]) -> bool:
    """An observed sample site that scores data: not deterministic, not a ``pyro.factor``."""
    return (
        site["type"] == "sample"
        and site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic", False)
        and not site["infer"].get("is_auxiliary", False)
    )


def _check_full_data(trace: Any, role: str) -> None:
    """Refuse a trace with a sample site in a subsampled plate: its log-density is not the model's.

    A subsampled plate scales its sites' log-densities by ``size / subsample_size``, so a
    log-weight built from one minibatch is a noisy estimate of a different quantity (log Z from
    10 of 100 data points was off by 10 to 28 nats, with a tiny standard error).
    """
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        for frame in site["cond_indep_stack"]:
            if frame.full_size is not None and frame.full_size != frame.size:
                raise ValueError(
                    f"{role} site {name!r} is in plate {frame.name!r} subsampled to "
                    f"{frame.size} of {frame.full_size}: importance weights, log-evidence and "
                    "pointwise log-likelihoods need the full-data model; score the model "
                    "without subsampling (subsample_size=None, or all the data passed in)"
                )


def _check_pointwise(name: str, site: dict[str, Any]) -> None:
    """Refuse observed sites whose pointwise log-likelihood is not one term per data point."""
    scale, mask = site["scale"], site["mask"]
    if not (isinstance(scale, (int, float)) and scale == 1.0):
        raise ValueError(
            f"observed site {name!r} is scaled (poutine.scale): its pointwise log-likelihood "
            "does not match the observed data; pass log_likelihood=False"
        )
    if mask is not None and not (mask is True or (isinstance(mask, Tensor) and bool(mask.all()))):
        raise ValueError(
            f"observed site {name!r} is masked: its pointwise log-likelihood is undefined on "
            "the masked entries"
        )


@dataclass
class _Structure:
    nesting: int  # plate dims used by model and guide
    shapes: dict[str, tuple[int, ...]]  # each draw's shape (latent and deterministic sites)
    deterministic: tuple[str, ...]  # the pyro.deterministic sites among them
    event_dims: dict[str, int]  # each draw site's number of event dims
    observed: dict[str, Tensor]  # each observed (likelihood) site's value
    log_lik_shapes: dict[str, tuple[int, ...]]  # each observed site's pointwise log-prob shape
    enumerated: tuple[str, ...]  # discrete sites the model enumerates (summed out of log p)


def model_structure(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: Any,
    kwargs: Any,
    log_likelihood: bool,
) -> _Structure:
    """From one guide run replayed through the model: plate nesting, draw and data shapes."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    nesting = max(
        (
            -frame.dim
            for trace in (guide_trace, model_trace)
            for site in trace.nodes.values()
            for frame in site.get("cond_indep_stack", ())
            if frame.vectorized
        ),
        default=0,
    )
    _check_full_data(guide_trace, "guide")
    _check_full_data(model_trace, "model")
    shapes = {
        name: tuple(site["value"].shape)
        for name, site in model_trace.nodes.items()
        if _is_draw(site)
    }
    observed = {name: site for name, site in model_trace.nodes.items() if _is_likelihood(site)}
    enumerated = tuple(n for n, site in model_trace.nodes.items() if _is_enumerated(site))
    if enumerated and log_likelihood:
        raise ValueError(
            f"the model enumerates {list(enumerated)} (config_enumerate): a pointwise "
            "log-likelihood would need them summed out per data point, which is not done here; "
            "pass log_likelihood=False (importance weights sum them out)"
        )
    if log_likelihood:
        for name, site in observed.items():
            _check_pointwise(name, site)
        model_trace.compute_log_prob(lambda name, site: name in observed)
    return _Structure(
        nesting,
        shapes,
        tuple(n for n in shapes if model_trace.nodes[n]["infer"].get("_deterministic", False)),
        {n: len(model_trace.nodes[n]["fn"].event_shape) for n in shapes},
        {name: site["value"].detach() for name, site in observed.items()},
        {
            name: tuple(site["unscaled_log_prob"].shape)
            for name, site in observed.items()
            if log_likelihood
        },
        enumerated,
    )


def _per_draw(trace: Any, symbol: str | None, size: int) -> Tensor:
    """The trace's (scaled) log-density of each of the ``size`` vectorized draws, in float64."""
    if size == 1:  # Pyro packs away the size-1 particle dimension
        return trace.log_prob_sum().reshape(1).double()
    return plate_log_prob_sum(trace, symbol).reshape(size).double()


class NotVectorized(Exception):
    """The model gave a wrong shape or a wrong value under a leading draw dimension."""


_Chunk = tuple[Tensor, Tensor, dict[str, Tensor]]  # log p, log q, {site or "log_lik:site": value}


def _vectorize(fn: Callable[..., Any], size: int, nesting: int) -> Callable[..., Any]:
    def vectorized(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate("num_particles_vectorized", size, dim=-(nesting + 1)):
            return fn(*args, **kwargs)

    return vectorized


def _reshaped(name: str, value: Tensor, size: int, shape: tuple[int, ...]) -> Tensor:
    if value.numel() != size * math.prod(shape):
        raise NotVectorized(
            f"site {name!r} has shape {tuple(value.shape)} under {size} draws, not "
            f"({size}, *{shape})"
        )
    return value.reshape(size, *shape)


def vectorized_chunk(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: Any,
    kwargs: Any,
    size: int,
    structure: _Structure,
) -> _Chunk:
    """``size`` draws scored in one vectorized pass (Pyro's ``vectorized_importance_weights``)."""
    try:
        _, model_trace, guide_trace = vectorized_importance_weights(
            model, guide, *args, num_samples=size, max_plate_nesting=structure.nesting, **kwargs
        )
    except (RuntimeError, ValueError) as error:  # a shape error inside the model
        raise NotVectorized(str(error).splitlines()[0]) from error
    symbol = guide_trace.plate_to_symbol.get("num_particles_vectorized")
    values = {  # the particle dimension leads
        name: _reshaped(name, model_trace.nodes[name]["value"], size, shape)
        for name, shape in structure.shapes.items()
    }
    for name, shape in structure.log_lik_shapes.items():
        unscaled = model_trace.nodes[name]["unscaled_log_prob"]
        values[f"log_lik:{name}"] = _reshaped(name, unscaled, size, shape)
    return _per_draw(model_trace, symbol, size), _per_draw(guide_trace, symbol, size), values


def _score_one(
    model: Callable[..., Any],
    args: Any,
    kwargs: Any,
    latent: dict[str, Tensor],
    structure: _Structure,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One draw's log joint, deterministic sites and pointwise log-likelihood, by one model run.

    With enumerated sites the log joint is summed over them (:func:`_marginal_log_joint`); the
    model run then only gives the deterministic sites.
    """
    trace = poutine.trace(poutine.condition(model, data=latent)).get_trace(*args, **kwargs)
    values = {name: trace.nodes[name]["value"] for name in structure.deterministic}
    if structure.enumerated:
        return _marginal_log_joint(model, args, kwargs, latent, structure), values
    trace.compute_log_prob()
    for name in structure.log_lik_shapes:
        values[f"log_lik:{name}"] = trace.nodes[name]["unscaled_log_prob"]
    return trace.log_prob_sum().double(), values


def _marginal_log_joint(
    model: Callable[..., Any],
    args: Any,
    kwargs: Any,
    latent: dict[str, Tensor],
    structure: _Structure,
) -> Tensor:
    r"""One draw's :math:`\log \sum_z p(\theta, z, y)` over the enumerated sites :math:`z`.

    Pyro's ``TraceEnum_ELBO`` with a guide that is a point mass at :math:`\theta` (log density
    0) gives exactly minus this, plate structure and all.
    """

    def point_mass(*_: Any, **__: Any) -> None:
        for name, value in latent.items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))

    elbo = TraceEnum_ELBO(max_plate_nesting=structure.nesting)
    return -torch.as_tensor(elbo.loss(model, point_mass, *args, **kwargs), dtype=torch.float64)


def _latent(values: dict[str, Tensor], structure: _Structure, s: int) -> dict[str, Tensor]:
    return {
        n: v[s]
        for n, v in values.items()
        if n in structure.shapes and n not in structure.deterministic
    }


def check_vectorized(
    model: Callable[..., Any], args: Any, kwargs: Any, chunk: _Chunk, structure: _Structure
) -> None:
    """Score the first two draws one at a time: the vectorized pass must agree with it.

    A model that reduces over the draw dimension (``w.sum()``) can give the right shapes and
    wrong numbers; this catches it.
    """
    log_joint, _, values = chunk
    for s in range(min(2, log_joint.numel())):
        joint, one = _score_one(model, args, kwargs, _latent(values, structure, s), structure)
        if not torch.allclose(joint, log_joint[s], rtol=1e-4, atol=1e-4):
            raise NotVectorized(
                f"draw {s}: log p = {float(log_joint[s]):.6g} vectorized, {float(joint):.6g} alone"
            )
        for name, value in one.items():
            if not torch.allclose(
                value.reshape(values[name][s].shape), values[name][s], rtol=1e-4, atol=1e-4
            ):
                raise NotVectorized(
                    f"site {name.removeprefix('log_lik:')!r} differs between a vectorized and a single run"
                )


def sequential_chunk(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: Any,
    kwargs: Any,
    size: int,
    structure: _Structure,
) -> _Chunk:
    """``size`` guide draws in one vectorized guide pass, the model run once per draw."""
    guide_trace = poutine.trace(_vectorize(guide, size, structure.nesting)).get_trace(
        *args, **kwargs
    )
    guide_trace = prune_subsample_sites(guide_trace)
    guide_trace.compute_log_prob()
    guide_trace.pack_tensors()
    symbol = guide_trace.plate_to_symbol.get("num_particles_vectorized")
    log_q = _per_draw(guide_trace, symbol, size)
    latent = {
        name: guide_trace.nodes[name]["value"].reshape(size, *structure.shapes[name])
        for name in structure.shapes
        if name not in structure.deterministic
    }
    scored = [
        _score_one(model, args, kwargs, _latent(latent, structure, s), structure)
        for s in range(size)
    ]
    values = dict(latent)
    for key in scored[0][1]:
        name = key.removeprefix("log_lik:")
        shape = (
            structure.log_lik_shapes[name] if key.startswith("log_lik:") else structure.shapes[name]
        )
        values[key] = torch.stack([one[1][key].reshape(shape) for one in scored])
    return torch.stack([one[0] for one in scored]), log_q, values
