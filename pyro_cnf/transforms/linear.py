r"""Linear flow layers Pyro lacks, and a module wrapper for the inverse of a flow.

* :class:`ActNorm`: an elementwise affine map with data-dependent initialisation (Glow).
* :class:`LULinear`: an invertible dense linear map in LU form (Glow's invertible 1x1 convolution
  for vectors), with :math:`O(d)` log-determinant and triangular-solve inverse.
* :class:`LogLinearAutoregressive`: Pyro's affine autoregressive layer with a *linear* conditioner,
  :math:`y_i = x_i e^{(A x)_i} + (C x)_i` for strictly lower-triangular :math:`A, C`: the scale of
  each coordinate is the exponential of a linear function of the earlier ones, the shape of a
  centered hierarchical model (Neal's funnel), without the saturation of a neural conditioner.
* :class:`InverseTransformModule`: the inverse of a ``TransformModule`` *as* a ``TransformModule``,
  so that its parameters stay registered (Pyro's ``.inv`` is not an ``nn.Module``). For example the
  masked autoregressive flow (MAF) is the inverse of Pyro's IAF-style ``AffineAutoregressive``.

All map base samples to data (the forward call), act on event shape ``(d,)`` and accept any batch
shape ``(..., d)``. Each caches its last ``(x, y)`` pair (``cache_size=1``) like Pyro's
transforms, but drops it once stale: after an in-place change of its parameters (an optimizer
step), a switch between ``.train()`` and ``.eval()``, or for a grad-enabled call on a pair computed
without grad. Scoring the same data tensor at every training step is therefore correct without
``clear_cache()``.

References:
    | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018),
      https://arxiv.org/abs/1807.03039
    | Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017),
      https://arxiv.org/abs/1705.07057
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from pyro.distributions.transforms import AffineAutoregressive
from torch import Tensor, nn
from torch.distributions import Transform

from .._checks import check_positive_int, check_vector
from ._cache import StampedCacheMixin

__all__ = [
    "ActNorm",
    "InverseTransformModule",
    "LULinear",
    "LinearAutoregressiveNN",
    "LogLinearAutoregressive",
    "actnorm",
    "log_linear_autoregressive",
    "lu_linear",
]


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Run with torch's default dtype set to ``dtype``.

    Pyro's ``AffineAutoregressive._inverse`` allocates its work tensor in the default dtype, so a
    float64 MAF sample (or IAF or :class:`LogLinearAutoregressive` inverse) fails under a
    float32 default; this works around it.
    """
    previous = torch.get_default_dtype()
    if dtype == previous or dtype not in (torch.float32, torch.float64):
        yield
        return
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class ActNorm(StampedCacheMixin, TransformModule):
    r"""Activation normalization: :math:`y = x \odot e^{s} + m`, with data-dependent init.

    The log-determinant is :math:`\sum_i s_i`, the same for every point.

    **Data-dependent initialisation.** The first call made in training mode sets :math:`m, s`
    from the batch it receives (statistics over all batch dimensions, population standard
    deviation), then sets the ``initialized`` buffer:

    * an inverse call on data :math:`y` (scoring): :math:`m = \operatorname{mean}(y)`,
      :math:`s = \log \operatorname{sd}(y)`, so the inverse standardizes the data;
    * a forward call on :math:`x`: :math:`s = -\log \operatorname{sd}(x)`,
      :math:`m = -\operatorname{mean}(x)\, e^{s}`, so the output is standardized.

    Degenerate batches are handled without NaN or inf: a column whose standard deviation is below
    :math:`\sqrt{\epsilon}\max(1, |\text{mean}|)` (:math:`\epsilon` the dtype's machine epsilon)
    is only centred (scale 1), and a batch of a single point leaves the identity in place (the
    layer is still marked initialized). Calls in eval mode never initialise. ``initialized`` is a
    buffer, so it travels with ``state_dict``: a loaded layer is not re-initialised. Pass
    ``data_init=False`` to start from the identity and skip all of this.

    Arguments:
        input_dim: Event dimension :math:`d`.
        data_init: Initialise from the first training-mode batch.

    Example:
        >>> layer = ActNorm(2)
        >>> data = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
        >>> z = layer.inv(data)  # first call: initialises, then standardizes
        >>> z.detach().round(decimals=4)
        tensor([[-1., -1.],
                [ 1.,  1.]])
        >>> bool(layer.initialized)
        True
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(self, input_dim: int, data_init: bool = True) -> None:
        super().__init__(cache_size=1)
        check_positive_int("input_dim", input_dim)
        self.input_dim = input_dim
        self.loc = nn.Parameter(torch.zeros(input_dim))
        self.log_scale = nn.Parameter(torch.zeros(input_dim))
        self.register_buffer("initialized", torch.tensor(not data_init))

    def extra_repr(self) -> str:  # noqa: D102
        return f"input_dim={self.input_dim}, initialized={bool(self.initialized)}"

    __repr__ = nn.Module.__repr__

    @torch.no_grad()
    def _initialize(self, z: Tensor, inverse: bool) -> None:
        self.initialized.fill_(True)
        flat = z.detach().reshape(-1, self.input_dim).to(self.loc.dtype)
        if flat.shape[0] < 2:
            return
        mean = flat.mean(0)
        std = flat.std(0, correction=0)
        floor = math.sqrt(torch.finfo(flat.dtype).eps) * mean.abs().clamp(min=1.0)
        std = torch.where(std > floor, std, torch.ones_like(std))
        if inverse:
            self.loc.copy_(mean)
            self.log_scale.copy_(std.log())
        else:
            self.log_scale.copy_(-std.log())
            self.loc.copy_(-mean / std)

    def _pending(self) -> bool:
        return self.training and not bool(self.initialized)

    def _maybe_initialize(self, z: Tensor, inverse: bool) -> None:
        if self._pending():
            self._initialize(z, inverse)

    def _call(self, x: Tensor) -> Tensor:
        check_vector("ActNorm input", x, self.input_dim)
        self._maybe_initialize(x, inverse=False)
        return x * self.log_scale.exp() + self.loc

    def _inverse(self, y: Tensor) -> Tensor:
        check_vector("ActNorm value", y, self.input_dim)
        self._maybe_initialize(y, inverse=True)
        return (y - self.loc) * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\sum_i s_i`, broadcast to the batch shape of ``x``."""
        return self.log_scale.sum().expand(x.shape[:-1])

    __hash__ = TransformModule.__hash__


class LULinear(StampedCacheMixin, TransformModule):
    r"""An invertible linear map :math:`y = W x + c` with :math:`W` in LU form.

    .. math::
        W = P\, L\, (U + \operatorname{diag}(\sigma \odot e^{v})),
        \qquad \log\lvert\det W\rvert = \textstyle\sum_i v_i,

    with :math:`P` a fixed permutation, :math:`L` unit lower-triangular, :math:`U` strictly upper
    triangular and :math:`\sigma \in \{\pm 1\}^d` a fixed sign vector (buffers ``permutation``
    and ``diag_sign``). The inverse is two triangular solves. :math:`W` starts as the LU
    factorisation of a random orthogonal matrix (drawn from torch's global generator), so it is
    perfectly conditioned and :math:`\log\lvert\det W\rvert = 0`; :math:`c` starts at zero.

    Arguments:
        input_dim: Event dimension :math:`d`.

    Example:
        >>> layer = LULinear(3)
        >>> x = torch.randn(5, 3)
        >>> bool(torch.allclose(layer.inv(layer(x).clone()), x, atol=1e-5))
        True
        >>> layer.log_abs_det_jacobian(x, layer(x)).shape
        torch.Size([5])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int) -> None:
        super().__init__(cache_size=1)
        check_positive_int("input_dim", input_dim)
        self.input_dim = input_dim
        q, _ = torch.linalg.qr(torch.randn(input_dim, input_dim))
        perm, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        # (P v)_i = v[permutation[i]]
        self.register_buffer("permutation", perm.argmax(-1))
        self.register_buffer("diag_sign", diag.sign())
        self.lower = nn.Parameter(lower.tril(-1))
        self.upper = nn.Parameter(upper.triu(1))
        self.log_abs_diag = nn.Parameter(diag.abs().log())
        self.bias = nn.Parameter(torch.zeros(input_dim))

    def extra_repr(self) -> str:  # noqa: D102
        return f"input_dim={self.input_dim}"

    __repr__ = nn.Module.__repr__

    def _factors(self) -> tuple[Tensor, Tensor]:
        """``(L, U + diag(s))``: the unit lower and the upper triangular factor."""
        eye = torch.eye(self.input_dim, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.diag_sign * self.log_abs_diag.exp())
        return lower, upper

    @property
    def weight(self) -> Tensor:
        r"""The matrix :math:`W = P L (U + \operatorname{diag}(\sigma \odot e^{v}))`."""
        lower, upper = self._factors()
        return (lower @ upper)[self.permutation]

    def _call(self, x: Tensor) -> Tensor:
        check_vector("LULinear input", x, self.input_dim)
        return F.linear(x, self.weight, self.bias)

    def _inverse(self, y: Tensor) -> Tensor:
        check_vector("LULinear value", y, self.input_dim)
        lower, upper = self._factors()
        z = (y - self.bias)[..., torch.argsort(self.permutation)]  # P^T (y - c)
        rows = z.reshape(-1, self.input_dim)
        # Row-vector solves: v L^T = z, then x (U + diag s)^T = v.
        rows = torch.linalg.solve_triangular(
            lower.mT, rows, upper=True, left=False, unitriangular=True
        )
        rows = torch.linalg.solve_triangular(upper.mT, rows, upper=False, left=False)
        return rows.reshape(z.shape)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\sum_i v_i`, broadcast to the batch shape of ``x``."""
        return self.log_abs_diag.sum().expand(x.shape[:-1])

    __hash__ = TransformModule.__hash__


class LinearAutoregressiveNN(nn.Module):
    r"""A linear autoregressive conditioner: ``x -> (C x, A x)`` with strictly lower-triangular :math:`A, C`.

    The conditioner of :class:`LogLinearAutoregressive`, in the ``(mean, log_scale)`` form Pyro's
    ``AffineAutoregressive`` expects (output :math:`i` depends on inputs :math:`j < i` only, in
    the given order: ``permutation`` is the identity). Both matrices start at zero.

    Arguments:
        input_dim: Event dimension :math:`d`.

    Example:
        >>> arn = LinearAutoregressiveNN(3)
        >>> mean, log_scale = arn(torch.ones(3))
        >>> mean.tolist(), log_scale.tolist()
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    """

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        check_positive_int("input_dim", input_dim)
        self.input_dim = input_dim
        self.shift_weight = nn.Parameter(torch.zeros(input_dim, input_dim))
        self.log_scale_weight = nn.Parameter(torch.zeros(input_dim, input_dim))
        self.register_buffer("permutation", torch.arange(input_dim))

    def extra_repr(self) -> str:  # noqa: D102
        return f"input_dim={self.input_dim}"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(C x, A x)`` with the strictly lower triangles of the weights."""
        return (
            F.linear(x, self.shift_weight.tril(-1)),
            F.linear(x, self.log_scale_weight.tril(-1)),
        )


class LogLinearAutoregressive(StampedCacheMixin, AffineAutoregressive):
    r"""An affine autoregressive layer whose shift and log-scale are linear in the earlier coordinates.

    .. math::
        y_i = x_i\, e^{s_i(x)} + \textstyle\sum_{j<i} C_{ij} x_j,
        \qquad s_i(x) = \sum_{j<i} A_{ij} x_j,
        \qquad \log\lvert\det \partial y/\partial x\rvert = \textstyle\sum_i s_i(x).

    Pyro's ``AffineAutoregressive`` with a :class:`LinearAutoregressiveNN` conditioner (Pyro's
    own conditioners are MLPs); the coordinates keep their order. It starts as the identity.

    **Why.** In a centered hierarchical model, :math:`\theta_j \sim \mathcal N(\mu, \tau)` with
    :math:`\log\tau` earlier in the latent vector, the posterior's scale along :math:`\theta`
    is about :math:`e^{\log\tau}` (Neal's funnel). This layer represents that exactly, with
    :math:`A_{\theta,\log\tau} = 1` and :math:`C_{\theta,\mu} = 1` (the non-centered
    parametrization, learned). A neural conditioner or a CNF field with bounded activations
    follows the scale only over the range it was trained on, and falls short in the funnel's
    neck, where the largest importance weights then sit.

    The log-scale is clamped to ``[-log_scale_clip, log_scale_clip]`` (Pyro's clamp, which keeps
    gradients), a guard against overflow far in a heavy-tailed base; the map stays a bijection
    with the stated log-determinant. The inverse is sequential (:math:`d` conditioner passes).

    Arguments:
        input_dim: Event dimension :math:`d`.
        log_scale_clip: Bound on :math:`|s_i|`.

    Example:
        >>> layer = LogLinearAutoregressive(2)
        >>> with torch.no_grad():
        ...     layer.arn.log_scale_weight[1, 0] = 1.0  # y_1 = x_1 exp(x_0)
        >>> x = torch.tensor([2.0, 3.0])
        >>> y = layer(x)
        >>> bool(torch.isclose(y[1], 3.0 * torch.exp(torch.tensor(2.0))))
        True
        >>> layer.log_abs_det_jacobian(x, y).item()  # s_1 = x_0
        2.0
    """

    def __init__(self, input_dim: int, log_scale_clip: float = 15.0) -> None:
        if not (isinstance(log_scale_clip, (int, float)) and log_scale_clip > 0):
            raise ValueError(f"log_scale_clip must be positive, got {log_scale_clip!r}")
        super().__init__(
            LinearAutoregressiveNN(input_dim),
            log_scale_min_clip=-float(log_scale_clip),
            log_scale_max_clip=float(log_scale_clip),
        )
        self.input_dim = input_dim

    __repr__ = nn.Module.__repr__

    def _call(self, x: Tensor) -> Tensor:
        check_vector("LogLinearAutoregressive input", x, self.input_dim)
        return super()._call(x)

    def _inverse(self, y: Tensor) -> Tensor:
        check_vector("LogLinearAutoregressive value", y, self.input_dim)
        with default_dtype(y.dtype):
            return super()._inverse(y)

    __hash__ = TransformModule.__hash__


class InverseTransformModule(StampedCacheMixin, TransformModule):
    r"""The inverse of a bijective ``TransformModule``, itself a ``TransformModule``.

    Forward calls run ``module``'s inverse, inverse calls run its forward map, and
    :math:`\log\lvert\det \partial y/\partial x\rvert` is minus ``module``'s log-det at the swapped
    pair. ``module`` is registered as the submodule ``module``, so its parameters are found by
    ``parameters()``, Pyro's param store and ``ComposeTransformModule`` (they are lost with
    ``module.inv``, which is not an ``nn.Module``). Both this wrapper and ``module`` keep their
    own cache, so ``log_abs_det_jacobian`` right after a call reuses ``module``'s cached pair.

    Arguments:
        module: A bijective transform that is an ``nn.Module``.

    Example:
        >>> from pyro.distributions.transforms import affine_autoregressive
        >>> maf = InverseTransformModule(affine_autoregressive(3))  # MAF: scoring is one pass
        >>> len(list(maf.parameters())) > 0
        True
        >>> y = torch.randn(4, 3)
        >>> bool(torch.allclose(maf(maf.inv(y)), y, atol=1e-5))
        True
    """

    bijective = True

    def __init__(self, module: Transform) -> None:
        if not (isinstance(module, Transform) and isinstance(module, nn.Module)):
            raise TypeError(
                "InverseTransformModule needs a transform that is an nn.Module "
                f"(a TransformModule), got {type(module).__name__}"
            )
        if not module.bijective:
            raise ValueError(f"{type(module).__name__} is not bijective and has no inverse")
        super().__init__(cache_size=1)
        self.module = module

    __repr__ = nn.Module.__repr__

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        """The inverted module's codomain."""
        return self.module.codomain

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        """The inverted module's domain."""
        return self.module.domain

    @property
    def sign(self) -> int:  # type: ignore[override]
        """The inverted module's sign (the sign of a monotone map is that of its inverse)."""
        return self.module.sign

    def _call(self, x: Tensor) -> Tensor:
        self.module.clear_cache()  # module's cached pair is always that of our last call
        return self.module.inv(x)  # not _inv_call: ComposeTransform inverts only through .inv

    def _inverse(self, y: Tensor) -> Tensor:
        self.module.clear_cache()
        return self.module(y)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`-\log\lvert\det \partial x/\partial y\rvert`, from ``module`` at the pair ``(y, x)``."""
        self._drop_stale_cache()
        return -self.module.log_abs_det_jacobian(y, x)

    def clear_cache(self) -> None:
        """Drop the cached pair, here and in ``module``."""
        self._cached_x_y = (None, None)
        self.module.clear_cache()

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        """The inverted module's ``inverse_shape``."""
        return self.module.inverse_shape(shape)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        """The inverted module's ``forward_shape``."""
        return self.module.forward_shape(shape)

    __hash__ = TransformModule.__hash__


def actnorm(input_dim: int, data_init: bool = True) -> ActNorm:
    """Build an :class:`ActNorm` layer (Pyro-style factory).

    Arguments:
        input_dim: Event dimension.
        data_init: Initialise from the first training-mode batch.

    Example:
        >>> actnorm(3, data_init=False)(torch.ones(3))
        tensor([1., 1., 1.], grad_fn=<AddBackward0>)
    """
    return ActNorm(input_dim, data_init=data_init)


def lu_linear(input_dim: int) -> LULinear:
    """Build an :class:`LULinear` layer (Pyro-style factory).

    Arguments:
        input_dim: Event dimension.

    Example:
        >>> lu_linear(3).weight.shape
        torch.Size([3, 3])
    """
    return LULinear(input_dim)


def log_linear_autoregressive(
    input_dim: int, log_scale_clip: float = 15.0
) -> LogLinearAutoregressive:
    """Build a :class:`LogLinearAutoregressive` layer (Pyro-style factory).

    Arguments:
        input_dim: Event dimension.
        log_scale_clip: Bound on the absolute log-scale.

    Example:
        >>> x = torch.randn(4, 3)
        >>> bool(torch.equal(log_linear_autoregressive(3)(x), x))  # starts as the identity
        True
    """
    return LogLinearAutoregressive(input_dim, log_scale_clip)
