"""Fitting a guide with Pyro's SVI: history, NaN guard, regularization, annealing, processes."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO, TraceTailAdaptive_ELBO
from pyro.infer.elbo import ELBO
from pyro.infer.util import zero_grads
from torch import Tensor

from .._checks import check_number
from .training import FitError, Replicas, SubsampleShards, TrainingHistory, train

__all__ = ["FitError", "FitResult", "fit_svi"]


@dataclass(kw_only=True)
class FitResult(TrainingHistory):
    r"""What :func:`fit_svi` did, step by step.

    The fields of :class:`~pyro_cnf.infer.training.TrainingHistory` (``losses``: the objective
    at every step, the negative ELBO plus any regularization; during annealing, of the tempered
    model), and:

    Attributes:
        betas: The inverse temperature :math:`\beta` of every step (all 1 without annealing).
    """

    betas: list[float] = field(default_factory=list)


def _cnf_modules(guide: Any) -> list[Any]:
    from ..transforms.continuous import CNFBase

    modules = guide.modules() if isinstance(guide, torch.nn.Module) else []
    return [m for m in modules if isinstance(m, CNFBase)]


def regularization_penalty(guide: Any) -> Tensor | float:
    """Sum over the guide's CNFs of the mean of each regularization term of their last solve."""
    total: Tensor | float = 0.0
    for module in _cnf_modules(guide):
        for term in module.regularization_terms.values():
            total = total + term.mean()
    return total


def fit_svi(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_steps: int = 1000,
    optimizer: pyro.optim.PyroOptim | None = None,
    loss: ELBO | None = None,
    regularization_weight: float = 0.0,
    anneal_steps: int = 0,
    anneal_start: float = 0.01,
    seed: int | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> FitResult:
    r"""Fit ``guide`` to ``model`` by SVI, with a progress bar and a guard against NaN.

    Minimises :math:`-\mathrm{ELBO} + \lambda \sum_k \overline{R_k}`, where :math:`R_k` are the
    regularization terms of the guide's CNFs (their ``regularization=("kinetic", "jacobian")``
    option) and :math:`\lambda` is ``regularization_weight``. A step whose loss or gradients are not
    finite is not applied, and :class:`FitError` names it.

    **Several processes.** Under ``torchrun`` with an initialised process group, the fit is
    data-parallel: every rank starts from rank 0's guide, each subsampled ``pyro.plate`` draws
    disjoint indices per rank (the model's ``subsample_size`` per process), and the gradients are
    averaged over the ranks at every step (:mod:`pyro_cnf.infer.training`).

    **Annealing.** With ``anneal_steps = n > 0`` the first ``n`` steps fit the tempered target
    :math:`p(\theta, y)^{\beta_t}`, :math:`\beta_t` rising linearly from ``anneal_start`` to 1
    (the model runs under ``poutine.scale(scale=beta_t)``, the guide is not scaled):

    .. math:: \mathcal L_t = \mathbb E_q\left[\beta_t \log p(\theta, y) - \log q(\theta)\right].

    A flat early target lets the guide spread over every mode before the full target's barriers
    appear; from a narrow start, reverse KL settles in one mode of a multimodal posterior
    (Rezende & Mohamed 2015 fit their 2-D energies this way). Pyro has no annealing schedule for
    SVI, hence this option.

    Arguments:
        model: The Pyro model.
        guide: The guide (e.g. :class:`~pyro_cnf.AutoCNF`).
        *args: Passed to model and guide.
        num_steps: Number of SVI steps.
        optimizer: A Pyro optimizer (default ``Adam(lr=1e-2)``).
        loss: A Pyro ELBO (default ``Trace_ELBO()``), or :class:`~pyro_cnf.InclusiveKL`;
            not ``TraceTailAdaptive_ELBO``, which reports no loss value to guard.
        regularization_weight: :math:`\lambda \ge 0`.
        anneal_steps: Steps of annealing at the start (0: none); must be ``<= num_steps``.
        anneal_start: :math:`\beta_0 \in (0, 1]`.
        seed: Seed for ``pyro.set_rng_seed`` before fitting.
        progress: Show a tqdm progress bar with the running loss.
        **kwargs: Passed to model and guide.

    Returns:
        A :class:`FitResult` with the loss history.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> pyro.clear_param_store()
        >>> def model():
        ...     pyro.sample("x", dist.Normal(1.0, 0.5))
        >>> result = fit_svi(model, AutoNormal(model), num_steps=20, progress=False, seed=0)
        >>> len(result.losses)
        20
    """
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    check_number("regularization_weight", regularization_weight)
    if not (isinstance(anneal_steps, int) and 0 <= anneal_steps <= num_steps):
        raise ValueError(
            f"anneal_steps must be an integer in [0, num_steps={num_steps}], got {anneal_steps!r}"
        )
    if not 0 < anneal_start <= 1:
        raise ValueError(f"anneal_start must be in (0, 1], got {anneal_start!r}")
    beta = [1.0]  # read by the tempered model at every step
    svi_model = model
    if anneal_steps:

        def svi_model(*a: Any, **k: Any) -> Any:
            with poutine.scale(scale=beta[0]):
                return model(*a, **k)

    if seed is not None:
        pyro.set_rng_seed(seed)
    optimizer = optimizer if optimizer is not None else pyro.optim.Adam({"lr": 1e-2})
    elbo = loss if loss is not None else Trace_ELBO()
    if anneal_steps and isinstance(elbo, TraceMeanField_ELBO):
        raise ValueError(
            "annealing needs a loss that scores the model's latent sites by sampling (e.g. "
            "Trace_ELBO): TraceMeanField_ELBO's analytic KL would not temper the prior"
        )
    if isinstance(elbo, TraceTailAdaptive_ELBO):
        # it returns inf as its loss by design, which the guard below would stop at step 0
        raise ValueError(
            "fit_svi cannot use Pyro's TraceTailAdaptive_ELBO: it reports no loss value (inf at "
            "every step), so the NaN/inf guard cannot watch the fit, and it ranks the particles "
            "wrongly (pyro-ppl/pyro#3170, open as of Pyro 1.9.2); for a mass-covering objective use "
            "pyro_cnf.InclusiveKL"
        )
    loss_fn: Callable[..., Any] | ELBO = elbo
    if regularization_weight > 0:
        with poutine.block():
            guide(*args, **kwargs)  # autoguides build their flows on the first call
        if not any(m.regularization for m in _cnf_modules(guide)):
            raise ValueError(
                "regularization_weight > 0 but the guide has no CNF with regularization terms; "
                "build it with regularization=('kinetic', 'jacobian')"
            )

        def objective(
            model_: Callable[..., Any], guide_: Callable[..., Any], *a: Any, **k: Any
        ) -> Tensor:
            value = elbo.differentiable_loss(model_, guide_, *a, **k)
            return value + regularization_weight * regularization_penalty(guide_)

        loss_fn = objective
    svi = SVI(svi_model, guide, optimizer, loss=loss_fn)
    replicas = Replicas.current()
    shards = SubsampleShards(replicas) if replicas.world_size > 1 else contextlib.nullcontext()
    initial: list[Tensor] = []
    if replicas.world_size > 1:
        # build the guide, then start every rank from rank 0's param store (fixed entries too,
        # such as a warm start's factor), in the order of their names
        guide(*args, **kwargs)
        store = pyro.get_param_store()
        initial = [store.get_param(name).unconstrained() for name in sorted(store.keys())]
        if isinstance(guide, torch.nn.Module):
            replicas.broadcast_([b for b in guide.buffers() if b.is_floating_point()])

    def gradients() -> tuple[Tensor, list[Tensor]]:
        with shards, poutine.trace(param_only=True) as capture, warnings.catch_warnings():
            # a NaN loss gets the loop's FitError, not Pyro's warning
            warnings.filterwarnings("ignore", message="Encountered NaN")
            value = svi.loss_and_grads(svi.model, svi.guide, *args, **kwargs)
        return torch.as_tensor(value, dtype=torch.float64).detach(), _unconstrained(capture.trace)

    def update(params: Sequence[Tensor]) -> None:
        svi.optim(params)
        zero_grads(params)

    def before_step(step: int) -> None:
        beta[0] = (
            anneal_start + (1.0 - anneal_start) * step / anneal_steps
            if step < anneal_steps
            else 1.0
        )

    result = FitResult()
    train(
        gradients,
        update,
        result,
        num_steps=num_steps,
        desc="SVI",
        progress=progress,
        before_step=before_step,
        after_step=lambda step, value: result.betas.append(beta[0]),
        params=initial,
        replicas=replicas,
    )
    return result


def _unconstrained(trace: Any) -> list[Tensor]:
    """The unconstrained tensors of a param-only trace's sites, in the order they were met."""
    params = (site["value"].unconstrained() for site in trace.nodes.values())
    return list(dict.fromkeys(params))
