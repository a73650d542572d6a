r"""Two-dimensional quadrature for reference answers (float64, log domain).

The trapezoid rule on a uniform grid: for a smooth integrand that is negligible at the edges of the
box it converges geometrically in the number of nodes (the "exponentially convergent trapezoid
rule"), so halving the grid and comparing is an honest error estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Box = tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True, eq=False)
class Grid:
    """A normalized density on a 2-D grid.

    Attributes:
        x: First coordinate at every node, shape ``(n1, n2)``.
        y: Second coordinate at every node, shape ``(n1, n2)``.
        prob: Quadrature weight times density over :math:`Z`: sums to one.
        log_Z: Log of the integral of the unnormalized density.
    """

    x: Tensor
    y: Tensor
    prob: Tensor
    log_Z: float

    def expect(self, values: Tensor) -> Tensor:
        """:math:`E[g]` for ``values`` of :math:`g` at the nodes, shape ``(..., n1, n2)``."""
        return (self.prob * values).sum((-2, -1))

    def mean_sd(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of :math:`g` (centred second moment, no cancellation)."""
        mean = self.expect(values)
        var = self.expect((values - mean[..., None, None]) ** 2)
        return mean, var.sqrt()


def _trapezoid(lo: float, hi: float, n: int) -> tuple[Tensor, Tensor]:
    nodes = torch.linspace(lo, hi, n, dtype=torch.float64)
    step = (hi - lo) / (n - 1)
    log_w = torch.full((n,), math.log(step), dtype=torch.float64)
    log_w[[0, -1]] = math.log(step / 2)
    return nodes, log_w


def integrate_2d(
    log_density: Callable[[Tensor, Tensor], Tensor], box: Box, num_nodes: tuple[int, int]
) -> Grid:
    """Integrate ``exp(log_density(x, y))`` over ``box`` with the trapezoid rule.

    Arguments:
        log_density: Unnormalized log density, evaluated on float64 grids of shape ``(n1, n2)``.
        box: ``((x_lo, x_hi), (y_lo, y_hi))``.
        num_nodes: ``(n1, n2)``, nodes per axis (edges included).
    """
    (x_lo, x_hi), (y_lo, y_hi) = box
    x, log_wx = _trapezoid(x_lo, x_hi, num_nodes[0])
    y, log_wy = _trapezoid(y_lo, y_hi, num_nodes[1])
    grid_x, grid_y = torch.meshgrid(x, y, indexing="ij")
    log_f = log_density(grid_x, grid_y) + log_wx[:, None] + log_wy[None, :]
    log_Z = torch.logsumexp(log_f.flatten(), 0)
    return Grid(grid_x, grid_y, torch.exp(log_f - log_Z), float(log_Z))


def max_change(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """Largest absolute difference between two dicts of tensors with the same keys."""
    return max(float((a[k] - b[k]).abs().max()) for k in a)
