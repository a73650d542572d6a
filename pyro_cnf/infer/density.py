r"""Density estimation by maximum likelihood: fit any registry flow to data points.

:func:`fit_density` minimises the average negative log-likelihood of minibatches of data,

.. math:: \mathcal L(\phi) = -\frac1B \sum_{i=1}^{B} \log q_\phi(x_i \mid c_i)
    + \lambda \sum_k \overline{R_k},

where :math:`q_\phi` is a standard Normal pushed through the flow (scored by the flow's inverse,
an ODE solve for a CNF) and :math:`R_k` are the optional RNODE terms of the flow's CNFs (kinetic
energy and Jacobian Frobenius norm). Validation NLL, early stopping, an exponential moving average
of the parameters and a progress bar are shared with :func:`~pyro_cnf.fit_flow_matching` through
one training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from .._checks import (
    check_batch_size,
    check_context_rows,
    check_device,
    check_ema_decay,
    check_number,
    check_positive_int,
    check_rows,
    chunks,
    flow_input_dim,
    is_conditional,
    parameter_device,
    parameter_dtype,
)
from ..distributions import ConditionalFlowDistribution, FlowDistribution
from .diagnostics import exact_scoring
from .fit import _cnf_modules, regularization_penalty
from .training import TrainingHistory, sharded_minibatches, train

__all__ = ["DensityFitResult", "fit_density"]


@dataclass
class DensityFitResult(TrainingHistory):
    """What :func:`fit_density` or :func:`~pyro_cnf.fit_flow_matching` did.

    The fields of :class:`~pyro_cnf.infer.training.TrainingHistory` (losses, validation NLL,
    best step, times, ``world_size``), and:

    Attributes:
        distribution: The fitted density: a :class:`~pyro_cnf.FlowDistribution` over a standard
            Normal (a :class:`~pyro_cnf.ConditionalFlowDistribution` for a conditional flow).
    """

    distribution: FlowDistribution | ConditionalFlowDistribution


def _standard_normal(dim: int, flow: Any) -> dist.Distribution:
    dtype = parameter_dtype(flow) or torch.get_default_dtype()
    zeros = torch.zeros(dim, dtype=dtype, device=parameter_device(flow))
    return dist.Normal(zeros, 1.0).to_event(1)


def _distribution(
    flow: Any, dim: int, base: dist.Distribution | None
) -> FlowDistribution | ConditionalFlowDistribution:
    base = base if base is not None else _standard_normal(dim, flow)
    if is_conditional(flow):
        return ConditionalFlowDistribution(base, [flow])
    return FlowDistribution(base, [flow])


def _check_flow(flow: object, require_inverse: bool) -> nn.Module:
    """The flow must be a trainable ``nn.Module`` (and, for likelihood training, invertible with gradients)."""
    if not isinstance(flow, nn.Module) or not any(p.requires_grad for p in flow.parameters()):
        raise TypeError(
            f"flow must be a trainable transform module (e.g. make_flow('cnf', dim)), got "
            f"{type(flow).__name__}"
        )
    if require_inverse:
        from ..transforms.layers import Bisect, ConditionalBisect

        inverse_error = getattr(flow, "inverse_error", None)
        if inverse_error is not None:
            raise ValueError(
                "this flow cannot score data points (it has no inverse), so it cannot be fitted "
                f"by maximum likelihood: {inverse_error}"
            )
        if any(isinstance(m, (Bisect, ConditionalBisect)) for m in flow.modules()):
            raise ValueError(
                "this flow inverts by bisection, which is not differentiable with respect to its "
                "parameters, so maximum likelihood would get wrong gradients; use a flow with an "
                "exact inverse (e.g. 'maf', 'realnvp', 'nsf_autoregressive', 'cnf')"
            )
    return flow


def _mean_nll(
    distribution: FlowDistribution | ConditionalFlowDistribution,
    flow: nn.Module,
    data: Tensor,
    context: Tensor | None,
    batch_size: int,
) -> float:
    """Average negative log-likelihood of ``data``, scored exactly in chunks (``.eval()`` solvers)."""
    total = 0.0
    with torch.no_grad(), exact_scoring(flow):
        for rows in chunks(data.shape[0], batch_size):
            if context is None:
                log_q = distribution.log_prob(data[rows])
            else:
                log_q = distribution.condition(context[rows]).log_prob(data[rows])
            total -= float(log_q.sum())
    return total / data.shape[0]


def run(
    result: DensityFitResult,
    objective: Callable[[], Tensor],
    params: list[Tensor],
    *,
    desc: str,
    lr: float,
    ema_decay: float | None,
    **loop: Any,
) -> DensityFitResult:
    """Adam on ``objective`` over ``params`` in the shared :func:`~pyro_cnf.infer.training.train` loop."""
    optimizer = torch.optim.Adam(params, lr=lr, foreach=True)

    def gradients() -> tuple[Tensor, list[Tensor]]:
        loss = objective()
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach(), params

    def update(_: object) -> None:
        optimizer.step()

    ema = (params, ema_decay) if ema_decay is not None else None
    train(gradients, update, result, desc=desc, ema=ema, params=params, **loop)
    return result


def _check_training_options(
    num_steps: int,
    lr: float,
    eval_every: int,
    patience: int | None,
    min_delta: float,
    ema_decay: float | None,
    val_batch_size: int,
) -> None:
    """Validate the options shared by the trainers."""
    check_positive_int("num_steps", num_steps)
    check_number("lr", lr, positive=True)
    check_positive_int("eval_every", eval_every)
    check_positive_int("val_batch_size", val_batch_size)
    if patience is not None:
        check_positive_int("patience", patience)
    if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
        raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
    check_ema_decay(ema_decay)


def _check_dataset(
    flow: nn.Module,
    data: object,
    context: object,
    val_data: object,
    val_context: object,
    batch_size: int,
) -> tuple[int, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Check training and validation rows against the flow; return ``(dim, data, ctx, val, val_ctx)``."""
    given = (
        ("data", data),
        ("context", context),
        ("val_data", val_data),
        ("val_context", val_context),
    )
    for name, value in given:
        check_device(name, value, flow)
    dtype = parameter_dtype(flow)
    data = check_rows("data", data, flow_input_dim(flow), dtype)
    dim = data.shape[1]
    context = check_context_rows(flow, "data", data, context, dtype)
    check_batch_size(batch_size, data.shape[0])
    if val_data is None:
        if val_context is not None:
            raise ValueError("val_context was given without val_data")
        return dim, data, context, None, None
    val_data = check_rows("val_data", val_data, dim, dtype)
    val_context = check_context_rows(flow, "val_data", val_data, val_context, dtype)
    return dim, data, context, val_data, val_context


def fit_density(
    flow: nn.Module,
    data: Tensor,
    *,
    context: Tensor | None = None,
    val_data: Tensor | None = None,
    val_context: Tensor | None = None,
    base: dist.Distribution | None = None,
    num_steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    regularization_weight: float = 0.0,
    ema_decay: float | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    min_delta: float = 0.0,
    val_batch_size: int = 4096,
    seed: int | None = None,
    progress: bool = True,
    callback: Callable[[DensityFitResult], object] | None = None,
) -> DensityFitResult:
    r"""Fit a flow to data points by maximum likelihood (optionally RNODE-regularized).

    Any flow from the registry works whose inverse is exact and differentiable (all but
    ``"sylvester"``, which has none, and ``"naf"``/``"bnaf"``, which invert by bisection): discrete
    stacks are scored in one pass, CNFs by one inverse ODE solve per minibatch (the training
    ``solver``; validation uses the ``eval_solver``). Minibatches are drawn in shuffled epochs.

    The objective is the minibatch NLL plus :math:`\lambda` times the mean of every RNODE term
    of the flow's CNFs, :math:`\int_0^T \tfrac12\lVert f\rVert^2 dt` and
    :math:`\int_0^T \lVert \partial f/\partial z\rVert_F^2 dt` (Finlay et al., 2020,
    https://arxiv.org/abs/2002.02798); build the CNF with
    ``regularization=("kinetic", "jacobian")`` to use them.

    With ``val_data`` the validation NLL is computed every ``eval_every`` steps, training stops
    after ``patience`` validations without an improvement larger than ``min_delta``, and the
    flow is left with the parameters of the best validation.

    Arguments:
        flow: A flow module, base -> data (e.g. ``make_flow("maf", d)``); conditional flows
            (``context_dim > 0``) need ``context``.
        data: Points, shape ``(N, d)``, finite, in the dtype of the flow's parameters.
        context: Context rows, shape ``(N, context_dim)``, for a conditional flow.
        val_data: Held-out points for validation and early stopping.
        val_context: Their context rows.
        base: Base distribution (default: standard Normal, ``to_event(1)``).
        num_steps: Adam steps at most.
        batch_size: Points per step (at most ``N``).
        lr: Adam learning rate.
        regularization_weight: :math:`\lambda \ge 0` of the RNODE terms.
        ema_decay: Keep an exponential moving average of the parameters with this decay (in
            ``(0, 1)``); validation and the final flow then use the averaged parameters.
        eval_every: Steps between validations.
        patience: Validations without improvement before stopping (``None``: never stop early).
        min_delta: Smallest decrease of the validation NLL that counts as an improvement.
        val_batch_size: Points scored at once during validation.
        seed: Seed for ``pyro.set_rng_seed`` before fitting.
        progress: Show a tqdm progress bar.
        callback: Called after every step (and its validation) with the result so far; returning
            ``True`` stops training.

    Returns:
        A :class:`DensityFitResult`; ``result.distribution`` is the fitted density.

    Raises:
        ValueError: Data with NaN/inf rows (named), the wrong dimension, fewer points than
            ``batch_size``, a missing context for a conditional flow, a flow that cannot score
            data with gradients, or bad options.
        FitError: A step gave a non-finite loss or parameters.

    Example:
        >>> from pyro_cnf import make_flow
        >>> _ = torch.manual_seed(0)
        >>> p = dist.Normal(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])).to_event(1)
        >>> result = fit_density(
        ...     make_flow("maf", 2), p.sample((2048,)), num_steps=200, lr=1e-2, progress=False, seed=0
        ... )
        >>> x = p.sample((4096,))
        >>> with torch.no_grad():  # KL(p || q) from held-out draws
        ...     kl = float((p.log_prob(x) - result.distribution.log_prob(x)).mean())
        >>> kl < 0.05
        True
    """
    flow = _check_flow(flow, require_inverse=True)
    _check_training_options(
        num_steps, lr, eval_every, patience, min_delta, ema_decay, val_batch_size
    )
    check_number("regularization_weight", regularization_weight)
    if regularization_weight > 0 and not any(m.regularization for m in _cnf_modules(flow)):
        raise ValueError(
            "regularization_weight > 0 but the flow has no CNF with regularization terms; build "
            "it with regularization=('kinetic', 'jacobian')"
        )
    dim, data, context, val_data, val_context = _check_dataset(
        flow, data, context, val_data, val_context, batch_size
    )
    if seed is not None:
        pyro.set_rng_seed(seed)
    distribution = _distribution(flow, dim, base)
    batches = sharded_minibatches(data.shape[0], batch_size, data.device)

    def objective() -> Tensor:
        rows = next(batches)
        q = distribution if context is None else distribution.condition(context[rows])
        loss = -q.log_prob(data[rows]).mean()
        if regularization_weight > 0:
            loss = loss + regularization_weight * regularization_penalty(flow)
        return loss

    validate = None
    if val_data is not None:

        def validate() -> float:
            return _mean_nll(distribution, flow, val_data, val_context, val_batch_size)

    params = [p for p in flow.parameters() if p.requires_grad]
    result = DensityFitResult(distribution)
    flow.train()
    return run(
        result,
        objective,
        params,
        desc="MLE",
        lr=lr,
        ema_decay=ema_decay,
        num_steps=num_steps,
        validate=validate,
        eval_every=eval_every,
        patience=patience,
        min_delta=min_delta,
        progress=progress,
        callback=callback,
    )
