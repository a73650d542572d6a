"""One invariant harness over the whole flow registry: adding a flow adds it to every check."""

import io
from contextlib import ExitStack
from unittest import mock

import pyro.distributions as dist
import pytest
import torch

from pyro_cnf import Solver
from pyro_cnf.transforms.continuous import _CachedSolveMixin
from pyro_cnf.transforms.registry import flow_names, flow_spec, make_flow

DIM, CONTEXT_DIM = 4, 2
# precision options only: the CNF-based flows are checked at a tight solver tolerance
OPTIONS = {
    "cnf": {
        "solver": Solver(rtol=1e-10, atol=1e-10, max_num_steps=100_000),
        "hidden_dims": (16, 16),
    },
    "hybrid": {"solver": Solver(rtol=1e-10, atol=1e-10, max_num_steps=100_000)},
}
CASES = [
    pytest.param((name, conditional), id=f"{name}-{'conditional' if conditional else 'plain'}")
    for name in flow_names()
    for conditional in (False, True)
    if not conditional or flow_spec(name).conditional
]


def build(name, conditional, seed=0):
    torch.manual_seed(seed)
    flow = make_flow(
        name, DIM, context_dim=CONTEXT_DIM if conditional else 0, **OPTIONS.get(name, {})
    )
    contexts = torch.randn(2, CONTEXT_DIM) if conditional else None
    first = flow.condition(contexts[0]) if conditional else flow
    with torch.no_grad():
        first(torch.randn(64, DIM))  # data-dependent initialisation (ActNorm) happens here
        for parameter in flow.parameters():
            # move away from identity inits, but not into Pyro's clamped log-scale range (its
            # clamp passes gradients through, so autograd there is not the true Jacobian)
            parameter.add_(0.05 * torch.randn_like(parameter))
    return flow, contexts


def bound(flow, contexts, k=0):
    return flow if contexts is None else flow.condition(contexts[k])


def subtransforms(transform):
    """The transform and every layer inside it."""
    yield transform
    for part in getattr(transform, "parts", ()):
        yield from subtransforms(part)


def autograd_logdet(transform, point):
    jacobian = torch.autograd.functional.jacobian(lambda v: transform(v.clone()), point)
    return torch.linalg.slogdet(jacobian)[1], jacobian


def finite_difference_jacobian(transform, point, eps=1e-6):
    columns = []
    with torch.no_grad():
        for i in range(point.shape[-1]):
            step = torch.zeros_like(point)
            step[i] = eps
            columns.append((transform(point + step) - transform(point - step)) / (2 * eps))
    return torch.stack(columns, -1)


@pytest.fixture(params=CASES)
def case(request):
    name, conditional = request.param
    flow, contexts = build(name, conditional)
    return name, flow, contexts


def test_shapes_with_batch_dims(case):
    name, flow, contexts = case
    transform = bound(flow, contexts)
    for batch in [(3,), (3, 4)]:
        x = torch.randn(*batch, DIM)
        y = transform(x)
        assert y.shape == x.shape
        assert transform.log_abs_det_jacobian(x, y).shape == batch
        assert transform.forward_shape(x.shape) == x.shape
        assert transform.inverse_shape(y.shape) == y.shape


def test_inverse_round_trip_and_log_det(case):
    name, flow, contexts = case
    spec = flow_spec(name)
    transform = bound(flow, contexts)
    x = torch.randn(5, DIM)
    y = transform(x)
    ladj = transform.log_abs_det_jacobian(x, y)
    if spec.inverse == "none":
        with pytest.raises(NotImplementedError, match="no inverse"):
            transform.inv(y.clone())
        return
    x_back = transform.inv(y.clone())  # a fresh tensor: a real inverse, not the cache
    assert (x_back - x).abs().max() < 1e-6
    inverse_ladj = transform.inv.log_abs_det_jacobian(y, x_back)
    assert (inverse_ladj + ladj).abs().max() < 1e-6


def test_log_det_against_autograd_and_finite_difference_jacobians(case):
    name, flow, contexts = case
    transform = bound(flow, contexts)
    points = torch.randn(3, DIM)
    for point in points:
        y = transform(point)
        ladj = transform.log_abs_det_jacobian(point, y).detach()
        expected, jacobian = autograd_logdet(transform, point)
        assert abs(float(ladj - expected)) < 1e-6
        numerical = finite_difference_jacobian(transform, point)
        assert (numerical - jacobian).abs().max() < 1e-5
        assert abs(float(ladj - torch.linalg.slogdet(numerical)[1])) < 1e-5


def autoregressive_order(layer):
    """The variable order of an autoregressive layer, or None if the layer is not autoregressive."""
    inverted = (
        layer.inv if isinstance(layer, torch.distributions.transforms._InverseTransform) else None
    )
    for candidate in (
        layer,
        getattr(layer, "transform", None),
        getattr(layer, "module", None),
        inverted,
    ):
        if candidate is None or not getattr(candidate, "autoregressive", False):
            continue
        for network in ("arn", "nn"):
            permutation = getattr(getattr(candidate, network, None), "permutation", None)
            if permutation is not None:
                return permutation
        order = getattr(layer, "order", None)
        return order if order is not None else torch.arange(DIM)
    return None


def test_autoregressive_layers_have_triangular_jacobians(case):
    name, flow, contexts = case
    transform = bound(flow, contexts)
    checked = 0
    for layer in subtransforms(transform):
        order = autoregressive_order(layer)
        if order is None:
            continue
        _, jacobian = autograd_logdet(layer, torch.randn(DIM))
        permuted = jacobian[order][:, order]  # output order[i] depends on inputs order[<= i]
        assert permuted.triu(1).abs().max() < 1e-12
        assert permuted.diagonal().abs().min() > 0
        checked += 1
    if name in ("maf", "iaf", "nsf_autoregressive", "naf", "bnaf"):
        assert checked > 0


def test_gradient_reaches_every_parameter(case):
    name, flow, contexts = case
    transform = bound(flow, contexts)
    x = torch.randn(8, DIM)
    y = transform(x)
    loss = y.pow(2).sum() + transform.log_abs_det_jacobian(x, y).sum()
    loss.backward()
    for parameter_name, parameter in flow.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


def test_three_adam_steps_lower_the_loss(case):
    name, flow, contexts = case
    spec = flow_spec(name)
    # an anisotropic base, so that rotations (Householder) change the loss too
    base = dist.Normal(torch.zeros(DIM), torch.linspace(0.5, 2.0, DIM)).to_event(1)
    target = dist.Normal(torch.linspace(-1, 1, DIM), 0.7).to_event(1)
    data, noise = target.sample((256,)), base.sample((256,))

    def loss():
        q = dist.TransformedDistribution(base, [bound(flow, contexts)])
        if spec.inverse == "exact":  # maximum likelihood on data
            return -q.log_prob(data).mean()
        # flows whose inverse is not differentiable: reverse KL with fixed base noise
        transform = bound(flow, contexts)
        x = transform(noise)
        log_q = base.log_prob(noise) - transform.log_abs_det_jacobian(noise, x)
        return (log_q - target.log_prob(x)).mean()

    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    with torch.no_grad():
        initial = loss().item()
    for _ in range(3):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        assert loss().item() < initial


def test_sample_then_log_prob_needs_no_inverse(case):
    name, flow, contexts = case
    transform = bound(flow, contexts)
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(DIM), 1.0).to_event(1), [transform])
    x = q.rsample((6,))
    with ExitStack() as stack:
        for layer in subtransforms(transform):
            stack.enter_context(
                mock.patch.object(layer, "_inverse", side_effect=AssertionError("inverted"))
            )
            if isinstance(layer, _CachedSolveMixin):
                stack.enter_context(
                    mock.patch.object(layer, "_solve", side_effect=AssertionError("solved"))
                )
        log_q = q.log_prob(x)
    assert log_q.shape == (6,) and torch.isfinite(log_q).all()


def test_state_dict_round_trip(case):
    name, flow, contexts = case
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    other, _ = build(name, contexts is not None, seed=1)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(5, DIM)
    with torch.no_grad():
        assert torch.equal(bound(flow, contexts)(x), bound(other, contexts)(x))


@pytest.mark.parametrize("name", [n for n in flow_names() if flow_spec(n).conditional])
def test_contexts_change_the_map(name):
    flow, contexts = build(name, conditional=True)
    x = torch.randn(5, DIM)
    with torch.no_grad():
        assert (bound(flow, contexts, 0)(x) - bound(flow, contexts, 1)(x)).abs().max() > 1e-3


def test_unknown_flow_lists_valid_names():
    with pytest.raises(ValueError, match="unknown flow 'realnpv'; valid flows: .*realnvp"):
        make_flow("realnpv", 3)


@pytest.mark.parametrize("name", flow_names())
def test_bad_input_is_a_clear_error(name):
    flow = make_flow(name, DIM, **OPTIONS.get(name, {}))
    with pytest.raises(ValueError, match=f"trailing dimension {DIM}"):
        flow(torch.randn(3, DIM + 1))
    bad = torch.randn(3, DIM)
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        flow(bad)


def test_bad_registry_arguments():
    with pytest.raises(ValueError, match="needs an integer input_dim >= 2"):
        make_flow("realnvp", 1)
    with pytest.raises(
        ValueError, match="'sylvester' has no conditional variant; conditional flows: .*cnf"
    ):
        make_flow("sylvester", 3, context_dim=2)


@pytest.mark.parametrize("name", ["maf", "iaf"])
def test_float64_flow_under_a_float32_default(name):
    torch.set_default_dtype(torch.float32)
    flow = make_flow(name, DIM).double()
    x = torch.randn(4, DIM, dtype=torch.float64)
    y = flow(x)
    assert y.dtype == torch.float64
    assert (flow.inv(y.clone()) - x).abs().max() < 1e-8
    assert torch.get_default_dtype() == torch.float32
