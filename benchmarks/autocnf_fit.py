"""AutoCNF on the centered eight schools: one fit with the given settings, then its diagnostics.

Run by hand, e.g.::

    OMP_NUM_THREADS=1 python benchmarks/eight_schools_autocnf.py --steps 3000 --init-scale 0.5 --lr 0.01

Prints KL(q||p) = log Z - ELBO against the quadrature log Z, Pareto k-hat (S = 10^4), the log-evidence
estimate, and E[tau], sd(tau) of the importance-resampled draws against the exact values.
"""

import argparse
import time

import pyro
import torch
from _common import machine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal

from pyro_cnf import AutoCNF, Solver, fit_svi, importance_diagnostics
from pyro_cnf.models import get_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--init-scale", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.01, help="decays 10x over the run")
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--rk4-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--T", type=float, default=1.0)
    parser.add_argument("--base-df", type=float, default=None, help="Student-t base (initial df)")
    parser.add_argument("--clip", type=float, default=10.0)
    parser.add_argument("--lr-decay", type=float, default=0.1, help="total lr decay factor")
    parser.add_argument(
        "--warm-start", type=int, default=0, help="AutoDiagonalNormal steps to initialise loc/scale"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    model = get_model("eight_schools_centered")
    reference = model.reference
    pyro.clear_param_store()
    guide = AutoCNF(
        model,
        hidden_dims=tuple(args.hidden),
        activation=args.activation,
        T=args.T,
        base_df=args.base_df,
        init_scale=args.init_scale,
        solver=Solver("rk4", steps=args.rk4_steps),
    )
    optimizer = pyro.optim.ClippedAdam(
        {"lr": args.lr, "lrd": args.lr_decay ** (1 / args.steps), "clip_norm": args.clip}
    )
    elbo = Trace_ELBO(num_particles=args.particles, vectorize_particles=True)
    start = time.perf_counter()
    if args.warm_start:
        diag = AutoDiagonalNormal(model)
        fit_svi(
            model,
            diag,
            num_steps=args.warm_start,
            optimizer=pyro.optim.Adam({"lr": 0.02}),
            loss=Trace_ELBO(num_particles=8, vectorize_particles=True),
            progress=False,
            seed=args.seed,
        )
        guide()
        with torch.no_grad():
            guide.loc.copy_(diag.loc)
            guide.scale = diag.scale.detach().clone()
    fit_svi(
        model,
        guide,
        num_steps=args.steps,
        optimizer=optimizer,
        loss=elbo,
        progress=False,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    result = importance_diagnostics(model, guide, num_samples=10_000, seed=args.seed)
    tau = result.draws["tau"]
    print(machine("float64"))
    print(vars(args))
    print(
        f"fit {seconds:.0f} s | KL {reference.log_Z - result.elbo:.3f} | k-hat {result.khat:.2f} | "
        f"ESS {result.ess:.0f} | log Z {result.log_evidence:.3f} ± {result.log_evidence_se:.3f} "
        f"(exact {reference.log_Z:.3f}) | IS E[tau] {float(tau.mean()):.3f} sd {float(tau.std()):.3f} "
        f"(exact {float(reference.mean['tau']):.3f}, {float(reference.sd['tau']):.3f})"
    )
    if args.base_df is not None:
        print(f"learned base df {float(guide.base_df):.2f}")


if __name__ == "__main__":
    main()
