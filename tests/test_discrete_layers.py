"""Discrete layers: invertible planar/radial, ActNorm, LULinear and InverseTransformModule (MAF).

One registry of layers with random parameters, and invariants run over all of it: inverse round
trip (a fresh inverse, not the cache), inverse log-det = -forward log-det, log-det vs ``slogdet``
of the autograd Jacobian, gradients through the inverse vs finite differences, state_dict round
trip. Then layer-specific checks: Pyro's forward is untouched, ActNorm's data-dependent init,
scoring fresh points with ``TransformedDistribution``, and clear errors.
"""

import io
import math

import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.distributions.transforms import Planar, Radial, affine_autoregressive
from torch.autograd import gradcheck
from torch.autograd.functional import jacobian

from pyro_cnf.transforms.linear import (
    ActNorm,
    InverseTransformModule,
    LULinear,
    actnorm,
    log_linear_autoregressive,
    lu_linear,
)
from pyro_cnf.transforms.planar_radial import (
    ConditionalInvertiblePlanar,
    ConditionalInvertibleRadial,
    InvertiblePlanar,
    InvertibleRadial,
    conditional_planar,
    conditional_radial,
    planar,
    radial,
)
from pyro_cnf.transforms.tails import ExponentialTails, exponential_tails

D = 3  # event dimension
C = 2  # context dimension
BATCH = (4, 2)  # point batch shape; conditional layers get two contexts, shape (2, C)


pytestmark = pytest.mark.float64


def _perturb(module, scale):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def _conditioned(module):
    return module.condition(torch.randn(2, C)), module


# name -> () -> (transform to call, nn.Module holding its parameters)
REGISTRY = {
    "planar": lambda: (lambda m: (m, m))(_perturb(planar(D), 0.7)),
    "radial": lambda: (lambda m: (m, m))(_perturb(radial(D), 0.7)),
    "conditional_planar": lambda: _conditioned(_perturb(conditional_planar(D, C, [8, 8]), 0.3)),
    "conditional_radial": lambda: _conditioned(_perturb(conditional_radial(D, C, [8, 8]), 0.3)),
    "actnorm": lambda: (lambda m: (m, m))(_perturb(actnorm(D, data_init=False), 0.5)),
    "lu_linear": lambda: (lambda m: (m, m))(_perturb(lu_linear(D), 0.3)),
    "log_linear_autoregressive": lambda: (lambda m: (m, m))(
        _perturb(log_linear_autoregressive(D), 0.5)
    ),
    "exponential_tails": lambda: (lambda m: (m, m))(_perturb(exponential_tails(D, 0.5), 0.5)),
    "maf": lambda: (lambda m: (m, m))(
        _perturb(InverseTransformModule(affine_autoregressive(D, hidden_dims=[8])), 0.1)
    ),
    "inverse_lu_linear": lambda: (lambda m: (m, m))(
        InverseTransformModule(_perturb(lu_linear(D), 0.3))
    ),
}
NAMES = list(REGISTRY)


def per_point_logdet(f, x):
    """slogdet of the diagonal blocks of the autograd Jacobian of a batched map; off-blocks must vanish."""
    batch = x.shape[:-1]
    n = batch.numel()
    jac = jacobian(f, x).reshape(n, D, n, D)
    idx = torch.arange(n)
    blocks = jac[idx, :, idx, :]
    off = jac.clone()
    off[idx, :, idx, :] = 0
    assert off.abs().max() < 1e-12, "a point's output depends on another point"
    sign, logabs = torch.linalg.slogdet(blocks)
    assert (sign != 0).all()
    return logabs.reshape(batch)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_uses_a_fresh_inverse(name):
    t, _ = REGISTRY[name]()
    x = torch.randn(*BATCH, D)
    y = t(x)
    assert y.shape == x.shape
    assert (t.inv(y.clone()) - x).abs().max() < 1e-6  # clone: a new object, so no cache hit
    y_fresh = 2 * torch.randn(*BATCH, D)
    x_fresh = t.inv(y_fresh)
    assert (t(x_fresh.clone()) - y_fresh).abs().max() < 1e-6


@pytest.mark.parametrize("name", ["planar", "radial", "actnorm", "lu_linear", "maf"])
def test_unbatched_points(name):
    t, _ = REGISTRY[name]()
    y = torch.randn(D)
    x = t.inv(y)
    assert x.shape == (D,)
    assert t.inv.log_abs_det_jacobian(y, x).shape == ()
    assert (t(x.clone()) - y).abs().max() < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_inverse_logdet_is_minus_forward_logdet(name):
    t, _ = REGISTRY[name]()
    y = 2 * torch.randn(*BATCH, D)
    x = t.inv(y)
    ladj_inverse = t.inv.log_abs_det_jacobian(y, x)  # from the inverse call's cache
    x2 = x.clone()
    ladj_forward = t.log_abs_det_jacobian(x2, t(x2))  # a fresh forward call
    assert ladj_inverse.shape == BATCH
    assert (ladj_inverse + ladj_forward).abs().max() < 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_logdet_matches_autograd_jacobian(name):
    t, _ = REGISTRY[name]()
    x = torch.randn(*BATCH, D)
    ladj = t.log_abs_det_jacobian(x, t(x))
    assert (ladj - per_point_logdet(lambda z: t(z), x)).abs().max() < 1e-8
    y = 2 * torch.randn(*BATCH, D)
    x_inv = t.inv(y)
    ladj_inv = t.log_abs_det_jacobian(x_inv, y)  # forward log-det of the inverse's pair
    assert (ladj_inv + per_point_logdet(lambda z: t.inv(z), y)).abs().max() < 1e-8


@pytest.mark.parametrize("name", NAMES)
def test_gradients_through_the_inverse_match_finite_differences(name):
    t, module = REGISTRY[name]()
    y = 2 * torch.randn(*BATCH, D)
    weights = torch.randn(*BATCH, D)

    def loss():
        fresh = y.clone()
        x = t.inv(fresh)
        return (weights * x).sum() + t.inv.log_abs_det_jacobian(fresh, x).sum()

    params = list(module.parameters())
    grads = torch.autograd.grad(loss(), params)
    assert all(g.abs().sum() > 0 for g in grads), "a parameter gets no gradient"
    h = 1e-6
    for p, g in zip(params, grads, strict=True):
        flat = p.data.view(-1)
        for i in torch.randperm(flat.numel())[:4].tolist():
            old = flat[i].item()
            with torch.no_grad():
                flat[i] = old + h
                plus = loss().item()
                flat[i] = old - h
                minus = loss().item()
                flat[i] = old
            fd = (plus - minus) / (2 * h)
            assert abs(fd - g.view(-1)[i].item()) < 1e-6 * (1 + abs(fd)), (p.shape, i)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_inverse_wrt_points(name):
    t, _ = REGISTRY[name]()
    y = torch.randn(2, D, requires_grad=True)

    def f(y):
        fresh = y.clone()
        x = t.inv(fresh)
        return x, t.inv.log_abs_det_jacobian(fresh, x)

    assert gradcheck(f, (y,))


@pytest.mark.parametrize("factory", [conditional_planar, conditional_radial])
def test_gradcheck_conditioned_inverse_wrt_context(factory):
    module = _perturb(factory(D, C, [8]), 0.3)
    y = torch.randn(2, D, requires_grad=True)
    context = torch.randn(2, C, requires_grad=True)

    def f(y, context):
        t = module.condition(context)
        x = t.inv(y.clone())
        return x, t.log_abs_det_jacobian(x, t.inv(y.clone()))

    assert gradcheck(f, (y, context))


def test_gradcheck_planar_and_radial_inverse_wrt_parameters():
    # A plain callable as the hypernetwork: the parameters are the gradcheck inputs.
    planar_params = (torch.randn(1), torch.randn(D), torch.randn(D))
    radial_params = (torch.randn(D), torch.randn(1), torch.randn(1))
    y = torch.randn(2, D)
    for cls, params in [
        (ConditionalInvertiblePlanar, planar_params),
        (ConditionalInvertibleRadial, radial_params),
    ]:

        def f(*params, cls=cls):
            t = cls(lambda context, params=params: params, input_dim=D).condition(torch.zeros(1))
            fresh = y.clone()
            x = t.inv(fresh)
            return x, t.inv.log_abs_det_jacobian(fresh, x)

        assert gradcheck(f, tuple(p.requires_grad_() for p in params))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    t, module = REGISTRY[name]()
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    t2, module2 = REGISTRY[name]()  # other random parameters
    module2.load_state_dict(torch.load(buffer, weights_only=True))
    if name.startswith("conditional"):  # same contexts
        t, t2 = module.condition(torch.ones(2, C)), module2.condition(torch.ones(2, C))
    y = torch.randn(*BATCH, D)
    assert torch.equal(t.inv(y), t2.inv(y))


@pytest.mark.parametrize("name", NAMES)
def test_cache_answers_the_last_pair_until_the_layer_changes(name):
    t, module = REGISTRY[name]()
    x = torch.randn(*BATCH, D)
    y = t(x)
    assert t.inv(y) is x  # the cached path: what sampling then scoring uses
    ladj = t.log_abs_det_jacobian(x, y)
    assert torch.equal(t.log_abs_det_jacobian(x, y), ladj)
    with torch.no_grad():
        y_no_grad = t(x.clone())
    x2 = x.clone()
    with torch.no_grad():
        t(x2)
    assert t(x2).requires_grad  # a pair computed without grad is not reused with grad
    # Scoring the same data tensor across optimizer steps needs no clear_cache().
    data = 2 * torch.randn(*BATCH, D)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    for _ in range(2):
        z = t.inv(data)
        loss = z.pow(2).sum() - t.inv.log_abs_det_jacobian(data, z).sum()
        optimizer.zero_grad()
        loss.backward()  # would fail on a stale cache: its graph was freed
        optimizer.step()
    z = t.inv(data)
    fresh = data.clone()
    assert torch.allclose(z, t.inv(fresh), atol=1e-12)
    assert torch.allclose(
        t.inv.log_abs_det_jacobian(data, z), t.inv.log_abs_det_jacobian(fresh, t.inv(fresh))
    )
    assert not torch.allclose(t(x), y_no_grad)  # the step changed the map
    module.eval()
    assert t.inv(data) is not z  # a train/eval switch drops the cache


# ---------------------------------------------------------------- planar and radial vs Pyro


@pytest.mark.parametrize(
    ("ours", "theirs"), [(InvertiblePlanar, Planar), (InvertibleRadial, Radial)]
)
def test_forward_and_its_logdet_are_pyros(ours, theirs):
    mine = _perturb(ours(D), 0.7)
    pyros = theirs(D)
    pyros.load_state_dict(mine.state_dict())
    x = torch.randn(*BATCH, D)
    y_mine, y_pyro = mine(x), pyros(x)
    assert torch.equal(y_mine, y_pyro)
    assert torch.equal(mine.log_abs_det_jacobian(x, y_mine), pyros.log_abs_det_jacobian(x, y_pyro))
    # The pair an inverse produced carries the log-det Pyro computes forward from its x.
    y = torch.randn(*BATCH, D)
    x_inv = mine.inv(y)
    ladj_pyro = pyros.log_abs_det_jacobian(x_inv, pyros(x_inv))
    assert (mine.log_abs_det_jacobian(x_inv, y) - ladj_pyro).abs().max() < 1e-12


@pytest.mark.parametrize("name", ["planar", "radial"])
def test_transformed_distribution_scores_fresh_points(name):
    t, _ = REGISTRY[name]()
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(D), 1.0).to_event(1), [t])
    sample = q.rsample((5,))
    cached = q.log_prob(sample)
    fresh = q.log_prob(sample.clone())  # Pyro's own classes raise KeyError here
    assert (cached - fresh).abs().max() < 1e-10
    assert torch.isfinite(q.log_prob(torch.randn(7, D))).all()


@pytest.mark.parametrize("factory", [conditional_planar, conditional_radial])
def test_conditional_transformed_distribution_scores_fresh_points(factory):
    module = _perturb(factory(D, C, [8, 8]), 0.3)
    base = dist.Normal(torch.zeros(2, D), 1.0).to_event(1)  # batch shape = the contexts'
    q = dist.ConditionalTransformedDistribution(base, [module]).condition(torch.randn(2, C))
    sample = q.rsample((5,))
    assert sample.shape == (5, 2, D)
    cached = q.log_prob(sample)
    fresh = q.log_prob(sample.clone())
    assert (cached - fresh).abs().max() < 1e-10


def test_planar_inverse_near_the_invertibility_boundary():
    flow = InvertiblePlanar(D)
    with torch.no_grad():
        flow.w.copy_(torch.tensor([1.0, 0.5, -0.5]))
        flow.u.copy_(-4.6 * flow.w / flow.w.pow(2).sum())  # w.u = -4.6: w.u_hat = -1 + 0.01
        flow.bias.fill_(0.3)
    assert (flow.u_hat(flow.u, flow.w) @ flow.w + 1) < 0.011
    x = 0.05 * torch.randn(50, D)  # near the hyperplane, where the map contracts most
    assert (flow.inv(flow(x).clone()) - x).abs().max() < 1e-8
    with torch.no_grad():
        flow.u.mul_(-20)  # strongly expanding: w.u_hat = 92, a wide bracket
    y = flow(x)
    assert (flow.inv(y.clone()) - x).abs().max() < 1e-8


# ---------------------------------------------------------------- ActNorm


def _data(n=200):
    return torch.randn(n, D) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([3.0, -2.0, 10.0])


def test_actnorm_first_inverse_call_standardizes_the_data():
    layer = ActNorm(D)
    assert not layer.initialized
    data = _data()
    z = layer.inv(data)
    assert layer.initialized
    assert z.mean(0).abs().max() < 1e-10
    assert (z.std(0, correction=0) - 1).abs().max() < 1e-10
    # Later calls do not re-initialise.
    before = [p.detach().clone() for p in layer.parameters()]
    layer.inv(_data() + 5)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))


def test_actnorm_first_forward_call_standardizes_its_output():
    layer = ActNorm(D)
    x = _data().reshape(10, 20, D)  # statistics over all batch dimensions
    y = layer(x).reshape(-1, D)
    assert y.mean(0).abs().max() < 1e-10
    assert (y.std(0, correction=0) - 1).abs().max() < 1e-10


def test_actnorm_initialization_survives_a_state_dict_round_trip():
    layer = ActNorm(D)
    layer.inv(_data())
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    loaded = ActNorm(D)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert loaded.initialized
    other = _data() * 3 - 1
    assert torch.equal(loaded.inv(other), layer.inv(other))  # not re-initialised from `other`


def test_actnorm_degenerate_batches_stay_finite():
    single = ActNorm(D)
    z = single.inv(torch.tensor([[1.0, 2.0, 3.0]]))  # one point: identity kept
    assert single.initialized
    assert torch.equal(z, torch.tensor([[1.0, 2.0, 3.0]]))
    constant = ActNorm(D)
    data = _data()
    data[:, 1] = 7.0  # a zero-variance column is only centred
    z = constant.inv(data)
    assert torch.isfinite(z).all()
    assert torch.isfinite(constant.log_abs_det_jacobian(z, data)).all()
    assert constant.log_scale[1] == 0 and constant.loc[1] == 7.0


def test_actnorm_does_not_initialize_in_eval_mode_or_when_disabled():
    layer = ActNorm(D).eval()
    data = _data()
    assert torch.equal(layer.inv(data), data)
    assert not layer.initialized
    layer.train()
    layer.inv(data)
    assert layer.initialized
    off = ActNorm(D, data_init=False)
    assert off.initialized and torch.equal(off.inv(data), data)


# ---------------------------------------------------------------- LULinear, InverseTransformModule


def test_lu_linear_starts_orthogonal_and_weight_matches_the_map():
    layer = LULinear(D)
    w = layer.weight
    assert (w @ w.T - torch.eye(D)).abs().max() < 1e-12
    assert layer.log_abs_det_jacobian(torch.zeros(D), torch.zeros(D)).abs() < 1e-12
    _perturb(layer, 0.3)
    x = torch.randn(5, D)
    assert torch.allclose(layer(x), x @ layer.weight.T + layer.bias)
    assert torch.allclose(
        layer.log_abs_det_jacobian(x, layer(x)), torch.linalg.slogdet(layer.weight)[1].expand(5)
    )


def test_maf_parameters_are_registered_and_it_scores_data_in_one_pass():
    iaf = affine_autoregressive(D, hidden_dims=[8])
    maf = InverseTransformModule(iaf)
    flow = ComposeTransformModule([LULinear(D), maf])
    maf_ids = {id(p) for p in iaf.parameters()}
    assert maf_ids and maf_ids <= {id(p) for p in flow.parameters()}
    assert maf.domain is iaf.codomain and maf.codomain is iaf.domain and maf.event_dim == 1
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(D), 1.0).to_event(1), [flow])
    data = torch.randn(6, D)
    lp = q.log_prob(data)
    assert (lp - q.log_prob(data.clone())).abs().max() < 1e-10
    lp.sum().backward()
    assert all(p.grad is not None for p in iaf.parameters())


def test_inverse_transform_module_of_a_composition():
    inner = ComposeTransformModule([_perturb(LULinear(D), 0.3), _perturb(planar(D), 0.5)])
    flow = InverseTransformModule(inner)
    y = torch.randn(5, D)
    x = flow(y)
    assert (inner(x.clone()) - y).abs().max() < 1e-10
    ladj = flow.log_abs_det_jacobian(y, x)
    assert (ladj + inner.log_abs_det_jacobian(x, inner(x))).abs().max() < 1e-10
    assert (ladj - per_point_logdet(lambda z: flow(z), y)).abs().max() < 1e-8


def test_inverse_transform_module_of_inverse_is_the_original_map():
    layer = _perturb(LULinear(D), 0.3)
    twice = InverseTransformModule(InverseTransformModule(layer))
    x = torch.randn(5, D)
    assert torch.allclose(twice(x), layer(x))
    assert torch.allclose(
        twice.log_abs_det_jacobian(x, twice(x)), layer.log_abs_det_jacobian(x, layer(x))
    )


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name", [n for n in NAMES if n != "maf"])
def test_wrong_trailing_dimension_is_a_clear_error(name):
    t, _ = REGISTRY[name]()
    bad = torch.randn(4, D + 1)
    with pytest.raises(ValueError, match="trailing dimension"):
        t(bad)
    with pytest.raises(ValueError, match="trailing dimension"):
        t.inv(bad)


@pytest.mark.parametrize("factory", [conditional_planar, conditional_radial])
def test_wrong_context_dimension_is_a_clear_error(factory):
    with pytest.raises(ValueError, match="context must have trailing dimension 2"):
        factory(D, C).condition(torch.randn(3))


@pytest.mark.parametrize(
    "make",
    [
        planar,
        radial,
        actnorm,
        lu_linear,
        log_linear_autoregressive,
        lambda d: conditional_planar(d, 2),
    ],
)
@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_input_dim_is_a_clear_error(make, bad):
    with pytest.raises(ValueError, match="input_dim must be a positive integer"):
        make(bad)


def test_inverse_transform_module_needs_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        InverseTransformModule(dist.transforms.ExpTransform())
    with pytest.raises(TypeError, match="nn.Module"):
        InverseTransformModule(torch.nn.Linear(2, 2))


def test_log_linear_autoregressive_inverts_float64_points_under_a_float32_default():
    # Pyro's AffineAutoregressive inverse allocates in the default dtype
    layer = _perturb(log_linear_autoregressive(D), 0.5)
    x = torch.randn(4, D)
    y = layer(x).detach()
    torch.set_default_dtype(torch.float32)  # the fixture restores it
    layer.clear_cache()
    back = layer.inv(y.clone())
    assert back.dtype == torch.float64
    assert torch.allclose(back, x, atol=1e-12)


def test_exponential_tails_turn_a_gaussian_into_exponential_tails_of_rate_one_over_k():
    # far out on each side d/dy log q(y) -> -1/k, with a correction of order |y|^(-1/2)
    layer = ExponentialTails(1, init_weight=1.0)
    with torch.no_grad():
        layer.raw_left.fill_(math.log(math.expm1(2.0)))  # left weight 2, right weight 1
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(1), 1.0).to_event(1), [layer])
    for y, k in ((-1e4, 2.0), (1e4, 1.0)):
        points = torch.tensor([[y], [y + math.copysign(100.0, y)]])
        slope = (q.log_prob(points[1]) - q.log_prob(points[0])) / 100.0
        assert float(slope.detach()) == pytest.approx(-1 / k, rel=0.01)


def test_exponential_tails_start_near_the_identity_and_reject_a_bad_weight():
    x = torch.randn(50, D)
    assert (exponential_tails(D)(x) - x).abs().max() < 0.01 * x.abs().max() ** 2
    with pytest.raises(ValueError, match="init_weight"):
        ExponentialTails(D, init_weight=0.0)
