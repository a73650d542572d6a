"""The CNF inside Pyro: one solve per SVI step, plates, learning, and clear errors."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow

from pyro_cnf import (
    CNF,
    FlowDistribution,
    MLPField,
    Solver,
    cnf,
    conditional_cnf,
)


def banana():
    x0 = pyro.sample("x0", dist.Normal(0.0, 10.0))
    pyro.sample("x1", dist.Normal(0.03 * (x0**2 - 100), 1.0))


def standard_normal(dim):
    return dist.Normal(torch.zeros(dim), 1.0).to_event(1)


def random_flow(dim, **kwargs):
    return CNF(dim, field=MLPField(dim, (16, 16), zero_init=False), **kwargs)


@pytest.mark.parametrize("num_particles", [1, 4])
def test_svi_step_makes_one_forward_solve_and_no_inverse(num_particles):
    flows = []

    def make(dim):
        flows.append(cnf(dim, hidden_dims=(16, 16), solver=Solver("rk4", steps=4)))
        return flows[-1]

    guide = AutoNormalizingFlow(banana, make)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    svi = SVI(banana, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    svi.step()  # builds the guide
    (flow,) = flows
    for _ in range(2):
        flow.stats.reset()
        loss = svi.step()
        assert math.isfinite(loss)
        assert flow.stats.forward_solves == 1
        assert flow.stats.inverse_solves == 0
        assert flow.stats.nfe_forward == 16


def test_flow_distribution_in_a_plate_scores_from_the_cache():
    flow = random_flow(3, solver=Solver(rtol=1e-9, atol=1e-9))
    q = FlowDistribution(standard_normal(3), [flow])

    def model():
        with pyro.plate("points", 5):
            pyro.sample("z", dist.Normal(torch.zeros(3), 2.0).to_event(1))

    def guide():
        pyro.module("flow", flow)
        with pyro.plate("points", 5):
            pyro.sample("z", q)

    trace = pyro.poutine.trace(guide).get_trace()
    trace.compute_log_prob()
    assert trace.nodes["z"]["value"].shape == (5, 3)
    assert trace.nodes["z"]["log_prob"].shape == (5,)
    assert (flow.stats.forward_solves, flow.stats.inverse_solves) == (1, 0)
    # an independent check of the cached score: a fresh inverse solve of a copy of the values
    fresh = q.log_prob(trace.nodes["z"]["value"].clone())
    assert flow.stats.inverse_solves == 1
    assert torch.allclose(fresh, trace.nodes["z"]["log_prob"], atol=1e-7)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    flow.stats.reset()
    svi.step()
    assert (flow.stats.forward_solves, flow.stats.inverse_solves) == (1, 0)


def test_rsample_and_log_prob_expand_and_to_event():
    flow = random_flow(2, solver=Solver(rtol=1e-9, atol=1e-9))
    q = FlowDistribution(standard_normal(2), [flow])
    x, log_q = q.rsample_and_log_prob((4,))
    assert (flow.stats.forward_solves, flow.stats.inverse_solves) == (1, 0)
    assert torch.allclose(q.log_prob(x.clone()), log_q, atol=1e-7)  # inverse solve agrees
    expanded = q.expand([3])
    assert expanded.batch_shape == (3,) and expanded.event_shape == (2,)
    y, log_y = expanded.rsample_and_log_prob((5,))
    assert y.shape == (5, 3, 2) and log_y.shape == (5, 3)
    assert torch.allclose(q.log_prob(y.clone()), log_y, atol=1e-7)
    independent = expanded.to_event(1)
    assert torch.allclose(independent.log_prob(y), log_y.sum(-1), atol=1e-7)


def test_conditional_flow_distribution_rsample_and_log_prob():
    from pyro_cnf import ConditionalFlowDistribution

    flow = conditional_cnf(2, context_dim=1, hidden_dims=(16,), solver=Solver(rtol=1e-9, atol=1e-9))
    with torch.no_grad():
        flow.field.output.weight.normal_()
    p = ConditionalFlowDistribution(standard_normal(2), flow)
    q = p.condition(torch.tensor([[0.5], [-0.5]]))
    assert q.batch_shape == (2,)
    x, log_q = q.rsample_and_log_prob((3,))
    assert x.shape == (3, 2, 2)
    assert torch.allclose(q.log_prob(x.clone()), log_q, atol=1e-7)
    assert not torch.allclose(log_q[:, 0], log_q[:, 1])
    # the same points scored at each context separately
    for i, c in enumerate((0.5, -0.5)):
        single = p.condition(torch.tensor([c]))
        assert torch.allclose(single.log_prob(x[:, i].clone()), log_q[:, i], atol=1e-7)


def two_moons(n, noise=0.1):
    angle = torch.rand(n) * math.pi
    upper = torch.stack([angle.cos(), angle.sin()], -1)
    lower = torch.stack([1 - angle.cos(), 0.5 - angle.sin()], -1)
    points = torch.where((torch.arange(n) % 2 == 0).unsqueeze(-1), upper, lower)
    points = points + noise * torch.randn(n, 2)
    return (points - points.mean(0)) / points.std(0)


def test_maximum_likelihood_on_two_moons_lowers_the_nll():
    data, held_out = two_moons(512), two_moons(2048)
    flow = cnf(2, hidden_dims=(32, 32), solver=Solver("rk4", steps=8))
    q = FlowDistribution(standard_normal(2), [flow])
    optimizer = torch.optim.Adam(flow.parameters(), lr=2e-2)
    with torch.no_grad():
        initial = -q.log_prob(held_out).mean().item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = -q.log_prob(data).mean()
        loss.backward()
        optimizer.step()
    flow.eval()
    flow.eval_solver = Solver(rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        final = -q.log_prob(held_out).mean().item()
    # identity flow on standardized data: NLL ~ log(2 pi) + 1 = 2.84; the moons are far from that
    assert initial > 2.7
    assert final < initial - 0.35


def test_svi_with_a_cnf_guide_on_the_banana_lowers_the_loss():
    """Pyro SVI, Trace_ELBO, a CNF guide on the banana (log Z = 0, so the loss estimates KL(q||p))."""
    flow = cnf(2, hidden_dims=(32, 32), solver=Solver("rk4", steps=8))

    def guide():
        loc = pyro.param("loc", torch.zeros(2))
        scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
        pyro.module("flow", flow)
        q = FlowDistribution(dist.Normal(loc, scale).to_event(1), [flow])
        x = pyro.sample("x", q, infer={"is_auxiliary": True})
        pyro.sample("x0", dist.Delta(x[..., 0]))
        pyro.sample("x1", dist.Delta(x[..., 1]))

    elbo = Trace_ELBO(num_particles=64, vectorize_particles=True, max_plate_nesting=0)
    svi = SVI(banana, guide, pyro.optim.Adam({"lr": 3e-2}), elbo)
    evaluation = Trace_ELBO(num_particles=4096, vectorize_particles=True, max_plate_nesting=0)
    with torch.no_grad():
        initial = evaluation.loss(banana, guide)
    for _ in range(200):
        svi.step()
    with torch.no_grad():
        final = evaluation.loss(banana, guide)
    # KL(q || p) of the initial N(0, I) guide is several nats; the fitted guide is within 0.3
    assert initial > 5.0
    assert final < 0.3


def test_cache_is_invalidated_by_an_optimizer_step_and_by_grad_mode():
    flow = random_flow(2, solver=Solver(rtol=1e-9, atol=1e-9))
    q = FlowDistribution(standard_normal(2), [flow])
    data = torch.randn(8, 2)
    with torch.no_grad():
        before = q.log_prob(data)
    # grad-enabled scoring after a no_grad one must build a graph, not reuse the cached tensor
    loss = -q.log_prob(data).mean()
    assert loss.requires_grad
    loss.backward()
    torch.optim.SGD(flow.parameters(), lr=0.1).step()
    with torch.no_grad():
        after = q.log_prob(data)
    assert (after - before).abs().max() > 1e-3  # new parameters, new density
    assert flow.stats.inverse_solves == 3
    with torch.no_grad():
        again = q.log_prob(data)
    assert flow.stats.inverse_solves == 3  # a cache hit: nothing changed
    assert torch.equal(again, after)
    flow.eval()
    with torch.no_grad():
        q.log_prob(data)
    assert flow.stats.inverse_solves == 4  # eval mode: another solver, a new solve
