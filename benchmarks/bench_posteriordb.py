"""Every guide on every posteriordb posterior, against posteriordb's reference draws and NUTS.

Run by hand (not a test)::

    python benchmarks/bench_posteriordb.py --jobs 2 --json benchmarks/results/bench_posteriordb.json
    python benchmarks/bench_posteriordb.py --steps 50 --nuts-samples 50 --posteriors arK-arK  # smoke

Protocol, the same for every guide (Pyro's ``AutoNormal``, ``AutoMultivariateNormal``,
``AutoIAFNormal``; ``AutoFlow(model, "realnvp")``; ``AutoCNF(model)``), each with its defaults
except ``init_loc_fn=init_to_median`` for ``AutoNormal`` (the others' default): a plain Pyro
``SVI`` loop of ``--steps`` steps, ``Trace_ELBO(num_particles=--particles,
vectorize_particles=True)``, ``ClippedAdam`` at ``--lr`` decaying 10x over the run, seed
``--seed`` before each fit, float64. Then ``--draws`` guide draws are scored
(:func:`pyro_cnf.infer.importance_draws`) and compared with the reference draws, over every
quantity of the reference (deterministic sites included):

* ``mean err``: the worst standardized mean error ``|mean_q - mean_ref| / sd_ref``;
* ``sd ratio``: the ``sd_q / sd_ref`` furthest from 1 (in log scale);
* ``SW1``: sliced 1-Wasserstein distance between guide draws and one half of the reference draws
  (chains 1-5), in coordinates standardized by the reference mean and sd: the mean over
  ``--projections`` random unit directions of the 1-D Wasserstein-1 distance of the projections.
  The row ``noise floor`` gives the same distance between the two halves of the reference
  (chains 1-5 vs 6-10), each of 5000 draws, as are the guide's draws;
* ``k-hat``: Pareto k-hat of the guide's importance weights (``pyro_cnf.pareto_khat``);
* fit wall time, and the time of Pyro's NUTS (``--nuts-chains`` chains of ``--nuts-samples``
  draws after ``--nuts-warmup``, one after another, a dense mass matrix unless
  ``--no-nuts-full-mass``, started at the prior median) on the same posterior in the same
  worker, with its own accuracy columns, R-hat and divergences; NUTS stops when it has run
  ``--nuts-budget`` seconds on a posterior, and the table says so.

AutoCNF's row says "worse than MVN" where its SW1 exceeds AutoMultivariateNormal's by more than
the noise floor.

``--jobs N`` runs N posteriors at a time, each in its own process with one torch thread; all the
guides and NUTS of a posterior run in the same process, one after the other. A fit that fails
(a non-finite loss, a solver error) or a guide whose draws have a non-finite log-weight is
reported as such. Tables are markdown; ``--json PATH`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
import traceback
from typing import Any

import pyro
import torch
from _common import machine as _machine
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median
from pyro.ops.stats import split_gelman_rubin

from pyro_cnf import AutoCNF, AutoFlow, importance_draws, pareto_khat
from pyro_cnf.models import POSTERIORS, load_posteriordb

GUIDES = {
    "normal": ("AutoNormal", lambda m: AutoNormal(m, init_loc_fn=init_to_median)),
    "mvn": ("AutoMultivariateNormal", AutoMultivariateNormal),
    "iaf": ("AutoIAFNormal", AutoIAFNormal),
    "realnvp": ('AutoFlow("realnvp")', lambda m: AutoFlow(m, "realnvp")),
    "cnf": ("AutoCNF", AutoCNF),
}


def standardized(draws: dict[str, torch.Tensor], ref: Any) -> torch.Tensor:
    """``(S, D)``: every reference quantity, standardized by the reference mean and sd."""
    columns = []
    for site in ref.draws:
        value = draws[site].reshape(draws[site].shape[0], -1)
        mean, sd = ref.mean[site].reshape(-1), ref.sd[site].reshape(-1)
        columns.append((value.double() - mean) / sd)
    return torch.cat(columns, -1)


def sliced_w1(a: torch.Tensor, b: torch.Tensor, projections: int, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D W1 distance between the projected draws.

    Both samples must have the same size: the 1-D W1 is then the mean absolute difference of
    the sorted projections.
    """
    if a.shape != b.shape:
        raise ValueError(f"sliced_w1 needs samples of one shape, got {a.shape} and {b.shape}")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=generator, dtype=a.dtype)
    directions = directions / directions.norm(dim=0)
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    return float((pa - pb).abs().mean())


def accuracy(draws: dict[str, torch.Tensor], ref: Any, half: torch.Tensor, projections: int):
    """Worst standardized mean error, worst sd ratio and sliced W1 of ``draws``."""
    z = standardized(draws, ref)
    size = min(z.shape[0], half.shape[0])
    mean_err = float(z.mean(0).abs().max())
    ratios = z.std(0)
    worst = int((ratios.log().abs()).argmax())
    return {
        "mean_err": mean_err,
        "sd_ratio": float(ratios[worst]),
        "sw1": sliced_w1(z[:size], half[:size], projections),
    }


def fit(model: Any, guide: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A plain SVI loop; raises on a non-finite loss."""
    optim = pyro.optim.ClippedAdam({"lr": args.lr, "lrd": 0.1 ** (1 / args.steps)})
    svi = SVI(model, guide, optim, Trace_ELBO(args.particles, vectorize_particles=True))
    losses = []
    start = time.perf_counter()
    for step in range(args.steps):
        loss = svi.step()
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} at step {step}")
        losses.append(loss)
    wall = time.perf_counter() - start
    tail = losses[-max(1, args.steps // 10) :]
    return {"fit_time": wall, "final_loss": sum(tail) / len(tail)}


def run_guide(key: str, m: Any, half: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    guide = GUIDES[key][1](m.model)
    out: dict[str, Any] = {"guide": key}
    stage = "fit"
    try:
        out.update(fit(m.model, guide, args))
        stage = "scoring"  # importance_draws refuses non-finite log-weights
        draws = importance_draws(
            m.model, guide, num_samples=args.draws, seed=args.seed + 1, log_likelihood=False
        )
    except Exception as error:  # noqa: BLE001 - a failed fit is a result
        message = str(error).splitlines()[0][:120]
        out["error"] = f"{stage} failed: {type(error).__name__}: {message}"
        return out
    out.update(accuracy(draws.values, m.reference, half, args.projections))
    out["khat"] = pareto_khat(draws.log_weights)
    out["elbo"] = float(draws.log_weights.mean())
    return out


class OverBudget(Exception):
    """NUTS ran past ``--nuts-budget`` seconds."""


def run_nuts(m: Any, half: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    chains: dict[str, list[torch.Tensor]] = {}
    divergences = 0
    start = time.perf_counter()

    def stop_at_budget(*_: Any) -> None:
        if time.perf_counter() - start > args.nuts_budget:
            raise OverBudget

    for chain in range(args.nuts_chains):
        pyro.set_rng_seed(args.seed + 100 + chain)
        mcmc = MCMC(
            NUTS(m.model, full_mass=args.nuts_full_mass, init_strategy=init_to_median),
            num_samples=args.nuts_samples,
            warmup_steps=args.nuts_warmup,
            disable_progbar=True,
            hook_fn=stop_at_budget,
        )
        try:
            mcmc.run()
        except OverBudget:
            return {
                "guide": "nuts",
                "error": f"stopped at the {args.nuts_budget:.0f} s budget "
                f"in chain {chain + 1} of {args.nuts_chains}",
                "fit_time": math.inf,
            }
        divergences += len(mcmc.diagnostics()["divergences"]["chain 0"])
        for site, value in mcmc.get_samples().items():
            chains.setdefault(site, []).append(value)
    wall = time.perf_counter() - start
    stacked = {site: torch.stack(values) for site, values in chains.items()}
    flat = {site: v.reshape(-1, *v.shape[2:]) for site, v in stacked.items()}
    missing = [site for site in m.reference.draws if site not in flat]
    if missing:  # deterministic sites, computed from the latent draws
        predictive = Predictive(m.model, posterior_samples=flat, return_sites=missing)
        shapes = {k: m.reference.draws[k].shape[2:] for k in missing}
        flat.update({k: v.reshape(-1, *shapes[k]) for k, v in predictive().items()})
    out = {"guide": "nuts", "fit_time": wall, "divergences": divergences}
    out["max_rhat"] = max(float(split_gelman_rubin(v).max()) for v in stacked.values())
    out.update(accuracy(flat, m.reference, half, args.projections))
    return out


def run_posterior(name: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    m = load_posteriordb(name, args.posteriordb)
    ref = m.reference
    halves = [
        standardized({k: v[i : i + 5].flatten(0, 1) for k, v in ref.draws.items()}, ref)
        for i in (0, 5)
    ]
    rows = [{"guide": "noise floor", "sw1": sliced_w1(*halves, args.projections)}]
    for key in args.guides:
        try:
            rows.append(run_guide(key, m, halves[0], args))
        except Exception:  # noqa: BLE001 - report and go on with the next guide
            rows.append({"guide": key, "error": traceback.format_exc().splitlines()[-1][:160]})
        print(f"[{name}] {rows[-1]}", file=sys.stderr, flush=True)
    if args.nuts_samples > 0:
        try:
            rows.append(run_nuts(m, halves[0], args))
        except Exception:  # noqa: BLE001
            rows.append({"guide": "nuts", "error": traceback.format_exc().splitlines()[-1][:160]})
        print(f"[{name}] {rows[-1]}", file=sys.stderr, flush=True)
    return {"posterior": name, "dim": m.latent_dim, "rows": rows}


def number(x: float, digits: int = 3) -> str:
    """A table cell: fixed point, or two significant digits for far-off values."""
    return f"{x:.2g}" if math.isfinite(x) and abs(x) >= 1000 else f"{x:.{digits}f}"


def table(results: list[dict[str, Any]], nuts_budget: float) -> str:
    labels = {key: label for key, (label, _) in GUIDES.items()}
    labels.update({"nuts": "NUTS", "noise floor": "noise floor (reference halves)"})
    lines = []
    for result in results:
        nuts = next((r for r in result["rows"] if r["guide"] == "nuts"), {})
        mvn = next((r for r in result["rows"] if r["guide"] == "mvn"), {})
        lines += [
            f"\n**{result['posterior']}** (d = {result['dim']})\n",
            "| guide | mean err | sd ratio | SW1 | k-hat | fit s | / NUTS |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            label = labels[row["guide"]]
            if "error" in row:
                error = row["error"] if len(row["error"]) < 100 else row["error"][:99] + "…"
                lines.append(f"| {label} | {error} | | | | | |")
                continue
            floor = result["rows"][0]["sw1"]
            worse = (
                " (worse than MVN)"
                if row["guide"] == "cnf" and "sw1" in mvn and row["sw1"] > mvn["sw1"] + floor
                else ""
            )
            ratio = ""
            if "fit_time" in row and "fit_time" in nuts:
                if math.isfinite(nuts["fit_time"]):
                    ratio = f"{row['fit_time'] / nuts['fit_time']:.2f}"
                else:  # NUTS ran past its budget: the ratio is below fit / budget
                    ratio = f"< {row['fit_time'] / nuts_budget:.2f}"
            cells = [
                number(row["mean_err"]) if "mean_err" in row else "",
                number(row["sd_ratio"]) if "sd_ratio" in row else "",
                number(row["sw1"]) + worse,
                f"{row['khat']:.2f}" if "khat" in row else "",
                f"{row['fit_time']:.0f}" if "fit_time" in row else "",
                ratio,
            ]
            if row["guide"] == "nuts":
                cells[3] = f"R-hat {row['max_rhat']:.3f}, {row['divergences']} div."
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--posteriordb", default=None, help="folder (default: $PYRO_CNF_POSTERIORDB)"
    )
    parser.add_argument("--posteriors", default=",".join(POSTERIORS))
    parser.add_argument("--guides", default=",".join(GUIDES))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--draws", type=int, default=5000)
    parser.add_argument("--projections", type=int, default=256)
    parser.add_argument("--nuts-chains", type=int, default=2)
    parser.add_argument("--nuts-warmup", type=int, default=500)
    parser.add_argument("--nuts-samples", type=int, default=500)
    parser.add_argument("--nuts-full-mass", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--nuts-budget", type=float, default=600.0, help="seconds per posterior")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the raw numbers to this file")
    parser.add_argument("--from-json", default=None, help="print the tables of a saved run")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as file:
            saved = json.load(file)
        print(table(saved["results"], saved["args"]["nuts_budget"]))
        return 0
    args.posteriors = args.posteriors.split(",")
    args.guides = args.guides.split(",")
    unknown = [p for p in args.posteriors if p not in POSTERIORS] + [
        g for g in args.guides if g not in GUIDES
    ]
    if unknown:
        parser.error(f"unknown posteriors or guides: {unknown}")
    load_posteriordb(args.posteriors[0], args.posteriordb)  # a clear error before any work
    start = time.perf_counter()
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            # the ODE posterior takes longest: start it first so that the workers end together
            order = sorted(args.posteriors, key=lambda p: "lotka" not in p)
            done = pool.starmap(run_posterior, [(p, args) for p in order], chunksize=1)
            results = sorted(done, key=lambda r: args.posteriors.index(r["posterior"]))
    else:
        results = [run_posterior(p, args) for p in args.posteriors]
    wall = time.perf_counter() - start
    print(
        f"Machine: {_machine()}; {args.jobs} worker(s) of {args.threads} thread(s); "
        f"{time.strftime('%Y-%m-%d')}; total {wall / 60:.1f} min\n"
        f"Command: python benchmarks/bench_posteriordb.py {' '.join(argv or sys.argv[1:])}"
    )
    print(table(results, args.nuts_budget))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as file:
            json.dump({"args": vars(args), "wall_time": wall, "results": results}, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
