"""Density estimation on several processes: a CNF fitted to 200,000 points with torchrun.

The data are draws of a 4-D mixture of five Gaussians (``pyro_cnf.datasets.gaussian_mixture``),
so the held-out NLL of the fitted flow can be set against the true density's. The CNF's field is
trained by flow matching (no ODE solve per step), or by maximum likelihood with ``--mle`` (one
inverse solve per step). Launched by ``torchrun``, the fit is data-parallel with nothing else to
set: each process scores its own shard of every minibatch and the gradients are averaged, so the
processes end with the same flow. ``--batch-size`` is the global batch, split over the processes,
so one process and several run the same optimization::

    torchrun --standalone --nproc_per_node 2 examples/distributed_density.py --out out/ddp
    python examples/distributed_density.py --out out/single          # one process
    python examples/distributed_density.py --smoke --out out/smoke   # seconds

Rank 0 writes ``OUT/result.json`` and ``OUT/report.txt``: ``world_size``, ``steps``, ``val_nll``
(held-out NLL of the flow, nats per point), ``true_nll`` (the same points under the true
density: the floor), ``rows_per_second`` (training rows of all processes per second of
training) and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from pyro_cnf import Solver, cnf, fit_density, fit_flow_matching
from pyro_cnf.datasets import gaussian_mixture


def main(args: argparse.Namespace) -> dict[str, object]:
    """Fit the CNF on this process's shard and, on rank 0, write ``result.json``."""
    distributed = "WORLD_SIZE" in os.environ  # set by torchrun
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    world_size = dist.get_world_size() if distributed else 1
    rank = dist.get_rank() if distributed else 0
    if args.batch_size % world_size:
        raise SystemExit(f"--batch-size {args.batch_size} must divide over {world_size} processes")

    # The same data on every process (a fixed seed); each process trains on its own shard.
    torch.manual_seed(args.seed)
    target = gaussian_mixture(args.dim, num_components=5, spread=2.0, seed=args.seed)
    data = target.sample((args.num_points,))
    val = target.sample((args.num_val,))

    # A CNF whose field is an MLP; its evaluation solver (adaptive) scores held-out points.
    flow = cnf(args.dim, hidden_dims=(64, 64))
    options = dict(
        val_data=val,
        num_steps=args.steps,
        batch_size=args.batch_size // world_size,
        lr=args.lr,
        eval_every=args.steps,  # one held-out NLL, at the end
        seed=args.seed,
        progress=not args.no_progress,
    )
    if args.mle:  # maximum likelihood: a fixed-step solver keeps each step's cost known
        flow.solver = Solver("rk4", steps=8)
        result = fit_density(flow, data, **options)
    else:
        result = fit_flow_matching(flow, data, **options)

    with torch.no_grad():
        true_nll = float(-target.log_prob(val).mean())
    summary: dict[str, object] = {
        "world_size": world_size,
        "method": "maximum likelihood" if args.mle else "flow matching",
        "steps": result.num_steps,
        "global_batch": args.batch_size,
        "num_points": args.num_points,
        "val_nll": result.val_nll[-1],
        "true_nll": true_nll,
        "train_seconds": result.train_time,
        "rows_per_second": result.num_steps * args.batch_size / result.train_time,
    }
    if rank == 0:  # every process holds the same result; one writes it
        title = f"CNF by {summary['method']} on {world_size} process(es)"
        smoke = "  [smoke run: the numbers mean little]" if args.smoke else ""
        rows = [f"{key:<16}{value:.6g}" for key, value in summary.items() if key != "method"]
        report = "\n".join([title + smoke, *rows])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
        (args.out / "report.txt").write_text(report + "\n")
        print(report)
        print(f"\nwrote {args.out}/report.txt, result.json")
    if distributed:
        dist.destroy_process_group()
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--smoke`` shrinks the run to seconds)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("pyro-cnf-out/distributed_density"))
    parser.add_argument("--mle", action="store_true", help="maximum likelihood, not flow matching")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=2048, help="global batch (all processes)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--dim", type=int, default=4)
    parser.add_argument("--num-points", type=int, default=200_000)
    parser.add_argument("--num-val", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a run of seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.num_points, args.num_val = 300, 512, 8192, 1000
    return args


if __name__ == "__main__":
    torch.set_num_threads(1)  # small tensors: one thread per process
    main(parse_args())
