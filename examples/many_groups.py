r"""Thousands of groups fitted on subsamples: an amortized guide for the local latents.

A hierarchical model with a latent per group, :math:`\mu \sim \mathcal N(0, 10^2)`,
:math:`\theta_i \mid \mu \sim \mathcal N(\mu, 1)` and :math:`y_{ij} \mid \theta_i \sim
\mathcal N(\theta_i, 1)` for :math:`N` groups of :math:`n = 5` observations, is fitted by plain
SVI on subsamples of 100 groups per step. ``AutoAmortizedCNF`` gives :math:`\mu` an ``AutoCNF``
and every :math:`\theta_i` one conditional flow read at the group's observations and the drawn
:math:`\mu`; Pyro's ``AutoNormal`` keeps a mean and a scale per group. The posterior is Gaussian
and known in closed form, so each guide's means and sds of :math:`\mu` and of every
:math:`\theta_i` are compared with the exact ones (errors in exact posterior sds), with the
importance diagnostics of the full-data model (Pareto :math:`\hat k`, log-evidence against the
exact one).

Writes ``report.txt`` and ``many_groups.png`` (each guide's posterior means and sds of the
:math:`\theta_i` against the exact ones)::

    python examples/many_groups.py              # 5000 groups, 3000 steps per guide
    python examples/many_groups.py --smoke      # seconds: checks that everything runs
"""

import argparse
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_cnf import AutoAmortizedCNF, importance_diagnostics

N_OBS = 5


def model(y: torch.Tensor, subsample_size: int | None = None) -> None:
    """The model: mu ~ N(0, 10), theta_i ~ N(mu, 1), y_ij ~ N(theta_i, 1), groups subsampled."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("groups", y.shape[0], subsample_size=subsample_size) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(theta[..., None], 1.0).to_event(1), obs=y[idx])


def group_observations(idx: torch.Tensor, y: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """The context of each group in the subsample: its observations, one row per group."""
    return y[idx]


def plate_of(y: torch.Tensor, subsample_size: int | None = None) -> pyro.plate:
    """The groups' plate as the model makes it, for AutoNormal's ``create_plates``."""
    return pyro.plate("groups", y.shape[0], subsample_size=subsample_size)


def exact_posterior(y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Means and sds of mu and of every theta_i (marginal over mu), and log p(y)."""
    num_groups, n = y.shape
    precision = 1 / 100 + num_groups / (1 + 1 / n)  # ybar_i | mu ~ N(mu, 1 + 1/n)
    mu_mean = y.mean(1).sum() / (1 + 1 / n) / precision
    mu_sd = precision**-0.5
    # log p(y): per group, y_i | mu ~ N(mu 1, I + 1 1^T); then mu integrated against its prior
    within = ((y - y.mean(1, keepdim=True)) ** 2).sum()
    log_z = (
        -0.5 * num_groups * (n - 1) * torch.log(torch.tensor(2 * torch.pi))
        - 0.5 * within
        - 0.5 * num_groups * torch.log(torch.tensor(float(n)))
        + dist.MultivariateNormal(
            torch.zeros(num_groups), torch.eye(num_groups) * (1 + 1 / n) + 100.0
        ).log_prob(y.mean(1))
    )
    return {
        "mu_mean": mu_mean,
        "mu_sd": torch.tensor(mu_sd),
        "theta_mean": (mu_mean + y.sum(1)) / (n + 1),
        "theta_sd": torch.tensor((1 / (n + 1) + mu_sd**2 / (n + 1) ** 2) ** 0.5),
        "log_z": log_z,
    }


def fit(
    name: str, y: torch.Tensor, args: argparse.Namespace
) -> tuple[AutoAmortizedCNF | AutoNormal, float]:
    """Fit one guide by plain SVI on subsamples; return it and the seconds it took."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    if name == "AutoAmortizedCNF":
        guide = AutoAmortizedCNF(model, "groups", group_observations)
    else:  # its plate follows the call's subsample_size (every group when None)
        guide = AutoNormal(model, create_plates=plate_of)
    optimizer = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.01 ** (1 / args.steps)})
    svi = SVI(model, guide, optimizer, Trace_ELBO(num_particles=4, vectorize_particles=True))
    start = time.perf_counter()
    for step in range(args.steps):
        loss = svi.step(y, subsample_size=args.subsample)
        if step % 500 == 0 or step == args.steps - 1:
            print(f"{name:<16}  step {step:>5}  loss {loss:12.2f}")
    return guide, time.perf_counter() - start


def main(args: argparse.Namespace) -> None:
    """Fit both guides, compare them with the exact posterior, write the report and figure."""
    if args.smoke:
        args.groups, args.steps, args.num_samples, args.subsample = 300, 40, 200, 30
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # small tensors: a second thread only waits
    args.out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    theta = 1.5 + torch.randn(args.groups, generator=generator)
    y = theta[:, None] + torch.randn(args.groups, N_OBS, generator=generator)
    exact = exact_posterior(y)

    rows, points = [], {}
    for name in ("AutoAmortizedCNF", "AutoNormal"):
        guide, seconds = fit(name, y, args)
        with torch.no_grad(), pyro.plate("draws", args.num_samples, dim=-2):
            draws = guide(y)  # without subsample_size: every group
        mu, theta = draws["mu"].reshape(-1), draws["theta"]
        theta_error = (theta.mean(0) - exact["theta_mean"]).abs() / exact["theta_sd"]
        theta_sd = theta.std(0) / exact["theta_sd"]
        check = importance_diagnostics(model, guide, y, num_samples=args.num_samples, seed=0)
        points[name] = (theta.mean(0), theta.std(0))
        rows.append(
            f"{name:<16}  {(mu.mean() - exact['mu_mean']).abs() / exact['mu_sd']:>7.2f}  "
            f"{mu.std() / exact['mu_sd']:>6.2f}  {theta_error.max():>9.2f}  "
            f"{theta_error.mean():>9.3f}  {theta_sd.min():>6.2f}  {theta_sd.max():>6.2f}  "
            f"{check.khat:>5.2f}  {check.log_evidence - exact['log_z']:>9.2f}  {seconds:>6.0f}"
        )

    report = "\n".join(
        [
            f"{args.groups} groups x {N_OBS} observations, subsamples of {args.subsample} "
            f"groups, {args.steps} SVI steps per guide, seed {args.seed}"
            + ("  [smoke run: the numbers mean nothing]" if args.smoke else ""),
            "",
            "guide             mu_err  mu_sd  theta_err  theta_err  theta_sd ratio  k-hat"
            "  logZ_err  fit_s",
            "                                    (worst)     (mean)   min     max",
            *rows,
            "",
            "Errors in exact posterior sds (|E_q - E_exact| / sd_exact); sd ratios sd_q / sd_exact;",
            "theta over every group, from the guide's draws of all groups. k-hat and logZ_err",
            "(log-evidence by importance sampling minus the exact one): the full-data model.",
        ]
    )
    (args.out / "report.txt").write_text(report + "\n")
    print("\n" + report)

    figure = Figure(figsize=(6.4, 3.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    for k, (name, (mean, sd)) in enumerate(points.items()):
        left.scatter(exact["theta_mean"], mean, s=2, alpha=0.4, color=f"C{k}", label=name)
        right.scatter(exact["theta_mean"], sd, s=2, alpha=0.4, color=f"C{k}")
    right.axhline(float(exact["theta_sd"]), color="k", linewidth=0.8)
    left.set(xlabel="exact posterior mean of theta_i", ylabel="guide's mean")
    right.set(xlabel="exact posterior mean of theta_i", ylabel="guide's sd (line: exact)")
    left.legend(fontsize=8, markerscale=4)
    figure.savefig(args.out / "many_groups.png", dpi=100)
    print(f"\nwrote {args.out}/report.txt, many_groups.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Thousands of groups: an amortized guide")
    parser.add_argument("--groups", type=int, default=5000, help="number of groups N")
    parser.add_argument("--subsample", type=int, default=100, help="groups per SVI step")
    parser.add_argument("--steps", type=int, default=3000, help="SVI steps per guide")
    parser.add_argument("--num-samples", type=int, default=400, help="draws for the comparison")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", type=Path, default=Path("pyro-cnf-out/many_groups"))
    parser.add_argument("--smoke", action="store_true", help="300 groups, 40 steps (seconds)")
    main(parser.parse_args())
