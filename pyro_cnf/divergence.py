r"""Divergence strategies: how a CNF computes :math:`\operatorname{Tr}(\partial f / \partial z)`.

A CNF's log-determinant is the time integral of the divergence of its vector field. The strategy
is an object passed to the flow (``CNF(dim, divergence=Hutchinson())``):

* :class:`Exact` — the exact trace. It uses the field's fused ``call_and_divergence`` when the field
  has one (:class:`~pyro_cnf.nn.MLPField` does) and otherwise ``d`` vector-Jacobian products by
  autograd, so any user-supplied ``f(t, z)`` works. Use it for Bayesian posteriors (small ``d``):
  a stochastic trace adds noise to every sample's :math:`\log q` and ruins importance weights.
* :class:`Hutchinson` — the unbiased estimate :math:`\epsilon^\top (\partial f/\partial z)\,\epsilon`
  with one noise draw per solve, for large ``d``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Divergence", "Exact", "Hutchinson"]

Field = Callable[..., Tensor]


def _call_field(field: Field, t: Tensor, z: Tensor, context: Tensor | None) -> Tensor:
    return field(t, z) if context is None else field(t, z, context)


def _grad_input(z: Tensor) -> Tensor:
    """``z`` as a tensor autograd can differentiate with respect to."""
    return z if z.requires_grad else z.detach().requires_grad_(True)


class Divergence:
    """Base class of divergence strategies.

    A strategy is called once per function evaluation with the field, ``t``, flat points ``z`` of
    shape ``(B, d)``, an optional context and the per-solve ``noise`` made by :meth:`init`.
    """

    #: Whether the estimate is exact (deterministic).
    exact: bool = True

    def init(self, z: Tensor) -> Tensor | None:
        """Per-solve state (the probe noise of a stochastic estimator), drawn once per solve."""
        return None

    def __call__(
        self,
        field: Field,
        t: Tensor,
        z: Tensor,
        context: Tensor | None,
        noise: Tensor | None,
        frobenius: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Return ``(f, divergence, squared Jacobian Frobenius norm or None)``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Exact(Divergence):
    r"""The exact divergence :math:`\sum_i \partial f_i / \partial z_i`.

    Arguments:
        fused: Use the field's ``call_and_divergence`` when it has one. With ``False`` (or a
            field without it) the trace is assembled from ``d`` autograd vector-Jacobian products.

    Example:
        >>> from pyro_cnf.nn import MLPField
        >>> field = MLPField(3, zero_init=False)
        >>> z = torch.randn(4, 3)
        >>> _, fused, _ = Exact()(field, torch.tensor(0.5), z, None, None)
        >>> _, loop, _ = Exact(fused=False)(field, torch.tensor(0.5), z, None, None)
        >>> bool(torch.allclose(fused, loop, atol=1e-5))
        True
    """

    fused: bool = True

    def __call__(
        self,
        field: Field,
        t: Tensor,
        z: Tensor,
        context: Tensor | None,
        noise: Tensor | None,
        frobenius: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Return ``(f, exact divergence, squared Jacobian Frobenius norm or None)``."""
        fused = getattr(field, "call_and_divergence", None) if self.fused else None
        if fused is not None:
            return fused(t, z, context, frobenius=frobenius)
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = _grad_input(z)
            f = _call_field(field, t, z, context)
            div = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
            frob = torch.zeros_like(div) if frobenius else None
            for i in range(z.shape[-1]):
                (row,) = torch.autograd.grad(
                    f[..., i].sum(), z, create_graph=create_graph, retain_graph=True
                )
                div = div + row[..., i]
                if frob is not None:
                    frob = frob + row.pow(2).sum(-1)
        if not create_graph:
            f, div = f.detach(), div.detach()
            frob = None if frob is None else frob.detach()
        return f, div, frob


@dataclass(frozen=True)
class Hutchinson(Divergence):
    r"""Hutchinson's estimator :math:`\epsilon^\top (\partial f/\partial z)\,\epsilon`, unbiased for the trace.

    The noise :math:`\epsilon` (Rademacher or standard Gaussian, :math:`E[\epsilon\epsilon^\top]=I`)
    is drawn once per solve and kept fixed along the trajectory, so the integrated log-determinant
    is an unbiased estimate of the exact one. With ``frobenius=True`` the squared norm
    :math:`\lVert \epsilon^\top \partial f/\partial z \rVert^2` estimates the Jacobian Frobenius
    norm (as in RNODE).

    References:
        | FFJORD (Grathwohl et al., 2018), https://arxiv.org/abs/1810.01367

    Arguments:
        noise: ``"rademacher"`` or ``"gaussian"``.

    Example:
        >>> estimator = Hutchinson("rademacher")
        >>> estimator
        Hutchinson(noise='rademacher')
    """

    noise: str = "rademacher"
    exact = False

    def __post_init__(self) -> None:
        if self.noise not in ("rademacher", "gaussian"):
            raise ValueError(f"noise must be 'rademacher' or 'gaussian', got {self.noise!r}")

    def init(self, z: Tensor) -> Tensor:
        """Draw the probe noise for one solve, shaped like ``z``."""
        if self.noise == "gaussian":
            return torch.randn_like(z)
        return torch.randint_like(z, 0, 2).mul_(2).sub_(1)

    def __call__(
        self,
        field: Field,
        t: Tensor,
        z: Tensor,
        context: Tensor | None,
        noise: Tensor | None,
        frobenius: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Return ``(f, trace estimate, Frobenius estimate or None)`` for the solve's ``noise``."""
        if noise is None:
            raise ValueError("Hutchinson needs the per-solve noise from Hutchinson.init(z)")
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = _grad_input(z)
            f = _call_field(field, t, z, context)
            (vjp,) = torch.autograd.grad(f, z, noise, create_graph=create_graph)
        if not create_graph:
            f, vjp = f.detach(), vjp.detach()
        div = (vjp * noise).sum(-1)
        return f, div, vjp.pow(2).sum(-1) if frobenius else None
