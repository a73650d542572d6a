r"""Neal's funnel in 10 dimensions: how far into the neck does each guide reach?

:math:`v \sim \mathcal N(0, 3^2)` and :math:`x_i \mid v \sim \mathcal N(0, e^{v})` for
:math:`i = 1, \dots, 9`. Nothing is observed, so :math:`\log Z = 0`, :math:`E v = 0` and
:math:`\mathrm{sd}\, v = 3` exactly. The scale of :math:`x` changes by :math:`e^{\pm 4.5}` along
:math:`v`: a Gaussian guide cannot follow it and under-covers :math:`v`. ``AutoCNF(model)`` and
Pyro's ``AutoNormal`` are fitted by the same plain SVI loop and judged by
:math:`\mathrm{KL}(q\,\|\,p) = -\mathrm{ELBO}`, Pareto :math:`\hat k`, and the mean and sd of
:math:`v` from the guide's own draws (``q``) and the importance-resampled ones (``IS``).

Writes ``report.txt``, ``funnel.png`` (each guide's draws of :math:`(v, x_1)` over the exact
density's contours) and, with ArviZ, ``AutoCNF.nc`` and ``AutoNormal.nc``::

    python examples/funnel.py              # 1500 steps per guide
    python examples/funnel.py --smoke      # seconds: checks that everything runs
"""

import argparse
import math
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_cnf import AutoCNF, importance_diagnostics, importance_draws, to_inference_data

try:
    with warnings.catch_warnings():  # ArviZ 0.23 announces its 1.x refactor on import
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
except ImportError:
    az = None

DIM = 10


def model() -> None:
    """Neal's funnel: v ~ N(0, 3^2), x | v ~ N(0, e^v I) in DIM - 1 dimensions."""
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    scale = (v / 2).exp().unsqueeze(-1)
    pyro.sample("x", dist.Normal(torch.zeros(DIM - 1), scale).to_event(1))


def log_density(v: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Exact log density of (v, x_1): the other coordinates integrate out."""
    return dist.Normal(0.0, 3.0).log_prob(v) + dist.Normal(0.0, (v / 2).exp()).log_prob(x1)


def fit(name: str, args: argparse.Namespace) -> tuple[AutoCNF | AutoNormal, list[float], float]:
    """Fit one guide by SVI; return it, its losses and the fit time in seconds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    if name == "AutoCNF":
        guide, particles = AutoCNF(model), 4  # every setting at its default
    else:  # the funnel's scales are 3 (v) and about 9.5 (x): start wide
        guide, particles = AutoNormal(model, init_scale=1.0), 16
    optimizer = pyro.optim.ClippedAdam(
        {"lr": 0.01, "lrd": 0.1 ** (1 / args.steps), "clip_norm": 10.0}
    )
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, optimizer, elbo)
    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        losses.append(svi.step())
        if step % 500 == 0 or step == args.steps - 1:
            print(f"{name:<10}  step {step:>5}  loss {losses[-1]:10.4f}")
    return guide, losses, time.perf_counter() - start


def main(args: argparse.Namespace) -> None:
    """Fit both guides, compare them with the exact answer, write the report and figures."""
    if args.smoke:
        args.steps, args.num_samples = 30, 500
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # small tensors: a second thread only waits
    args.out.mkdir(parents=True, exist_ok=True)

    rows, draws, summaries, S = [], {}, [], args.num_samples
    for name in ("AutoCNF", "AutoNormal"):
        guide, losses, seconds = fit(name, args)
        # Importance sampling with the guide as proposal: k-hat, ESS and an estimate of log Z.
        check = importance_diagnostics(model, guide, num_samples=S, seed=args.seed)
        own = importance_draws(model, guide, num_samples=S, seed=args.seed + 1)
        draws[name] = (own.values["v"], own.values["x"][:, 0], -check.elbo)
        v_q, v_is = own.values["v"], check.draws["v"]
        rows.append(
            f"{name:<10}  {-check.elbo:>8.3f}  {check.khat:>5.2f}  {check.ess:>6.0f}  "
            f"{check.log_evidence:>9.3f}  {check.log_evidence_se:>6.3f}  {v_q.mean():>6.3f}  "
            f"{v_q.std():>6.3f}  {v_is.mean():>6.3f}  {v_is.std():>6.3f}  {seconds:>5.0f}"
        )
        if az is not None:  # the guide's draws with log p and log q, and the loss history
            idata = to_inference_data(
                model, guide, num_samples=S, seed=args.seed, log_likelihood=False, losses=losses
            )
            idata.to_netcdf(str(args.out / f"{name}.nc"))
            summary = az.summary(idata, var_names=["v"], kind="stats")
            summaries.append(f"ArviZ summary of {name} (its own draws):\n{summary.to_string()}")

    report = "\n".join(
        [
            "Neal's funnel (v, x[9]): AutoCNF and AutoNormal; log Z = 0 and sd(v) = 3 exactly",
            f"{args.steps} SVI steps per guide, seed {args.seed}, {S} draws"
            + ("  [smoke run: the numbers mean nothing]" if args.smoke else ""),
            "",
            "guide       KL(q||p)  k-hat     ESS  log_Z(IS)      se    E[v]   sd(v)  E_IS[v]"
            "  sd_IS(v)  fit_s",
            *rows,
            f"{'exact':<10}  {0:>8.3f}  {'-':>5}  {'-':>6}  {0:>9.3f}  {0:>6.3f}  {0:>6.3f}  "
            f"{3:>6.3f}  {0:>6.3f}  {3:>6.3f}  {'-':>5}",
            "",
            "KL(q||p) = log Z - ELBO = -ELBO. k-hat: Pareto k of the importance weights (< 0.5",
            "good, > 0.7 the guide misses posterior mass). E[v], sd(v): the guide's own draws;",
            "E_IS, sd_IS: importance-resampled draws.",
            *("\n" + text for text in summaries),
        ]
    )
    (args.out / "report.txt").write_text(report + "\n")
    print("\n" + report)

    figure = Figure(figsize=(6.4, 3.2), layout="constrained")
    v, x1 = torch.meshgrid(
        torch.linspace(-9.0, 9.0, 200), torch.linspace(-25.0, 25.0, 200), indexing="xy"
    )
    density = log_density(v, x1).exp()
    levels = [float(density.max()) * math.exp(-k * k / 2) for k in (3, 2, 1)]  # "1-3 sd"
    for ax, (name, (v_q, x1_q, kl)) in zip(figure.subplots(1, 2), draws.items(), strict=True):
        ax.contour(
            v.numpy(), x1.numpy(), density.numpy(), levels=levels, colors="k", linewidths=0.8
        )
        ax.scatter(v_q[:2000].numpy(), x1_q[:2000].numpy(), s=2, alpha=0.3, color="C1")
        ax.set(xlim=(-9, 9), ylim=(-25, 25), xlabel="v", ylabel="x[1]")
        ax.set_title(f"{name}: KL {kl:.2f}", fontsize=9)
    figure.suptitle("guide draws (dots) over the exact funnel density (contours)", fontsize=10)
    figure.savefig(args.out / "funnel.png", dpi=100)
    print(f"\nwrote {args.out}/report.txt, funnel.png" + (", *.nc" if az else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Neal's funnel: AutoCNF vs AutoNormal")
    parser.add_argument("--steps", type=int, default=1500, help="SVI steps per guide")
    parser.add_argument("--num-samples", type=int, default=10_000, help="importance draws")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", type=Path, default=Path("pyro-cnf-out/funnel"))
    parser.add_argument("--smoke", action="store_true", help="30 steps, 500 draws (seconds)")
    args = parser.parse_args()
    if args.steps < 1 or args.num_samples < 2:
        parser.error("--steps must be at least 1 and --num-samples at least 2")
    main(args)
