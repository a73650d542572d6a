r"""The Laplace approximation of a density on :math:`\mathbb R^d`, for a guide's warm start.

:func:`laplace_approximation` minimizes a potential :math:`U = -\log p` by L-BFGS (strong Wolfe
line search), polishes the optimum with at most a few Newton steps, and returns the mode
:math:`\hat u` with the lower Cholesky factor :math:`L` of :math:`H^{-1}`,
:math:`H = \nabla^2 U(\hat u)`, so that :math:`\mathcal N(\hat u, L L^\top)` is the Laplace
approximation. Where there is none (no finite mode, a Hessian that is not positive definite,
non-finite values) it returns the reason instead, for the caller to fall back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LaplaceApproximation", "laplace_approximation"]

# A potential that raises one of these at a point is taken as +inf there (outside the support,
# or parameters a distribution rejects, e.g. a scale that underflowed to 0).
OUTSIDE = (ValueError, RuntimeError, FloatingPointError, ZeroDivisionError, OverflowError)


@dataclass(frozen=True)
class LaplaceApproximation:
    r"""The result of :func:`laplace_approximation`.

    Attributes:
        mode: The minimizer of the potential (``None`` on failure).
        scale_tril: Lower Cholesky factor of the inverse Hessian at the mode (``None`` on failure).
        reason: Why there is no Laplace approximation, ``None`` on success.
        newton_decrement: :math:`\sqrt{g^\top H^{-1} g}` at the returned point: its distance to
            the stationary point of the local quadratic, in units of the approximation's sd.
        evaluations: Potential evaluations made by L-BFGS.
        potential: :math:`U(\hat u)` (``nan`` on failure).
    """

    mode: Tensor | None
    scale_tril: Tensor | None
    reason: str | None
    newton_decrement: float = math.nan
    evaluations: int = 0
    potential: float = math.nan

    @property
    def log_mass(self) -> float:
        r"""The log-mass of the Gaussian approximation; ``-inf`` on failure.

        :math:`-U(\hat u) + \log\lvert L\rvert + \tfrac d2 \log 2\pi`, Laplace's estimate of the
        log normalizing constant: the measure by which to prefer one mode over another.
        """
        if self.scale_tril is None:
            return -math.inf
        d = self.scale_tril.shape[-1]
        log_det = float(self.scale_tril.diagonal().log().sum())
        return -self.potential + log_det + 0.5 * d * math.log(2 * math.pi)


def _failure(
    reason: str, decrement: float = math.nan, evaluations: int = 0
) -> LaplaceApproximation:
    return LaplaceApproximation(None, None, reason, decrement, evaluations)


def _inverse_cholesky(hess: Tensor) -> Tensor | None:
    r"""Lower :math:`L` with :math:`L L^\top = H^{-1}` (``None`` if :math:`H` is not positive definite).

    With :math:`P` the reversal permutation and :math:`C C^\top = P H P` (lower :math:`C`),
    :math:`L = P C^{-\top} P`: reversing the rows and columns of an upper triangular matrix makes
    it lower, and :math:`L L^\top = P (P H P)^{-1} P = H^{-1}`. One factorisation and one
    triangular solve, no explicit inverse of :math:`H`.
    """
    flipped, info = torch.linalg.cholesky_ex(hess.flip(-1, -2))
    if int(info) != 0:
        return None
    eye = torch.eye(hess.shape[-1], dtype=hess.dtype, device=hess.device)
    return torch.linalg.solve_triangular(flipped, eye, upper=False).mT.flip(-1, -2)


def laplace_approximation(
    potential: Callable[[Tensor], Tensor],
    init: Tensor,
    *,
    max_iter: int = 1000,
    newton_steps: int = 3,
    tol: float = 1e-3,
) -> LaplaceApproximation:
    r"""Mode and inverse-Hessian Cholesky factor of :math:`U = -\log p`, or why there are none.

    Arguments:
        potential: :math:`U(u)`, a scalar tensor differentiable twice in the vector ``u``.
        init: Starting point, shape ``(d,)``; its dtype is the computation's.
        max_iter: Most L-BFGS iterations.
        newton_steps: Most Newton steps after L-BFGS (each costs a Hessian).
        tol: The largest Newton decrement (distance to the stationary point in sd units) at
            which the optimum counts as found.

    Returns:
        A :class:`LaplaceApproximation`; on failure its ``reason`` says why.
    """
    x = init.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        start = float(potential(x).detach())
    if not math.isfinite(start):
        return _failure(f"the log density is not finite at the init location ({-start})")
    # Non-finite points get a large finite value and no gradient, so that the strong Wolfe line
    # search backs off them (an inf or nan would poison its interpolation).
    penalty = 1e6 * (1.0 + abs(start))
    evaluations = 0

    optimizer = torch.optim.LBFGS(
        [x],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        nonlocal evaluations
        evaluations += 1
        try:
            value = potential(x)
            if torch.isfinite(value):
                # autograd.grad, not backward: no gradient lands on the model's own parameters
                (grad,) = torch.autograd.grad(value, x)
                if torch.isfinite(grad).all():
                    x.grad = grad
                    return value.detach()
        except OUTSIDE:
            pass
        x.grad = torch.zeros_like(x)
        return x.new_tensor(penalty)

    with torch.enable_grad():
        optimizer.step(closure)
    point = x.detach()

    decrement = math.nan
    for step in range(newton_steps + 1):
        try:
            with torch.enable_grad():
                y = point.clone().requires_grad_(True)
                value = potential(y)
                (grad,) = torch.autograd.grad(value, y)
                value = value.detach()
                hess = torch.autograd.functional.hessian(potential, point)
        except OUTSIDE as error:
            return _failure(
                f"the log density or its Hessian failed at the optimum "
                f"({type(error).__name__}: {str(error).splitlines()[0][:100]})",
                evaluations=evaluations,
            )
        if not (
            torch.isfinite(value) and torch.isfinite(grad).all() and torch.isfinite(hess).all()
        ):
            return _failure(
                "no finite mode: the log density, its gradient or its Hessian is not finite "
                f"where L-BFGS stopped (after {evaluations} evaluations)",
                evaluations=evaluations,
            )
        if float(value) >= penalty:
            return _failure("no finite mode: L-BFGS did not leave the penalty region")
        hess = (hess + hess.mT) / 2
        chol, info = torch.linalg.cholesky_ex(hess)
        if int(info) != 0:
            return _failure(
                "the Hessian of -log density is not positive definite where L-BFGS stopped "
                f"(gradient norm {float(grad.norm()):.3g})",
                evaluations=evaluations,
            )
        newton = torch.cholesky_solve(grad[:, None], chol)[:, 0]
        decrement = math.sqrt(max(float(grad @ newton), 0.0))
        if decrement < 1e-9 or step == newton_steps:
            break
        candidate = point - newton
        try:
            with torch.no_grad():
                new_value = potential(candidate)
        except OUTSIDE:
            break
        slack = 1e-12 * (1.0 + abs(float(value)))
        if not (torch.isfinite(new_value) and float(new_value) <= float(value) + slack):
            break
        point = candidate
    if not decrement <= tol:
        return _failure(
            f"no mode found: L-BFGS stopped {decrement:.3g} sds (Newton decrement) from a "
            f"stationary point after {evaluations} evaluations, gradient norm "
            f"{float(grad.norm()):.3g}",
            decrement,
            evaluations,
        )
    scale_tril = _inverse_cholesky(hess)
    if scale_tril is None or not torch.isfinite(scale_tril).all():
        return _failure(
            "the inverse Hessian has no finite Cholesky factor (ill-conditioned)",
            decrement,
            evaluations,
        )
    return LaplaceApproximation(point, scale_tril, None, decrement, evaluations, float(value))
