"""``AutoCNF(model)`` with its defaults in a plain Pyro SVI loop: accuracy, step cost, NUTS time.

Run by hand (not a test)::

    OMP_NUM_THREADS=1 python benchmarks/bench_autocnf.py --json benchmarks/results/bench_autocnf.json
    OMP_NUM_THREADS=1 python benchmarks/bench_autocnf.py --quick      # smoke run, ~1 minute

Three parts, all in float64 with one torch thread:

1. **Accuracy.** ``AutoCNF(model)`` (no arguments) on centered eight schools, Neal's funnel
   (10-D) and the banana, fitted by ``SVI(model, guide, ClippedAdam, Trace_ELBO(4 vectorized
   particles))`` for ``--steps`` steps at learning rate ``--lr`` decaying 10x, for each fit seed
   in ``--fit-seeds``; then :func:`pyro_cnf.importance_diagnostics` with 10^4 draws: KL(q||p) =
   log Z - ELBO, Pareto k-hat, and from the guide's own 10^4 draws the mean and sd of tau (eight
   schools) or v (funnel) against the exact ones, with the worst standardized mean error and sd
   error over every coordinate. NFE per training solve is reported every 500 steps. Pyro's
   ``AutoNormal``, ``AutoMultivariateNormal`` and ``AutoIAFNormal`` get the same protocol (fit
   seed 0; ``--no-peers`` skips them).
2. **Options.** On centered eight schools (fit seed 0), each default switched off in turn
   (``--ablation``): the row that justifies keeping it.
3. **Cost.** The seconds of one SVI step of AutoCNF and of Pyro's ``AutoIAFNormal`` (same
   model, same particles), each trained for 1000 steps first, then timed in alternating blocks;
   and Pyro's NUTS on centered eight schools (4 chains x 1000 draws after 1000 warm-up, target
   acceptance 0.95, JIT, chains one after the other), whose wall time the AutoCNF fit is
   compared with.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import pyro
import torch
from _common import machine
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal
from pyro.ops.stats import split_gelman_rubin

from pyro_cnf import AutoCNF, importance_diagnostics
from pyro_cnf.models import get_model

MODELS = {"eight_schools_centered": "tau", "funnel": "v", "banana": "x1"}
TARGETS = {  # accuracy bars: KL, k-hat, |E err|, |sd err| (relative)
    "eight_schools_centered": {"kl": 0.1, "khat": 0.5, "mean": 0.15, "sd": 0.10},
    "funnel": {"kl": 0.1, "sd": 0.05},
    "banana": {"kl": 0.05},
}
PEERS = {  # Pyro's guides under the same protocol, fit seed 0
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoIAFNormal": AutoIAFNormal,
}
ABLATIONS = {
    "defaults": {},
    "tail_layer=False": {"tail_layer": False},
    "gated=False": {"gated": False},
    "noncentered=False": {"noncentered": False},
    "warm_start=None": {"warm_start": None},
}


def svi_for(model: Any, guide: Any, args: argparse.Namespace) -> SVI:
    optim = pyro.optim.ClippedAdam({"lr": args.lr, "lrd": 0.1 ** (1 / args.steps)})
    return SVI(model, guide, optim, Trace_ELBO(num_particles=4, vectorize_particles=True))


def fit_and_score(
    name: str, options: dict[str, Any], seed: int, args: argparse.Namespace, peer: str = ""
) -> dict[str, Any]:
    m = get_model(name)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = PEERS[peer](m.model) if peer else AutoCNF(m.model, **options)
    svi = svi_for(m.model, guide, args)
    nfe, fit_time = [], 0.0
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        loss = svi.step()
        fit_time += time.perf_counter() - start
        if not math.isfinite(loss):
            raise FloatingPointError(f"{name}: loss {loss} at step {step}")
        if not peer and (step % 500 == 0 or step == args.steps):
            stats = guide.flow.stats
            nfe.append((step, stats.nfe_forward / max(stats.forward_solves, 1)))
            stats.reset()
    start = time.perf_counter()
    diagnostics = importance_diagnostics(m.model, guide, num_samples=args.draws, seed=0)
    score_time = time.perf_counter() - start
    guide.eval()
    with torch.no_grad():
        draws = Predictive(m.model, guide=guide, num_samples=args.draws, parallel=True)()
    ref = m.reference
    worst_mean = worst_sd = 0.0
    for site in ref.mean:
        x = draws[site].reshape(args.draws, -1).double()
        mean, sd = ref.mean[site].reshape(-1), ref.sd[site].reshape(-1)
        worst_mean = max(worst_mean, float(((x.mean(0) - mean).abs() / sd).max()))
        worst_sd = max(worst_sd, float((x.std(0) / sd - 1).abs().max()))
    key = MODELS[name]
    x = draws[key].reshape(-1).double()
    return {
        "model": name,
        "guide": peer or "AutoCNF",
        "options": {k: repr(v) for k, v in options.items()},
        "seed": seed,
        "kl": ref.log_Z - diagnostics.elbo,
        "khat": diagnostics.khat,
        "key": key,
        "mean": float(x.mean()),
        "sd": float(x.std()),
        "ref_mean": float(ref.mean[key]),
        "ref_sd": float(ref.sd[key]),
        "worst_mean_err": worst_mean,
        "worst_sd_err": worst_sd,
        "fit_time": fit_time,
        "score_time": score_time,
        "nfe": nfe,
    }


def step_costs(args: argparse.Namespace) -> dict[str, float]:
    m = get_model("eight_schools_centered")
    runs = {}
    pyro.clear_param_store()  # the two guides' parameters have different names
    for label, make in (("AutoCNF", AutoCNF), ("AutoIAFNormal", AutoIAFNormal)):
        pyro.set_rng_seed(0)
        guide = make(m.model)
        svi = svi_for(m.model, guide, args)
        for _ in range(args.cost_warmup):
            svi.step()
        runs[label] = svi
    times: dict[str, list[float]] = {label: [] for label in runs}
    for block in range(args.cost_blocks):
        order = list(runs) if block % 2 == 0 else list(reversed(runs))
        for label in order:  # ABBA: a change in load hits both alike
            start = time.perf_counter()
            for _ in range(10):
                runs[label].step()
            times[label].append((time.perf_counter() - start) / 10)
    return {label: sorted(t)[len(t) // 2] for label, t in times.items()}


def run_nuts(args: argparse.Namespace) -> dict[str, Any]:
    m = get_model("eight_schools_centered")
    chains: dict[str, list[torch.Tensor]] = {}
    divergences = 0
    start = time.perf_counter()
    for chain in range(args.nuts_chains):
        pyro.set_rng_seed(100 + chain)
        kernel = NUTS(m.model, target_accept_prob=0.95, jit_compile=True, ignore_jit_warnings=True)
        mcmc = MCMC(
            kernel, num_samples=args.nuts_draws, warmup_steps=args.nuts_warmup, disable_progbar=True
        )
        mcmc.run()
        divergences += len(mcmc.diagnostics()["divergences"]["chain 0"])
        for site, value in mcmc.get_samples().items():
            chains.setdefault(site, []).append(value)
    wall = time.perf_counter() - start
    stacked = {site: torch.stack(values) for site, values in chains.items()}
    tau = stacked["tau"].reshape(-1)
    return {
        "wall_time": wall,
        "max_rhat": max(float(split_gelman_rubin(v).max()) for v in stacked.values()),
        "divergences": divergences,
        "tau_mean": float(tau.mean()),
        "tau_sd": float(tau.std()),
    }


def verdict(row: dict[str, Any]) -> str:
    bars = TARGETS[row["model"]]
    misses = []
    if row["kl"] > bars["kl"]:
        misses.append("KL")
    if "khat" in bars and row["khat"] > bars["khat"]:
        misses.append("k-hat")
    if "mean" in bars and abs(row["mean"] - row["ref_mean"]) > bars["mean"]:
        misses.append(f"E[{row['key']}]")
    if "sd" in bars and abs(row["sd"] / row["ref_sd"] - 1) > bars["sd"]:
        misses.append(f"sd({row['key']})")
    return "met" if not misses else "missed: " + ", ".join(misses)


def accuracy_table(rows: list[dict[str, Any]], label: str) -> str:
    lines = [
        f"| {label} | fit seed | KL | k-hat | E[key] (exact) | sd(key) (exact) | worst mean err "
        "| worst sd err | fit s | score s | NFE per solve (step 500 ... end) | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if label == "model":
            first = f"{r['model']}: {r['guide']}"
        else:
            first = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        nfe = " ".join(f"{n:.0f}" for _, n in r["nfe"])
        lines.append(
            f"| {first} | {r['seed']} | {r['kl']:.3f} | {r['khat']:.2f} | {r['key']}: "
            f"{r['mean']:.3f} ({r['ref_mean']:.3f}) | {r['sd']:.3f} ({r['ref_sd']:.3f}) | "
            f"{r['worst_mean_err']:.3f} | {r['worst_sd_err']:.3f} | {r['fit_time']:.0f} | "
            f"{r['score_time']:.0f} | {nfe} | {verdict(r)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--fit-seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cost", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cost-warmup", type=int, default=1000)
    parser.add_argument("--cost-blocks", type=int, default=20)
    parser.add_argument("--nuts", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--nuts-chains", type=int, default=4)
    parser.add_argument("--nuts-warmup", type=int, default=1000)
    parser.add_argument("--nuts-draws", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--json", default=None, help="write the raw numbers to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.draws, args.fit_seeds, args.ablation = 50, 500, "0", False
        args.cost_warmup, args.cost_blocks = 20, 2
        args.nuts_chains, args.nuts_warmup, args.nuts_draws = 1, 50, 50
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    seeds = [int(s) for s in args.fit_seeds.split(",")]
    start = time.perf_counter()
    results: dict[str, Any] = {"args": vars(args)}
    rows = []
    for name in args.models.split(","):
        for seed in seeds:
            rows.append(fit_and_score(name, {}, seed, args))
            print(accuracy_table(rows[-1:], "model"), file=sys.stderr, flush=True)
        if args.peers:
            for peer in PEERS:
                rows.append(fit_and_score(name, {}, 0, args, peer))
                print(accuracy_table(rows[-1:], "model"), file=sys.stderr, flush=True)
    results["accuracy"] = rows
    if args.ablation:
        results["ablation"] = [
            fit_and_score("eight_schools_centered", options, 0, args)
            for label, options in ABLATIONS.items()
            if label != "defaults"
        ]
    if args.cost:
        results["step_cost"] = step_costs(args)
    if args.nuts:
        results["nuts"] = run_nuts(args)
    wall = time.perf_counter() - start
    print(f"Machine: {machine()}; float64; {time.strftime('%Y-%m-%d')}; total {wall / 60:.1f} min")
    print(f"Command: python benchmarks/bench_autocnf.py {' '.join(argv or sys.argv[1:])}\n")
    print(accuracy_table(rows, "model"))
    if args.ablation:
        defaults = [
            r
            for r in rows
            if r["model"] == "eight_schools_centered" and r["seed"] == 0 and r["guide"] == "AutoCNF"
        ]
        print("\nCentered eight schools, fit seed 0, each default off in turn:\n")
        print(accuracy_table(defaults + results["ablation"], "AutoCNF options"))
    if args.cost:
        cost = results["step_cost"]
        ratio = cost["AutoCNF"] / cost["AutoIAFNormal"]
        print(
            f"\nOne SVI step on centered eight schools after {args.cost_warmup} steps (median of "
            f"{args.cost_blocks} blocks of 10): AutoCNF {1000 * cost['AutoCNF']:.1f} ms, "
            f"AutoIAFNormal {1000 * cost['AutoIAFNormal']:.1f} ms, ratio {ratio:.1f}"
        )
    if args.nuts:
        nuts = results["nuts"]
        fits = [
            r["fit_time"]
            for r in rows
            if r["model"] == "eight_schools_centered" and r["guide"] == "AutoCNF"
        ]
        print(
            f"\nNUTS on centered eight schools: {args.nuts_chains} x {args.nuts_draws} after "
            f"{args.nuts_warmup}: {nuts['wall_time']:.0f} s, max R-hat {nuts['max_rhat']:.4f}, "
            f"{nuts['divergences']} divergences, E[tau] {nuts['tau_mean']:.3f}, sd(tau) "
            f"{nuts['tau_sd']:.3f}; AutoCNF fit / NUTS: "
            + ", ".join(f"{f / nuts['wall_time']:.2f}" for f in fits)
        )
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
