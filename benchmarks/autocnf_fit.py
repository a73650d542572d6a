"""AutoCNF on one zoo model: one fit with the given settings, then its diagnostics.

Run by hand, e.g.::

    OMP_NUM_THREADS=1 python benchmarks/autocnf_fit.py --model eight_schools_centered \
        --steps 3000 --init-scale 0.5 --lr 0.01

Prints KL(q||p) = log Z - ELBO against the reference log Z, Pareto k-hat (S = 10^4), the
log-evidence estimate, and per site the mean error (in reference sd) and sd ratio of the
importance-resampled draws and of the guide's own draws. ``--polish-steps N`` adds a second
stage after the main fit: N steps with more particles at a small constant learning rate (of
``InclusiveKL(reverse_weight=W)`` with ``--polish-reverse-weight W``). ``--save PATH`` keeps
the fitted guide's state; ``--load PATH --steps 0`` then tries other polish stages on it.
"""

import argparse
import statistics
import time

import pyro
import torch
from _common import machine
from pyro.infer import Predictive, RenyiELBO, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal

from pyro_cnf import AutoCNF, InclusiveKL, Solver, fit_svi, importance_diagnostics
from pyro_cnf.models import get_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="eight_schools_centered")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--init-scale", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.01, help="decays 10x over the run")
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--rk4-steps", type=int, default=8, help="0: adaptive dopri5")
    parser.add_argument("--rtol", type=float, default=1e-5, help="training dopri5 rtol")
    parser.add_argument("--atol", type=float, default=1e-5, help="training dopri5 atol")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--T", type=float, default=1.0)
    parser.add_argument("--progress", action="store_true", help="progress bar on stderr")
    parser.add_argument("--gated", action="store_true", help="field with a multiplicative term")
    parser.add_argument("--base-df", type=float, default=None, help="Student-t base (initial df)")
    parser.add_argument(
        "--funnel-layer", action="store_true", help="AutoCNF(funnel_layer=True), for funnels"
    )
    parser.add_argument("--clip", type=float, default=10.0)
    parser.add_argument("--lr-decay", type=float, default=0.1, help="total lr decay factor")
    parser.add_argument(
        "--warm-start",
        type=int,
        default=0,
        help="first fit this many steps without the flow (with --funnel-layer), or of an "
        "AutoDiagonalNormal whose loc/scale start the fit",
    )
    parser.add_argument(
        "--renyi-alpha", type=float, default=None, help="RenyiELBO(alpha) instead of Trace_ELBO"
    )
    parser.add_argument("--anneal", type=int, default=0, help="annealing steps (fit_svi)")
    parser.add_argument("--anneal-start", type=float, default=0.01)
    parser.add_argument(
        "--polish-steps", type=int, default=0, help="then this many Trace_ELBO steps with ..."
    )
    parser.add_argument("--polish-particles", type=int, default=256, help="... these particles")
    parser.add_argument("--polish-lr", type=float, default=5e-4, help="... at this constant lr")
    parser.add_argument(
        "--polish-reverse-weight",
        type=float,
        default=None,
        help="polish with InclusiveKL(reverse_weight=W) instead of Trace_ELBO",
    )
    parser.add_argument(
        "--khat-seeds", type=int, default=1, help="also print k-hat for seeds 0..N-1 (median)"
    )
    parser.add_argument("--save", default=None, help="save the guide's state after the fit")
    parser.add_argument(
        "--load", default=None, help="start from a saved state (use --steps 0 to only finish)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    model = get_model(args.model)
    reference = model.reference
    pyro.clear_param_store()
    guide = AutoCNF(
        model,
        hidden_dims=tuple(args.hidden),
        activation=args.activation,
        T=args.T,
        gated=args.gated,
        base_df=args.base_df,
        funnel_layer=args.funnel_layer,
        init_scale=args.init_scale,
        solver=(
            Solver("rk4", steps=args.rk4_steps)
            if args.rk4_steps
            else Solver(rtol=args.rtol, atol=args.atol)
        ),
    )
    optimizer = pyro.optim.ClippedAdam(
        {"lr": args.lr, "lrd": args.lr_decay ** (1 / max(args.steps, 1)), "clip_norm": args.clip}
    )
    if args.renyi_alpha is None:
        elbo = Trace_ELBO(num_particles=args.particles, vectorize_particles=True)
    else:
        elbo = RenyiELBO(
            alpha=args.renyi_alpha, num_particles=args.particles, vectorize_particles=True
        )
    if args.load:
        guide()  # builds the guide's modules
        guide.load_state_dict(torch.load(args.load))
    start = time.perf_counter()
    if args.warm_start and args.funnel_layer:
        # the affine map and the funnel layer alone first (no ODE solves), then the whole guide
        with guide.without_flow():
            fit_svi(
                model,
                guide,
                num_steps=args.warm_start,
                optimizer=pyro.optim.ClippedAdam(
                    {"lr": args.lr, "lrd": args.lr_decay ** (1 / args.warm_start)}
                ),
                loss=Trace_ELBO(num_particles=args.particles, vectorize_particles=True),
                progress=False,
                seed=args.seed,
            )
    elif args.warm_start:
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
    fit = None
    if args.steps:
        fit = fit_svi(
            model,
            guide,
            num_steps=args.steps,
            optimizer=optimizer,
            loss=elbo,
            anneal_steps=args.anneal,
            anneal_start=args.anneal_start,
            progress=args.progress,
            seed=args.seed,
        )
    if args.polish_steps:
        fit = fit_svi(
            model,
            guide,
            num_steps=args.polish_steps,
            optimizer=pyro.optim.ClippedAdam({"lr": args.polish_lr, "clip_norm": args.clip}),
            loss=(
                Trace_ELBO(num_particles=args.polish_particles, vectorize_particles=True)
                if args.polish_reverse_weight is None
                else InclusiveKL(
                    num_particles=args.polish_particles, reverse_weight=args.polish_reverse_weight
                )
            ),
            progress=args.progress,
            seed=None if args.steps else args.seed,
        )
    seconds = time.perf_counter() - start
    if args.save:
        torch.save(guide.state_dict(), args.save)
    result = importance_diagnostics(model, guide, num_samples=10_000, seed=args.seed)
    print(machine("float64"))
    print(vars(args))
    log_z = reference.log_Z
    kl = f"{log_z - result.elbo:.3f}" if log_z is not None else "n/a"
    print(
        f"fit {seconds:.0f} s | KL {kl} | k-hat {result.khat:.2f} | ESS {result.ess:.0f} | "
        f"log Z {result.log_evidence:.3f} ± {result.log_evidence_se:.3f} (exact {log_z}) | "
        f"training loss, median of the last 100 steps "
        f"{statistics.median(fit.losses[-100:]) if fit else float('nan'):.3f}"
    )
    if args.khat_seeds > 1:
        khats = [
            importance_diagnostics(model, guide, num_samples=10_000, seed=seed).khat
            for seed in range(args.khat_seeds)
        ]
        print(
            f"k-hat over draw seeds 0..{args.khat_seeds - 1}: "
            f"{', '.join(f'{k:.2f}' for k in khats)} (median {statistics.median(khats):.2f})"
        )
    guide.eval()  # the evaluation solver, as in the diagnostics
    with torch.no_grad():
        own_draws = Predictive(
            model, guide=guide, num_samples=10_000, return_sites=list(reference.mean), parallel=True
        )()
    for site, mean in reference.mean.items():
        sd = reference.sd[site]
        for label, draws in (("IS", result.draws), ("q", own_draws)):
            if site not in draws:
                continue
            x = draws[site].reshape(-1, *mean.shape)
            err = ((x.mean(0) - mean).abs() / sd).max()
            ratio = x.std(0) / sd
            print(
                f"  {site:>6} {label:>2}: max |mean err|/sd {float(err):.3f}, sd ratio "
                f"min {float(ratio.min()):.3f} max {float(ratio.max()):.3f}"
            )
    if args.base_df is not None:
        print(f"learned base df {float(guide.base_df.detach()):.2f}")


if __name__ == "__main__":
    main()
