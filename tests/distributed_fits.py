"""The fits that tests/test_distributed.py runs on several processes and on one.

Launched by ``torchrun --nproc_per_node 2 tests/distributed_fits.py OUT``: every rank writes what it
saw and what it fitted to ``OUT/rank<r>.pt``. The test imports the same functions and runs them in
one process for the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.distributed
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta, init_to_mean

from pyro_cnf import AutoCNF, Solver, fit_density, fit_svi, make_flow
from pyro_cnf.infer.training import sharded_minibatches

NUM_POINTS = 16


def density_data() -> torch.Tensor:
    return torch.randn(NUM_POINTS, 2, generator=torch.Generator().manual_seed(1)).exp()


def density_fit(batch_size: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Maximum likelihood for a MAF: with the whole data set as the global batch, deterministic."""
    torch.manual_seed(0)
    flow = make_flow("maf", 2)
    result = fit_density(
        flow, density_data(), batch_size=batch_size, num_steps=12, lr=1e-2, progress=False
    )
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}, result.losses


def svi_fit(subsample_size: int | None) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """MAP of a Normal mean by SVI with AutoDelta (no sampling noise); returns the indices seen."""
    y = torch.linspace(-1.0, 3.0, NUM_POINTS)
    seen: list[list[int]] = []

    def model() -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", NUM_POINTS, subsample_size=subsample_size) as idx:
            seen.append(idx.tolist())
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    pyro.clear_param_store()
    guide = AutoDelta(model, init_loc_fn=init_to_mean)
    fit_svi(model, guide, num_steps=10, optimizer=pyro.optim.Adam({"lr": 0.1}), progress=False)
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return params, seen


def cnf_svi_fit() -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Three SVI steps of AutoCNF (two vectorized particles, fixed-step RK4): parameters, NFE."""
    y = torch.tensor([1.2, 0.4, 2.1])

    def model() -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    pyro.clear_param_store()
    guide = AutoCNF(model, hidden_dims=(8,), solver=Solver("rk4", steps=4))
    loss = Trace_ELBO(num_particles=2, vectorize_particles=True)
    fit_svi(model, guide, num_steps=3, loss=loss, progress=False)
    stats = guide.flow.stats
    counts = {"forward": stats.nfe_forward, "inverse": stats.nfe_inverse, "last": stats.last_nfe}
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return params, counts


def main(out: Path) -> None:
    torch.distributed.init_process_group("gloo")
    torch.set_default_dtype(torch.float64)
    rank = torch.distributed.get_rank()
    world = torch.distributed.get_world_size()
    batches = sharded_minibatches(NUM_POINTS, 4, torch.device("cpu"))
    epoch = [next(batches).tolist() for _ in range(NUM_POINTS // (4 * world))]
    density_state, density_losses = density_fit(NUM_POINTS // world)
    svi_params, svi_seen = svi_fit(NUM_POINTS // world)
    cnf_params, cnf_nfe = cnf_svi_fit()
    torch.save(
        {
            "world_size": world,
            "epoch": epoch,
            "density_state": density_state,
            "density_losses": density_losses,
            "svi_params": svi_params,
            "svi_seen": svi_seen,
            "cnf_params": cnf_params,
            "cnf_nfe": cnf_nfe,
        },
        out / f"rank{rank}.pt",
    )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
