r"""Fit AutoCNF to a posteriordb posterior and compare it with the reference draws.

`posteriordb <https://github.com/stan-dev/posteriordb>`_ publishes models, data and reference
draws of long, checked runs of Stan's NUTS. This script loads one of eight of its posteriors with
:func:`pyro_cnf.models.load_posteriordb`, fits ``AutoCNF(model)`` by a plain Pyro SVI loop,
prints the importance diagnostics of the fit (Pareto :math:`\hat k`, ESS) and compares the
guide's mean and sd of every reference quantity with the reference draws' (``mean_err`` =
:math:`|E_q - E_\mathrm{ref}| / \mathrm{sd}_\mathrm{ref}`, ``sd_ratio`` =
:math:`\mathrm{sd}_q / \mathrm{sd}_\mathrm{ref}`).

Writes ``report.txt``, ``posteriordb.png`` (the marginal densities of the guide over the
reference's) and, with ArviZ, ``AutoCNF.nc``::

    python examples/posteriordb.py --posterior kidiq-kidscore_interaction
    python examples/posteriordb.py --smoke      # seconds: checks that everything runs

``PYRO_CNF_POSTERIORDB`` (or ``--posteriordb DIR``) must name a folder with posteriordb's layout:
one folder per posterior, named as in posteriordb, holding its ``data.json`` and
``reference_draws.json`` (unzipped).
"""

import argparse
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure
from pyro.infer import SVI, Trace_ELBO

from pyro_cnf import AutoCNF, importance_diagnostics, importance_draws, to_inference_data
from pyro_cnf.models import POSTERIORS, BayesianModel, load_posteriordb

try:
    with warnings.catch_warnings():  # ArviZ 0.23 announces its 1.x refactor on import
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
except ImportError:
    az = None


def comparison_table(reference: dict[str, torch.Tensor], guide: dict[str, torch.Tensor]) -> str:
    """One row per reference quantity (``mu``, ``theta[1]``, ...): means, sds and errors."""
    columns = ("ref_mean", "ref_sd", "mean", "sd", "mean_err", "sd_ratio")
    lines = [f"{'quantity':<14}" + "".join(f"  {column:>10}" for column in columns)]
    for site, draws in reference.items():
        ref = draws.flatten(0, 1)  # (chains * draws, *site_shape)
        ours = guide[site].reshape(-1, *ref.shape[1:])
        for index in np.ndindex(*ref.shape[1:]):
            r, q = ref[(slice(None), *index)], ours[(slice(None), *index)]
            name = f"{site}[{','.join(str(i + 1) for i in index)}]" if index else site
            error, ratio = abs(q.mean() - r.mean()) / r.std(), q.std() / r.std()
            cells = [f"{x:>10.4g}" for x in (r.mean(), r.std(), q.mean(), q.std())]
            cells += [f"{error:>10.3f}", f"{ratio:>10.3f}"]
            lines.append(f"{name:<14}" + "".join(f"  {cell}" for cell in cells))
    return "\n".join(lines)


def main(args: argparse.Namespace, model: BayesianModel) -> None:
    """Fit AutoCNF, diagnose it, compare it with the reference draws; write report and figure."""
    if args.smoke:
        args.steps, args.num_samples = 20, 500
    args.out.mkdir(parents=True, exist_ok=True)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    print(f"{args.posterior}: {model.description}")

    # Fit AutoCNF (its defaults) by a plain SVI loop.
    guide = AutoCNF(model)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": args.lr}), elbo)
    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        losses.append(svi.step())
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step:>5}  loss {losses[-1]:12.4f}  ({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start

    # How far to trust the guide: the importance weights of its draws.
    check = importance_diagnostics(model, guide, num_samples=args.num_samples, seed=args.seed)
    reference = model.reference.draws  # {site: (chains, draws, *site_shape)}
    own = importance_draws(model, guide, num_samples=args.num_samples, seed=args.seed + 1)
    report = "\n\n".join(
        [
            f"AutoCNF on posteriordb's {args.posterior} ({model.reference.kind})",
            f"{'SMOKE RUN: ' if args.smoke else ''}{args.steps} SVI steps (ClippedAdam lr "
            f"{args.lr}, 4 particles, seed {args.seed}) in {seconds:.1f} s",
            check.summary(),
            f"{args.num_samples} guide draws (unweighted) against the reference draws:\n"
            + comparison_table(reference, own.values),
        ]
    )
    (args.out / "report.txt").write_text(report + "\n")
    print("\n" + report)
    if az is not None:  # the guide's draws, indexed 1-based as posteriordb names them
        dims = {
            site: [f"{site}_dim_{i}" for i in range(v.dim() - 2)] for site, v in reference.items()
        }
        coords = {
            f"{site}_dim_{i}": np.arange(1, size + 1)
            for site, v in reference.items()
            for i, size in enumerate(v.shape[2:])
        }
        idata = to_inference_data(
            model, guide, num_samples=args.num_samples, seed=args.seed + 1,
            log_likelihood=False, coords=coords, dims=dims, losses=losses,
        )  # fmt: skip
        idata.to_netcdf(str(args.out / "AutoCNF.nc"))

    # The marginal densities of the guide over those of the reference, one panel per quantity.
    panels = [(site, index) for site, v in reference.items() for index in np.ndindex(*v.shape[2:])]
    rows = math.ceil(len(panels) / 3)
    figure = Figure(figsize=(12, 3 * rows), layout="constrained")
    axes = figure.subplots(rows, 3, squeeze=False).ravel()
    for ax, (site, index) in zip(axes, panels, strict=False):
        ref = reference[site][(slice(None), slice(None), *index)].flatten().numpy()
        ours = own.values[site][(slice(None), *index)].numpy()
        ax.hist(ref, bins=60, density=True, alpha=0.4, label="posteriordb reference")
        ax.hist(ours, bins=60, density=True, histtype="step", lw=1.5, label="AutoCNF")
        ax.set_title(site + "".join(f"[{i + 1}]" for i in index), fontsize=10)
    for ax in axes[len(panels) :]:
        ax.axis("off")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{args.posterior}: AutoCNF ({args.steps} steps) and the reference")
    figure.savefig(args.out / "posteriordb.png", dpi=80)
    print(f"\nwrote {args.out}/report.txt, posteriordb.png" + (", AutoCNF.nc" if az else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="AutoCNF against a posteriordb posterior")
    parser.add_argument("--posterior", default=POSTERIORS[0], choices=POSTERIORS, metavar="NAME",
                        help=f"one of {', '.join(POSTERIORS)} (default: %(default)s)")  # fmt: skip
    parser.add_argument("--posteriordb", metavar="DIR", help="default: $PYRO_CNF_POSTERIORDB")
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps")
    parser.add_argument("--lr", type=float, default=5e-3, help="ClippedAdam learning rate")
    parser.add_argument("--num-samples", type=int, default=10_000, help="guide draws to check")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", type=Path, default=Path("pyro-cnf-out/posteriordb"))
    parser.add_argument("--smoke", action="store_true", help="20 steps, 500 draws (seconds)")
    args = parser.parse_args()
    if args.steps < 1 or args.num_samples < 100 or not args.lr > 0:
        parser.error("--steps and --lr must be positive, --num-samples at least 100")
    torch.set_default_dtype(torch.float64)  # the reference draws are float64
    torch.set_num_threads(1)  # small tensors: a second thread only waits
    try:
        model = load_posteriordb(args.posterior, args.posteriordb)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    main(args, model)
