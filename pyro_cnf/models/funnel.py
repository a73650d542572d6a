r"""Neal's funnel (Neal 2003, "Slice sampling", §8), a prior with no data.

.. math::

    v \sim \mathcal N(0, 3^2), \qquad x_i \mid v \sim \mathcal N(0, e^{v}), \quad i = 1, \dots, d - 1,

i.e. :math:`x_i` has standard deviation :math:`e^{v/2}`. Nothing is observed, so the "posterior" is
the normalized prior: :math:`\log Z = 0`. Its moments are analytic: :math:`E v = 0`,
:math:`\mathrm{sd}\, v = 3`, :math:`E x_i = 0` and
:math:`\mathrm{Var}\, x_i = E[\mathrm{Var}(x_i \mid v)] = E[e^v] = e^{9/2}` (the log-normal mean),
so :math:`\mathrm{sd}\, x_i = e^{9/4} \approx 9.49`. The scale of :math:`x` spans
:math:`e^{\pm 4.5}` within :math:`\pm 3` sd of :math:`v`: the neck is the hard part.

Reference: R. M. Neal, "Slice sampling", Annals of Statistics 31(3), 2003.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from .._checks import check_positive_int
from ._base import BayesianModel, Reference, shared

__all__ = ["funnel"]


def _reference(dim: int) -> Reference:
    zero = torch.zeros((), dtype=torch.float64)
    mean = {"v": zero, "x": torch.zeros(dim - 1, dtype=torch.float64)}
    sd = {
        "v": zero + 3.0,
        "x": torch.full((dim - 1,), math.exp(9 / 4), dtype=torch.float64),
    }
    return Reference(0.0, mean, sd, "analytic")


def funnel(dim: int = 10) -> BayesianModel:
    r"""Neal's funnel in ``dim`` dimensions: latent sites ``v`` (scalar) and ``x`` (shape ``(dim - 1,)``).

    Arguments:
        dim: Total dimension, :math:`v` plus ``dim - 1`` coordinates of :math:`x`; at least 2.
            The zoo's ``"funnel"`` has ``dim=10``; other sizes are named ``"funnel_{dim}d"``.

    Raises:
        ValueError: If ``dim`` is not an integer >= 2.

    Example:
        >>> m = funnel(dim=3)
        >>> m.name, m.latent_dim, m.reference.sd["x"]
        ('funnel_3d', 3, tensor([9.4877, 9.4877], dtype=torch.float64))
    """
    check_positive_int("dim", dim)
    if dim < 2:
        raise ValueError(f"funnel needs dim >= 2 (v and at least one x), got {dim}")

    def model() -> None:
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        scale = torch.exp(v / 2).unsqueeze(-1)
        pyro.sample("x", dist.Normal(torch.zeros(dim - 1), scale).to_event(1))

    name = "funnel" if dim == 10 else f"funnel_{dim}d"
    return shared(
        ("funnel", dim),
        lambda: BayesianModel(
            name,
            model,
            ("v", "x"),
            f"Neal's funnel, dim = {dim}: v ~ N(0, 3), x_i ~ N(0, exp(v / 2)) for "
            f"i < {dim - 1}. No data: log Z = 0, analytic moments.",
            lambda: _reference(dim),
        ),
    )
