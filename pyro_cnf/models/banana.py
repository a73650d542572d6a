r"""The banana: a Gaussian bent along a parabola (Haario, Saksman and Tamminen 1999, "twisted Gaussian").

.. math::

    x_0 \sim \mathcal N(0, 10^2), \qquad x_1 \mid x_0 \sim \mathcal N\big(b (x_0^2 - 100), 1\big),
    \quad b = 0.03.

No data: :math:`\log Z = 0`. Moments are analytic: :math:`E x_0 = 0`, :math:`\mathrm{sd}\, x_0 = 10`;
:math:`E x_1 = b (E x_0^2 - 100) = 0` and, by the law of total variance,
:math:`\mathrm{Var}\, x_1 = 1 + b^2 \mathrm{Var}(x_0^2) = 1 + b^2 \cdot 2 \cdot 10^4 = 19`.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from ._base import BayesianModel, Reference, shared

__all__ = ["BANANA_CURVATURE", "banana"]

BANANA_CURVATURE = 0.03
"""The bend :math:`b`."""


def _reference() -> Reference:
    zero = torch.zeros((), dtype=torch.float64)
    var_x1 = 1 + BANANA_CURVATURE**2 * 2 * 10.0**4
    return Reference(
        0.0,
        {"x0": zero, "x1": zero.clone()},
        {"x0": zero + 10.0, "x1": zero + math.sqrt(var_x1)},
        "analytic",
    )


def _model() -> None:
    x0 = pyro.sample("x0", dist.Normal(0.0, 10.0))
    pyro.sample("x1", dist.Normal(BANANA_CURVATURE * (x0**2 - 100.0), 1.0))


def banana() -> BayesianModel:
    r"""The banana: latent sites ``x0`` and ``x1`` (scalars); :math:`\mathrm{sd}\, x_1 = \sqrt{19}`.

    Example:
        >>> m = banana()
        >>> round(float(m.reference.sd["x1"]) ** 2, 6)
        19.0
    """
    return shared(
        ("banana",),
        lambda: BayesianModel(
            "banana",
            _model,
            ("x0", "x1"),
            "Banana: x0 ~ N(0, 10), x1 ~ N(0.03 (x0^2 - 100), 1). No data: log Z = 0, "
            "analytic moments.",
            _reference,
        ),
    )
