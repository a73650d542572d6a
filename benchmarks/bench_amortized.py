"""Local latents under subsampling: AutoAmortizedCNF beside Pyro's AutoNormal and NUTS.

Parts (``--parts``, default both):

1. Step cost against the plate's full size: one SVI step (subsample of 100 groups, 4 vectorized
   particles) of the hierarchical Gaussian model at N = 2000 and N = 20000 groups, for
   AutoAmortizedCNF and AutoNormal, all four timed alternately (ABBA) in one process.
2. A non-conjugate posterior: hierarchical logistic regression, G groups of m Bernoulli
   observations with a random intercept per group (centered), a shared slope, and a location and
   scale for the intercepts::

       mu ~ N(0, 2), sigma ~ HalfNormal(1), beta ~ N(0, 2),
       alpha_g ~ N(mu, sigma), y_gj ~ Bernoulli(logit^-1(alpha_g + beta x_gj)).

   Pyro's NUTS on the full data is the reference (2 chains x 1000 draws after 1000 warm-up,
   R-hat printed); both guides fit on subsamples of G/5 groups with the same plain SVI loop
   (ClippedAdam, lr 0.01 decaying to 1e-4, 4 vectorized particles). Errors are in NUTS
   posterior sds: ``|mean - mean_NUTS| / sd_NUTS`` and ``sd / sd_NUTS``, for each global and
   for the intercepts (the worst group and the mean over groups).

``OMP_NUM_THREADS=1 python benchmarks/bench_amortized.py``
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from _common import machine, per_call
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_cnf import AutoAmortizedCNF


def gaussian_model(y: torch.Tensor, subsample_size: int | None = None) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("groups", y.shape[0], subsample_size=subsample_size) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(theta[..., None], 1.0).to_event(1), obs=y[idx])


def logistic_model(x: torch.Tensor, y: torch.Tensor, subsample_size: int | None = None) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 2.0))
    with pyro.plate("groups", x.shape[0], subsample_size=subsample_size) as idx:
        alpha = pyro.sample("alpha", dist.Normal(mu, sigma))
        logits = alpha[..., None] + beta[..., None] * x[idx]
        pyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=y[idx])


def logistic_plate(x: torch.Tensor, y: torch.Tensor, subsample_size: int | None = None):
    return pyro.plate("groups", x.shape[0], subsample_size=subsample_size)


def svi(model, guide, lr: float = 0.01, final_lr: float = 1e-4, steps: int = 1) -> SVI:
    optimizer = pyro.optim.ClippedAdam({"lr": lr, "lrd": (final_lr / lr) ** (1 / steps)})
    return SVI(model, guide, optimizer, Trace_ELBO(num_particles=4, vectorize_particles=True))


def step_cost(args: argparse.Namespace) -> None:
    steps = {}
    pyro.clear_param_store()
    for num_groups in (2000, 20000):
        y = 1.5 + torch.randn(num_groups, 1) + torch.randn(num_groups, 5)
        for name in ("AutoAmortizedCNF", "AutoNormal"):
            if name == "AutoNormal":
                guide = AutoNormal(gaussian_model)
            else:
                guide = AutoAmortizedCNF(gaussian_model, "groups", lambda idx, y, **_: y[idx])
            guide._pyro_name = f"{name}_{num_groups}"  # its own parameter names in the store
            run = svi(gaussian_model, guide)
            for _ in range(args.warmup):
                run.step(y, subsample_size=100)
            steps[f"{name}, N = {num_groups}"] = lambda run=run, y=y: run.step(
                y, subsample_size=100
            )
    times = per_call(steps, samples=args.samples, target_s=0.2)
    print("| guide | N | ms per step (median) | ratio N = 20000 / N = 2000 |")
    print("|---|---:|---:|---:|")
    for name in ("AutoAmortizedCNF", "AutoNormal"):
        small = statistics.median(times[f"{name}, N = 2000"])
        large = statistics.median(times[f"{name}, N = 20000"])
        print(f"| {name} | 2000 | {1e3 * small:.1f} | |")
        print(f"| {name} | 20000 | {1e3 * large:.1f} | {large / small:.2f} |")


def logistic_data(num_groups: int, per_group: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    alpha = -0.5 + 0.8 * torch.randn(num_groups, generator=generator)
    x = torch.randn(num_groups, per_group, generator=generator)
    p = torch.sigmoid(alpha[:, None] + 1.2 * x)
    return x, torch.bernoulli(p, generator=generator)


def errors(draws: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, str]:
    out = {}
    for site in ("mu", "sigma", "beta", "alpha"):
        ref = reference[site].reshape(reference[site].shape[0], -1)
        got = draws[site].reshape(draws[site].shape[0], -1)
        mean_error = ((got.mean(0) - ref.mean(0)).abs() / ref.std(0)).flatten()
        sd_ratio = (got.std(0) / ref.std(0)).flatten()
        if site == "alpha":
            out[site] = (
                f"{mean_error.max():.2f} (mean {mean_error.mean():.2f}) / "
                f"{sd_ratio.min():.2f}-{sd_ratio.max():.2f}"
            )
        else:
            out[site] = f"{float(mean_error):.2f} / {float(sd_ratio):.2f}"
    return out


def non_conjugate(args: argparse.Namespace) -> None:
    x, y = logistic_data(args.groups, args.per_group)
    pyro.set_rng_seed(0)
    start = time.perf_counter()
    mcmc = MCMC(
        NUTS(logistic_model, target_accept_prob=0.9, jit_compile=True, ignore_jit_warnings=True),
        num_samples=1000,
        warmup_steps=1000,
        num_chains=2,
        mp_context="spawn",
        disable_progbar=True,
    )
    mcmc.run(x, y)
    nuts_time = time.perf_counter() - start
    reference = mcmc.get_samples()
    rhat = max(float(v["r_hat"].max()) for v in mcmc.diagnostics().values() if "r_hat" in v)
    rows = {"NUTS (reference)": ({}, nuts_time)}
    subsample = args.groups // 5
    for name in ("AutoAmortizedCNF", "AutoNormal"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        if name == "AutoNormal":  # its plate follows each call's subsample_size
            guide = AutoNormal(logistic_model, create_plates=logistic_plate)
        else:
            guide = AutoAmortizedCNF(
                logistic_model, "groups", lambda idx, x, y, **_: torch.cat([x[idx], y[idx]], -1)
            )
        run = svi(logistic_model, guide, steps=args.steps)
        start = time.perf_counter()
        for _ in range(args.steps):
            run.step(x, y, subsample_size=subsample)
        fit_time = time.perf_counter() - start
        with torch.no_grad(), pyro.plate("draws", 2000, dim=-2):
            draws = guide(x, y)
        rows[name] = (errors(draws, reference), fit_time)
    print(
        f"\nHierarchical logistic regression, {args.groups} groups x {args.per_group} "
        f"observations; guides on subsamples of {subsample} groups, {args.steps} steps. NUTS "
        f"max R-hat {rhat:.3f}. Cells: mean error (NUTS sds) / sd ratio."
    )
    print("| method | mu | sigma | beta | alpha: worst (mean) / sd ratios | seconds |")
    print("|---|---|---|---|---|---:|")
    for name, (cells, seconds) in rows.items():
        if not cells:
            print(f"| {name} | | | | | {seconds:.0f} |")
            continue
        print(
            f"| {name} | {cells['mu']} | {cells['sigma']} | {cells['beta']} | {cells['alpha']} "
            f"| {seconds:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="1,2")
    parser.add_argument("--samples", type=int, default=10, help="timing samples per guide")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--per-group", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    print(machine("float64"))
    print()
    parts = args.parts.split(",")
    if "1" in parts:
        step_cost(args)
    if "2" in parts:
        non_conjugate(args)


if __name__ == "__main__":
    main()
