r"""The 2-D test energies of Rezende & Mohamed (2015), made proper by a wide Gaussian prior.

.. math::

    p(z) \propto \mathcal N(z; 0, s^2 I)\, e^{-U(z)}, \qquad z \in \mathbb R^2, \quad s = 4,

with :math:`w_1 = \sin(2\pi z_1 / 4)`, :math:`w_2 = 3 e^{-\frac12 ((z_1 - 1)/0.6)^2}`,
:math:`w_3 = 3\,\sigma((z_1 - 1)/0.3)` and

.. math::

    U_1 &= \tfrac12 \big((\lVert z\rVert - 2)/0.4\big)^2
           - \ln\big(e^{-\frac12 ((z_1 - 2)/0.6)^2} + e^{-\frac12 ((z_1 + 2)/0.6)^2}\big), \\
    U_2 &= \tfrac12 \big((z_2 - w_1)/0.4\big)^2, \\
    U_3 &= -\ln\big(e^{-\frac12 ((z_2 - w_1)/0.35)^2} + e^{-\frac12 ((z_2 - w_1 + w_2)/0.35)^2}\big), \\
    U_4 &= -\ln\big(e^{-\frac12 ((z_2 - w_1)/0.4)^2} + e^{-\frac12 ((z_2 - w_1 + w_3)/0.35)^2}\big).

**Why the prior.** :math:`e^{-U_2}`, :math:`e^{-U_3}` and :math:`e^{-U_4}` do not decay along
:math:`z_1`: they are improper on :math:`\mathbb R^2` and their :math:`\log Z` grows with any box
one integrates over. The Gaussian factor :math:`\mathcal N(0, 4^2 I)` makes all four proper without
changing their shape near the origin (:math:`U_1` is confined to the ring :math:`\lVert z\rVert
\approx 2`, where the prior barely varies; for :math:`U_2`–:math:`U_4` it sets the spread along
:math:`z_1`). In the model it is the prior of the latent site ``z`` and :math:`-U` enters through
``pyro.factor("energy", -U(z))``, so :math:`\log Z = \log \int \mathcal N(z; 0, 4^2 I)\, e^{-U(z)}
\, dz`.

The reference is a 2-D trapezoid rule on a box holding all but a negligible mass (:math:`\lesssim
e^{-30}`), in float64.

Reference: D. J. Rezende and S. Mohamed, "Variational inference with normalizing flows", ICML 2015,
`arXiv:1505.05770 <https://arxiv.org/abs/1505.05770>`_ (Table 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ._base import BayesianModel, Reference, float64, shared
from ._quadrature import Box, integrate_2d

__all__ = [
    "ENERGY_PRIOR_SCALE",
    "energy",
    "energy_quadrature",
    "energy_u1",
    "energy_u2",
    "energy_u3",
    "energy_u4",
]

ENERGY_PRIOR_SCALE = 4.0
"""Standard deviation :math:`s` of the Gaussian prior on each coordinate of ``z``."""


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z1 / 4)


def _w2(z1: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)


def _w3(z1: Tensor) -> Tensor:
    return 3 * torch.sigmoid((z1 - 1) / 0.3)


def _neg_log_sum_exp(a: Tensor, b: Tensor) -> Tensor:
    """-log(e^a + e^b), stable."""
    return -torch.logaddexp(a, b)


def _u1(z1: Tensor, z2: Tensor) -> Tensor:
    radius = torch.sqrt(z1**2 + z2**2)
    return 0.5 * ((radius - 2) / 0.4) ** 2 + _neg_log_sum_exp(
        -0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2
    )


def _u2(z1: Tensor, z2: Tensor) -> Tensor:
    return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2


def _u3(z1: Tensor, z2: Tensor) -> Tensor:
    return _neg_log_sum_exp(
        -0.5 * ((z2 - _w1(z1)) / 0.35) ** 2, -0.5 * ((z2 - _w1(z1) + _w2(z1)) / 0.35) ** 2
    )


def _u4(z1: Tensor, z2: Tensor) -> Tensor:
    return _neg_log_sum_exp(
        -0.5 * ((z2 - _w1(z1)) / 0.4) ** 2, -0.5 * ((z2 - _w1(z1) + _w3(z1)) / 0.35) ** 2
    )


_ENERGIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "u1": _u1,
    "u2": _u2,
    "u3": _u3,
    "u4": _u4,
}

# Boxes hold > 7.5 sd of every Gaussian factor; U2-U4 spread along z1 as the prior does (8 sd).
_BOXES: dict[str, Box] = {
    "u1": ((-6.0, 6.0), (-6.0, 6.0)),
    "u2": ((-32.0, 32.0), (-8.0, 6.0)),
    "u3": ((-32.0, 32.0), (-8.0, 6.0)),
    "u4": ((-32.0, 32.0), (-8.0, 6.0)),
}
_NUM_NODES: dict[str, tuple[int, int]] = {
    "u1": (401, 401),
    "u2": (1025, 401),
    "u3": (1025, 401),
    "u4": (1025, 401),
}


def _check_name(name: str) -> None:
    if name not in _ENERGIES:
        raise ValueError(f"unknown energy {name!r}; valid names: {', '.join(_ENERGIES)}")


def energy(name: str, z: Tensor) -> Tensor:
    r"""The energy :math:`U(z)` called ``name`` (``"u1"`` ... ``"u4"``), for ``z`` of shape ``(..., 2)``.

    Example:
        >>> energy("u2", torch.tensor([0.0, 0.0]))
        tensor(0.)
    """
    _check_name(name)
    return _ENERGIES[name](z[..., 0], z[..., 1])


def _log_density(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    prior = dist.Normal(0.0, ENERGY_PRIOR_SCALE)

    def log_density(z1: Tensor, z2: Tensor) -> Tensor:
        return prior.log_prob(z1) + prior.log_prob(z2) - _ENERGIES[name](z1, z2)

    return log_density


def energy_quadrature(
    name: str, num_nodes: tuple[int, int] | None = None, box: Box | None = None
) -> Reference:
    r"""Log Z and posterior moments of ``z`` for energy ``name`` by the trapezoid rule.

    Arguments:
        name: ``"u1"`` ... ``"u4"``.
        num_nodes: Nodes along :math:`z_1` and :math:`z_2` (default: the zoo's, converged to
            ~1e-12; see the tests).
        box: ``((z1_lo, z1_hi), (z2_lo, z2_hi))`` (default: the zoo's).

    Example:
        >>> ref = energy_quadrature("u2")
        >>> ref.mean["z"].shape, round(float(ref.sd["z"][0]), 2)
        (torch.Size([2]), 4.0)
    """
    _check_name(name)
    num_nodes = _NUM_NODES[name] if num_nodes is None else num_nodes
    box = _BOXES[name] if box is None else box
    with float64():
        grid = integrate_2d(_log_density(name), box, num_nodes)
        mean_1, sd_1 = grid.mean_sd(grid.x)
        mean_2, sd_2 = grid.mean_sd(grid.y)
    kind = f"quadrature ({num_nodes[0]} x {num_nodes[1]} trapezoid nodes over z)"
    details = {"num_nodes": num_nodes, "box": box, "prior_scale": ENERGY_PRIOR_SCALE}
    return Reference(
        grid.log_Z,
        {"z": torch.stack([mean_1, mean_2])},
        {"z": torch.stack([sd_1, sd_2])},
        kind,
        details,
    )


def _energy_model(name: str) -> BayesianModel:
    _check_name(name)

    def model() -> None:
        z = pyro.sample("z", dist.Normal(torch.zeros(2), ENERGY_PRIOR_SCALE).to_event(1))
        pyro.factor("energy", -_ENERGIES[name](z[..., 0], z[..., 1]))

    return BayesianModel(
        f"energy_{name}",
        model,
        ("z",),
        f"Rezende & Mohamed (2015) energy {name.upper()} times a N(0, {ENERGY_PRIOR_SCALE:g}^2 I) "
        "prior on z (2-D). Reference: 2-D quadrature.",
        lambda: energy_quadrature(name),
    )


def energy_u1() -> BayesianModel:
    r"""Energy :math:`U_1` (a ring split in two halves) with the :math:`\mathcal N(0, 4^2 I)` prior; site ``z``.

    Example:
        >>> m = energy_u1()
        >>> m.latent_sites, m.reference_kind
        (('z',), 'quadrature (401 x 401 trapezoid nodes over z)')
    """
    return shared(("energy", "u1"), lambda: _energy_model("u1"))


def energy_u2() -> BayesianModel:
    r"""Energy :math:`U_2` (a sine-shaped ridge) with the :math:`\mathcal N(0, 4^2 I)` prior; site ``z``."""
    return shared(("energy", "u2"), lambda: _energy_model("u2"))


def energy_u3() -> BayesianModel:
    r"""Energy :math:`U_3` (a ridge that splits in two) with the :math:`\mathcal N(0, 4^2 I)` prior; site ``z``."""
    return shared(("energy", "u3"), lambda: _energy_model("u3"))


def energy_u4() -> BayesianModel:
    r"""Energy :math:`U_4` (two ridges joined by a step) with the :math:`\mathcal N(0, 4^2 I)` prior; site ``z``."""
    return shared(("energy", "u4"), lambda: _energy_model("u4"))
