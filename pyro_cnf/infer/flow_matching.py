r"""Flow matching: train a CNF's vector field by regression, without solving an ODE.

Conditional flow matching with straight paths (rectified flow) draws a base point
:math:`x_0 \sim \mathcal N(0, I)`, a data point :math:`x_1`, a time :math:`t \sim U(0, T)`, and
regresses the field on the velocity of the straight line between them:

.. math::
    x_t = \left(1 - \tfrac{t}{T}\right) x_0 + \tfrac{t}{T}\, x_1, \qquad
    \mathcal L(\phi) = \mathbb E \left\lVert f_\phi(t, x_t, c) - \frac{x_1 - x_0}{T} \right\rVert^2 .

The minimiser is the marginal velocity whose flow carries :math:`\mathcal N(0, I)` at
:math:`t = 0` to the data at :math:`t = T` -- exactly the direction of :class:`~pyro_cnf.CNF`'s
forward map, so the trained flow is scored exactly by ``FlowDistribution(N(0, I), [cnf])`` (one
inverse solve with the exact trace). Variants:

* ``coupling="ot"`` (OT-CFM): within each minibatch the base points are paired with the data
  points by an exact optimal assignment on squared distances (scipy's
  ``linear_sum_assignment``), which straightens the paths;
* :func:`reflow`: pairs :math:`(x_0, \varphi(x_0))` made by the trained flow itself are fitted
  again, which straightens them further (fewer solver steps).

References:
    | Flow Matching for Generative Modeling (Lipman et al., 2022), https://arxiv.org/abs/2210.02747
    | Flow Straight and Fast: rectified flow (Liu et al., 2022), https://arxiv.org/abs/2209.03003
    | Improving and generalizing flow-based generative models with minibatch optimal transport
      (Tong et al., 2023), https://arxiv.org/abs/2302.00482
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist  # noqa: F401  (used by the doctests)
import torch
from torch import Tensor

from .._checks import check_rows, chunks, parameter_device, parameter_dtype
from ..transforms.continuous import CNF, CNFBase, ConditionalCNF
from .density import (
    DensityFitResult,
    _check_dataset,
    _check_flow,
    _check_training_options,
    _distribution,
    _mean_nll,
    run,
)
from .diagnostics import exact_scoring
from .training import sharded_minibatches

__all__ = ["fit_flow_matching", "ot_coupling", "reflow", "reflow_pairs"]

_COUPLINGS = ("independent", "ot")


def ot_coupling(x0: Tensor, x1: Tensor) -> Tensor:
    r"""The exact optimal-transport pairing of two equal-size point sets.

    Returns the permutation :math:`\pi` minimising :math:`\sum_i \lVert x_{0,i} - x_{1,\pi(i)}\rVert^2`,
    found by scipy's ``linear_sum_assignment`` (the Hungarian algorithm family, exact).

    Arguments:
        x0: Points of shape ``(B, d)``.
        x1: Points of shape ``(B, d)``.

    Returns:
        Indices of shape ``(B,)``: ``x1[perm]`` is paired row by row with ``x0``.

    Example:
        >>> x0 = torch.tensor([[0.0], [10.0]])
        >>> x1 = torch.tensor([[11.0], [1.0]])
        >>> ot_coupling(x0, x1).tolist()
        [1, 0]
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as error:  # pragma: no cover - scipy is a test/density dependency
        raise ImportError(
            "coupling='ot' needs scipy: pip install scipy (or pyro-cnf[density])"
        ) from error
    if x0.dim() != 2 or x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must both have shape (B, d), got {tuple(x0.shape)} and {tuple(x1.shape)}"
        )
    cost = torch.cdist(x0.detach(), x1.detach()).pow(2).cpu().numpy()
    _, columns = linear_sum_assignment(cost)
    return torch.as_tensor(columns, device=x1.device)


def _check_cnf(flow: object) -> CNFBase:
    if not isinstance(flow, CNFBase):
        raise TypeError(
            "flow matching trains the vector field of a CNF or ConditionalCNF (e.g. "
            f"make_flow('cnf', dim)), got {type(flow).__name__}"
        )
    _check_flow(flow, require_inverse=False)
    return flow


def fit_flow_matching(
    flow: CNF | ConditionalCNF,
    data: Tensor,
    *,
    context: Tensor | None = None,
    source: Tensor | None = None,
    coupling: str = "independent",
    val_data: Tensor | None = None,
    val_context: Tensor | None = None,
    num_steps: int = 5000,
    batch_size: int = 256,
    lr: float = 1e-3,
    ema_decay: float | None = 0.99,
    eval_every: int = 500,
    patience: int | None = None,
    min_delta: float = 0.0,
    val_batch_size: int = 4096,
    seed: int | None = None,
    progress: bool = True,
    callback: Callable[[DensityFitResult], object] | None = None,
) -> DensityFitResult:
    r"""Train a CNF's vector field by conditional flow matching on straight paths.

    Each step draws ``batch_size`` data points (shuffled epochs), as many base points
    :math:`x_0 \sim \mathcal N(0, I)` (or the matching rows of ``source``), times
    :math:`t \sim U(0, T)`, and takes an Adam step on the regression loss of the module docstring.
    The field is called as ``flow.field(t, x_t)`` (``flow.field(t, x_t, c)`` for a
    :class:`~pyro_cnf.ConditionalCNF`) with ``t`` of shape ``(B, 1)``, one time per point, which
    :class:`~pyro_cnf.MLPField` accepts. No ODE is solved during training; validation (exact NLL
    through the flow's ``eval_solver``) does solve.

    For a conditional flow the base points are drawn independently of the context, so the
    minimiser transports :math:`\mathcal N(0, I)` to the conditional density
    :math:`p(x \mid c)`. The minibatch OT coupling would make the base points depend on the
    context, so it is refused for conditional flows (use :func:`reflow` instead).

    Arguments:
        flow: A :class:`~pyro_cnf.CNF` or :class:`~pyro_cnf.ConditionalCNF`; its field is trained in
            place.
        data: Data points :math:`x_1`, shape ``(N, d)``.
        context: Context rows ``(N, context_dim)`` for a conditional flow.
        source: Base points paired with ``data`` row by row (reflow pairs, see
            :func:`reflow_pairs`); default fresh :math:`\mathcal N(0, I)` draws at every step.
        coupling: ``"independent"`` (rectified flow) or ``"ot"`` (exact minibatch OT, OT-CFM).
        val_data: Held-out points: the exact validation NLL every ``eval_every`` steps, early
            stopping and the best parameters restored at the end.
        val_context: Context rows of ``val_data``.
        num_steps: Adam steps at most.
        batch_size: Points per step (at most ``N``).
        lr: Adam learning rate.
        ema_decay: Decay of an exponential moving average of the field's parameters (``None``:
            off). The averaged field is validated and kept: with the default 0.99 the validation
            NLL on 8 Gaussians fell about twice as fast as without it.
        eval_every: Steps between validations.
        patience: Validations without improvement before stopping (``None``: never stop early).
        min_delta: Smallest decrease of the validation NLL that counts as an improvement.
        val_batch_size: Points scored at once during validation.
        seed: Seed for ``pyro.set_rng_seed`` before fitting.
        progress: Show a tqdm progress bar.
        callback: Called after every step (and its validation) with the result so far; returning
            ``True`` stops training.

    Returns:
        A :class:`~pyro_cnf.DensityFitResult`; ``result.distribution`` is
        ``FlowDistribution(N(0, I), [flow])`` (conditional: ``ConditionalFlowDistribution``).

    Raises:
        TypeError: ``flow`` is not a CNF.
        ValueError: Data with NaN/inf rows (named), the wrong dimension, fewer points than
            ``batch_size``, a context missing for a conditional flow, OT coupling with a
            context or with ``source``, or bad options.

    Example:
        >>> from pyro_cnf import cnf
        >>> _ = torch.manual_seed(0)
        >>> p = dist.Normal(torch.tensor([2.0]), 0.5).to_event(1)
        >>> flow = cnf(1, hidden_dims=(32, 32))
        >>> result = fit_flow_matching(
        ...     flow, p.sample((2048,)), num_steps=300, lr=3e-3, progress=False, seed=0
        ... )
        >>> x = p.sample((4096,))
        >>> with torch.no_grad():  # KL(p || q) from held-out draws, q scored by the CNF
        ...     kl = float((p.log_prob(x) - result.distribution.log_prob(x)).mean())
        >>> kl < 0.1
        True
    """
    flow = _check_cnf(flow)
    if coupling not in _COUPLINGS:
        raise ValueError(f"coupling must be one of {_COUPLINGS}, got {coupling!r}")
    _check_training_options(
        num_steps, lr, eval_every, patience, min_delta, ema_decay, val_batch_size
    )
    dim, data, context, val_data, val_context = _check_dataset(
        flow, data, context, val_data, val_context, batch_size
    )
    if coupling == "ot" and context is not None:
        raise ValueError(
            "coupling='ot' pairs base and data points across contexts, which makes the base "
            "depend on the context; use coupling='independent' (or reflow) for conditional flows"
        )
    if source is not None:
        source = check_rows("source", source, dim, parameter_dtype(flow))
        if source.shape[0] != data.shape[0]:
            raise ValueError(
                f"source has {source.shape[0]} rows but data has {data.shape[0]}; give one base "
                "point per data point"
            )
        if coupling != "independent":
            raise ValueError("source gives fixed pairs; it cannot be combined with coupling='ot'")
    if seed is not None:
        pyro.set_rng_seed(seed)
    field, T = flow.field, flow.T
    batches = sharded_minibatches(data.shape[0], batch_size, data.device)

    def objective() -> Tensor:
        rows = next(batches)
        x1 = data[rows]
        x0 = source[rows] if source is not None else torch.randn_like(x1)
        if coupling == "ot":
            x1 = x1[ot_coupling(x0, x1)]
        s = torch.rand(x1.shape[0], 1, dtype=x1.dtype, device=x1.device)
        xt = (1 - s) * x0 + s * x1
        t = T * s
        v = field(t, xt) if context is None else field(t, xt, context[rows])
        return (v - (x1 - x0) / T).pow(2).sum(-1).mean()

    distribution = _distribution(flow, dim, None)
    validate = None
    if val_data is not None:

        def validate() -> float:
            return _mean_nll(distribution, flow, val_data, val_context, val_batch_size)

    params = [p for p in flow.parameters() if p.requires_grad]
    result = DensityFitResult(distribution)
    return run(
        result,
        objective,
        params,
        desc="flow matching",
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


def reflow_pairs(
    flow: CNF | ConditionalCNF,
    num_pairs: int | None = None,
    *,
    context: Tensor | None = None,
    batch_size: int = 4096,
) -> tuple[Tensor, Tensor]:
    r"""Pairs :math:`(x_0, \varphi(x_0))` of base draws and their images under the flow.

    The images are solved forward with the flow's ``eval_solver``, without gradients. Fitting
    them again with :func:`fit_flow_matching` (``source=x0``) is the reflow step of rectified flow.

    Arguments:
        flow: A trained :class:`~pyro_cnf.CNF` or :class:`~pyro_cnf.ConditionalCNF`.
        num_pairs: Number of pairs (unconditional flows).
        context: Context rows for a conditional flow: one pair per row.
        batch_size: Points solved at once.

    Returns:
        ``(x0, x1)``, each of shape ``(num_pairs, d)``.

    Example:
        >>> from pyro_cnf import cnf
        >>> x0, x1 = reflow_pairs(cnf(2), 8)
        >>> bool(torch.allclose(x0, x1))  # a new CNF is the identity
        True
    """
    flow = _check_cnf(flow)
    dtype = parameter_dtype(flow) or torch.get_default_dtype()
    if context is not None and not isinstance(flow, ConditionalCNF):
        raise ValueError("context was given but the flow is not conditional (a plain CNF)")
    if isinstance(flow, ConditionalCNF):
        if context is None:
            raise ValueError(
                f"the flow is conditional: pass context= (one row of size {flow.context_dim} per pair)"
            )
        context = check_rows("context", context, None, dtype)
        if context.shape[1] != flow.context_dim:
            raise ValueError(
                f"context has dimension {context.shape[1]} but the flow's context_dim is "
                f"{flow.context_dim}"
            )
        if num_pairs is not None and num_pairs != context.shape[0]:
            raise ValueError(
                f"num_pairs={num_pairs} but context has {context.shape[0]} rows (one pair per row)"
            )
        num_pairs = context.shape[0]
    if not isinstance(num_pairs, int) or isinstance(num_pairs, bool) or num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive integer, got {num_pairs!r}")
    x0 = torch.randn(num_pairs, flow.input_dim, dtype=dtype, device=parameter_device(flow))
    images = []
    with torch.no_grad(), exact_scoring(flow):
        for rows in chunks(num_pairs, batch_size):
            transform = flow if context is None else flow.condition(context[rows])
            images.append(transform(x0[rows]))
    return x0, torch.cat(images)


def reflow(
    flow: CNF | ConditionalCNF,
    num_pairs: int | None = None,
    *,
    context: Tensor | None = None,
    **kwargs: object,
) -> DensityFitResult:
    r"""One reflow step: fit the flow again to pairs :math:`(x_0, \varphi(x_0))` it makes itself.

    The paths of a flow-matching field cross on average; refitting the straight lines between
    each base draw and its own image gives a field whose paths are straighter, so an adaptive
    solver needs fewer evaluations. The density moves towards the flow's own pushforward (not
    towards the data), so fit the data first with :func:`fit_flow_matching`.

    Arguments:
        flow: A trained CNF; trained further in place.
        num_pairs: Number of pairs (unconditional flows).
        context: Context rows for a conditional flow (one pair per row).
        **kwargs: Passed to :func:`fit_flow_matching` (``num_steps``, ``val_data``, ...).

    Returns:
        The :class:`~pyro_cnf.DensityFitResult` of the refit.

    Example:
        >>> from pyro_cnf import cnf
        >>> flow = cnf(1, hidden_dims=(16,))
        >>> result = reflow(flow, 512, num_steps=5, progress=False)
        >>> result.num_steps
        5
    """
    x0, x1 = reflow_pairs(flow, num_pairs, context=context)
    return fit_flow_matching(flow, x1, context=context, source=x0, **kwargs)  # type: ignore[arg-type]
