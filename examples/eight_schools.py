r"""Centered eight schools: AutoCNF against Pyro's AutoNormal and the exact posterior.

The centered eight schools model has a funnel between the spread :math:`\tau` and the schools'
effects :math:`\theta`: at small :math:`\tau` every :math:`\theta_j` is pinned to :math:`\mu`.
A Gaussian guide cannot follow it; ``AutoCNF(model)`` can. Given :math:`(\mu, \tau)` the
:math:`\theta_j` integrate out (:math:`y_j \mid \mu, \tau \sim \mathcal N(\mu, \sigma_j^2 +
\tau^2)`), so the exact :math:`\log Z` and moments of :math:`\tau` come from a 2-D quadrature
over :math:`(\mu, \log\tau)`. Each guide is fitted by the same plain SVI loop and judged by

* :math:`\mathrm{KL}(q\,\|\,p) = \log Z - \mathrm{ELBO}` against the exact :math:`\log Z`;
* Pareto :math:`\hat k` of the importance weights (below 0.5 good, above 0.7 the guide misses
  posterior mass) and their effective sample size;
* :math:`E\tau` and :math:`\mathrm{sd}\,\tau` of the guide's own draws (``q``) and of the
  importance-resampled draws (``IS``), against the exact values.

Writes ``report.txt``, ``eight_schools.png`` (each guide's draws of :math:`(\mu, \log\tau)` over
the exact posterior's contours) and, with ArviZ, ``AutoCNF.nc`` and ``AutoNormal.nc``.
``pyro-cnf demo`` runs this script (2-3 minutes on two CPU cores)::

    python examples/eight_schools.py               # 2000 steps per guide
    python examples/eight_schools.py --smoke       # seconds: checks that everything runs
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

Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)  # estimated treatment effects
SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)  # their standard errors


def model(y: torch.Tensor, sigma: torch.Tensor) -> None:
    """The centered model: theta_j ~ N(mu, tau^2), y_j ~ N(theta_j, sigma_j^2)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def log_marginal(
    mu: torch.Tensor, log_tau: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The log density log p(mu, log tau, y), theta integrated out."""
    tau = log_tau.exp()
    log_prior = dist.Normal(0.0, 5.0).log_prob(mu) + dist.HalfCauchy(5.0).log_prob(tau) + log_tau
    scale = (sigma**2 + tau.unsqueeze(-1) ** 2).sqrt()
    return log_prior + dist.Normal(mu.unsqueeze(-1), scale).log_prob(y).sum(-1)


def exact_answer(y: torch.Tensor, sigma: torch.Tensor, num: int = 401) -> dict[str, float]:
    """The exact log Z, E tau and sd tau by quadrature on a (mu, log tau) grid holding all the mass."""
    mu, log_tau = torch.meshgrid(
        torch.linspace(-50.0, 50.0, num), torch.linspace(-40.0, 12.0, num), indexing="ij"
    )
    log_p = log_marginal(mu, log_tau, y, sigma)
    cell = (100.0 / (num - 1)) * (52.0 / (num - 1))
    weights = torch.softmax(log_p.flatten(), 0)
    tau = log_tau.flatten().exp()
    mean = float((weights * tau).sum())
    return {
        "log_Z": float(torch.logsumexp(log_p.flatten(), 0)) + math.log(cell),
        "mean": mean,
        "sd": float((weights * (tau - mean) ** 2).sum().sqrt()),
    }


def fit(
    name: str, y: torch.Tensor, sigma: torch.Tensor, args: argparse.Namespace
) -> tuple[AutoCNF | AutoNormal, list[float], float]:
    """Fit one guide by SVI; return it, its losses and the fit time in seconds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    if name == "AutoCNF":
        guide, particles = AutoCNF(model), 4  # every setting at its default
    else:
        guide, particles = AutoNormal(model, init_scale=0.1), 16
    optimizer = pyro.optim.ClippedAdam(
        {"lr": 0.01, "lrd": 0.1 ** (1 / args.steps), "clip_norm": 10.0}
    )
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, optimizer, elbo)
    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        losses.append(svi.step(y, sigma))
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
    y, sigma = torch.tensor(Y), torch.tensor(SIGMA)
    exact = exact_answer(y, sigma)

    rows, draws, summaries, S = [], {}, [], args.num_samples
    for name in ("AutoCNF", "AutoNormal"):
        guide, losses, seconds = fit(name, y, sigma, args)
        # Importance sampling with the guide as proposal: k-hat, ESS and an estimate of log Z.
        check = importance_diagnostics(model, guide, y, sigma, num_samples=S, seed=args.seed)
        own = importance_draws(model, guide, y, sigma, num_samples=S, seed=args.seed + 1)
        draws[name] = (own.values["mu"], own.values["tau"].log(), exact["log_Z"] - check.elbo)
        tau_q, tau_is = own.values["tau"], check.draws["tau"]
        rows.append(
            f"{name:<10}  {exact['log_Z'] - check.elbo:>8.3f}  {check.khat:>5.2f}  "
            f"{check.ess:>6.0f}  {check.log_evidence:>9.3f}  {check.log_evidence_se:>6.3f}  "
            f"{tau_q.mean():>6.3f}  {tau_q.std():>7.3f}  {tau_is.mean():>7.3f}  "
            f"{tau_is.std():>8.3f}  {seconds:>5.0f}"
        )
        if az is not None:  # the guide's draws with log p, log q and the pointwise likelihood
            idata = to_inference_data(
                model, guide, y, sigma, num_samples=S, seed=args.seed, losses=losses
            )
            idata.to_netcdf(str(args.out / f"{name}.nc"))
            summary = az.summary(idata, var_names=["mu", "tau"], kind="stats")
            summaries.append(f"ArviZ summary of {name} (its own draws):\n{summary.to_string()}")

    header = "guide       KL(q||p)  k-hat     ESS  log_Z(IS)      se  E[tau]  sd(tau)"
    report = "\n".join(
        [
            "Centered eight schools (mu, tau, theta[8]): AutoCNF and AutoNormal vs exact",
            f"{args.steps} SVI steps per guide, seed {args.seed}, {args.num_samples} draws"
            + ("  [smoke run: the numbers mean nothing]" if args.smoke else ""),
            "",
            f"{header}  E_IS[tau]  sd_IS(tau)  fit_s",
            *rows,
            f"{'exact':<10}  {0:>8.3f}  {'-':>5}  {'-':>6}  {exact['log_Z']:>9.4f}  {0:>6.3f}  "
            f"{exact['mean']:>6.3f}  {exact['sd']:>7.3f}  {exact['mean']:>7.3f}  "
            f"{exact['sd']:>8.3f}  {'-':>5}",
            "",
            "KL(q||p) = log Z - ELBO with the exact log Z. k-hat: Pareto k of the importance",
            "weights (< 0.5 good, > 0.7 the guide misses posterior mass). E[tau], sd(tau): the",
            "guide's own draws; E_IS, sd_IS: importance-resampled draws.",
            *("\n" + text for text in summaries),
        ]
    )
    (args.out / "report.txt").write_text(report + "\n")
    print("\n" + report)

    figure = Figure(figsize=(6.4, 3.2), layout="constrained")
    mu, log_tau = torch.meshgrid(
        torch.linspace(-15.0, 25.0, 200), torch.linspace(-5.0, 3.5, 200), indexing="xy"
    )
    density = (log_marginal(mu, log_tau, y, sigma) - exact["log_Z"]).exp()
    levels = [float(density.max()) * math.exp(-k * k / 2) for k in (3, 2, 1)]  # "1-3 sd"
    for ax, (name, (mu_q, log_tau_q, kl)) in zip(figure.subplots(1, 2), draws.items(), strict=True):
        ax.contour(
            mu.numpy(), log_tau.numpy(), density.numpy(), levels=levels, colors="k", linewidths=0.8
        )
        ax.scatter(mu_q[:2000].numpy(), log_tau_q[:2000].numpy(), s=2, alpha=0.3, color="C1")
        ax.set(xlim=(-15, 25), ylim=(-5, 3.5), xlabel="mu", ylabel="log tau")
        ax.set_title(f"{name}: KL {kl:.2f}", fontsize=9)
    figure.suptitle("guide draws (dots) over the exact posterior (contours)", fontsize=10)
    figure.savefig(args.out / "eight_schools.png", dpi=100)
    print(f"\nwrote {args.out}/report.txt, eight_schools.png" + (", *.nc" if az else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Centered eight schools: AutoCNF vs AutoNormal")
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps per guide")
    parser.add_argument("--num-samples", type=int, default=10_000, help="importance draws")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", type=Path, default=Path("pyro-cnf-out/eight_schools"))
    parser.add_argument("--smoke", action="store_true", help="30 steps, 500 draws (seconds)")
    args = parser.parse_args()
    if args.steps < 1 or args.num_samples < 2:
        parser.error("--steps must be at least 1 and --num-samples at least 2")
    main(args)
