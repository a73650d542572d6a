"""Fits and guides follow the device of the flow's parameters and the model's data.

Parametrized over the devices present: the CPU everywhere, CUDA where a GPU is.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_cnf import AutoCNF, cnf, fit_density, fit_flow_matching, make_flow, reflow_pairs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_density_fits_stay_on_the_flow_device(device):
    data = torch.randn(256, 2, device=device) * 0.5 + 1.0
    result = fit_density(
        make_flow("maf", 2).to(device), data, num_steps=30, lr=1e-2, batch_size=64, progress=False
    )
    assert result.distribution.sample((3,)).device.type == device
    assert result.losses[-1] < result.losses[0]
    flow = cnf(2, hidden_dims=(16,)).to(device)
    result = fit_flow_matching(flow, data, num_steps=5, batch_size=64, progress=False)
    x0, x1 = reflow_pairs(flow, 4)
    assert x0.device.type == x1.device.type == device
    with torch.no_grad():
        assert torch.isfinite(result.distribution.log_prob(data[:4])).all()


@pytest.mark.parametrize("device", DEVICES)
def test_autocnf_follows_the_model_data_device(device):
    y = torch.tensor([1.2, 0.4, 2.1], device=device)

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, device=device), 2.0))
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    guide = AutoCNF(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(3):
        svi.step()
    draw = guide()["mu"]
    assert draw.device.type == device
    assert all(p.device.type == device for p in guide.parameters())


def test_data_on_another_device_than_the_flow_is_refused_by_name():
    with pytest.raises(ValueError, match="data is on meta but the flow's parameters are on cpu"):
        fit_density(make_flow("maf", 2), torch.empty(300, 2, device="meta"), progress=False)
    with pytest.raises(ValueError, match="val_data is on meta"):
        fit_flow_matching(
            cnf(2), torch.randn(300, 2), val_data=torch.empty(9, 2, device="meta"), progress=False
        )
