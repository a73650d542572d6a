"""The transform cache never answers for a transform that has changed.

Every flow caches its last ``(x, y, log|det|)`` so that sampling and then scoring the sample costs
one pass (one solve for a CNF). These tests change the flow in each way a user can -- an
in-place write through ``.data``, ``load_state_dict(..., assign=True)``, a new integration time
or solver, an optimizer loop on a fixed data tensor -- and compare the cached answer with a fresh
computation on a copy of the input (a new tensor object, which never hits the cache).
"""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from pyro_cnf import FlowDistribution, Solver, make_flow
from pyro_cnf.transforms.continuous import CNF

D = 3
FLOWS = ["cnf", "realnvp", "hybrid"]  # a CNF, a coupling stack, a stack holding a CNF
TIGHT = {"solver": Solver(rtol=1e-8, atol=1e-6), "hidden_dims": (8, 8)}


pytestmark = pytest.mark.float64


def _flow(name: str, seed: int):
    torch.manual_seed(seed)
    flow = make_flow(name, D, **(TIGHT if name != "realnvp" else {}))
    with torch.no_grad():  # off the identity, so a change of parameters changes the map
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


def _density(flow):
    return FlowDistribution(dist.Normal(torch.zeros(D), 1.0).to_event(1), [flow])


def _cnfs(flow):
    return [m for m in flow.modules() if isinstance(m, CNF)]


@pytest.mark.parametrize("name", FLOWS)
def test_a_write_through_data_is_seen(name):
    flow = _flow(name, 0)
    q = _density(flow)
    data = torch.randn(6, D)
    before = q.log_prob(data).detach()
    for p in flow.parameters():
        p.data.add_(0.2)  # no version bump: only the values tell
    after = q.log_prob(data)
    assert (after - before).abs().max() > 1e-3
    assert torch.allclose(after, q.log_prob(data.clone()), atol=1e-6)
    sample = q.rsample((4,))
    for p in flow.parameters():
        p.data.mul_(0.9)
    assert torch.allclose(q.log_prob(sample), q.log_prob(sample.clone()), atol=1e-6)


@pytest.mark.parametrize("name", FLOWS)
def test_load_state_dict_with_assign_is_seen(name):
    flow, other = _flow(name, 0), _flow(name, 1)
    q = _density(flow)
    data = torch.randn(6, D)
    q.log_prob(data)
    flow.load_state_dict(other.state_dict(), assign=True)  # new Parameter objects
    expected = _density(other).log_prob(data.clone())
    assert torch.allclose(q.log_prob(data), expected, atol=1e-6)


@pytest.mark.parametrize("name", FLOWS)
def test_an_adam_loop_on_a_fixed_tensor_after_assign(name):
    flow, other = _flow(name, 0), _flow(name, 1)
    q = _density(flow)
    data = torch.randn(6, D)
    q.log_prob(data).sum().backward()
    expected = -_density(other).log_prob(data.clone()).mean().item()
    flow.load_state_dict(other.state_dict(), assign=True)  # shares other's storage from now on
    optimizer = torch.optim.Adam(flow.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        loss = -q.log_prob(data).mean()
        optimizer.zero_grad()
        loss.backward()  # a stale hit would backward through the freed graph
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(expected)
    assert len(set(losses)) == 3  # a stale hit would repeat the first step's loss
    assert torch.allclose(q.log_prob(data), q.log_prob(data.clone()), atol=1e-6)


@pytest.mark.parametrize("name", ["cnf", "hybrid"])
@pytest.mark.parametrize("change", ["T", "solver", "eval_solver"])
def test_a_new_integration_time_or_solver_is_seen(name, change):
    flow = _flow(name, 0)
    q = _density(flow)
    data = torch.randn(6, D)
    if change == "eval_solver":
        flow.eval()
    with torch.no_grad():
        before = q.log_prob(data)
        for cnf in _cnfs(flow):
            if change == "T":
                cnf.T = 2.0
            else:  # a coarse fixed grid: a visibly different answer
                setattr(cnf, change, Solver("euler", steps=2))
        after = q.log_prob(data)
        fresh = q.log_prob(data.clone())
    assert (after - before).abs().max() > 1e-3
    assert torch.allclose(after, fresh, atol=1e-10)


@pytest.mark.parametrize("name", FLOWS)
def test_the_cache_still_serves_sample_then_score(name):
    flow = _flow(name, 0)
    q = _density(flow)
    cnfs = _cnfs(flow)
    for cnf in cnfs:
        cnf.stats.reset()
    sample = q.rsample((5,))
    cached = q.log_prob(sample)
    assert all(c.stats.forward_solves == 1 and c.stats.inverse_solves == 0 for c in cnfs)
    assert torch.allclose(cached, q.log_prob(sample.clone()), atol=1e-6)
