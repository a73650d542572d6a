"""Fit AutoCNF to a posteriordb posterior and compare it with the reference draws.

`posteriordb <https://github.com/stan-dev/posteriordb>`_ publishes models, data and reference
draws of long, checked runs of Stan's NUTS. This script loads one of eight of its posteriors with
:func:`pyro_cnf.models.load_posteriordb`, fits :class:`pyro_cnf.AutoCNF` (its defaults) by a plain
Pyro ``SVI`` loop, prints the importance diagnostics of the fit (Pareto k-hat, ESS), compares the
guide's mean and sd of every reference quantity with the reference draws' (written to
``OUT/report.txt``) and overlays the marginal densities of both with ArviZ 0.x
(``OUT/posteriordb.png``)::

    python examples/posteriordb.py --posterior kidiq-kidscore_interaction

``PYRO_CNF_POSTERIORDB`` (or ``--posteriordb DIR``) must name a folder with posteriordb's layout:
one folder per posterior, named as in posteriordb, holding its ``data.json`` and
``reference_draws.json`` (unzipped). ``--smoke`` runs in a few seconds.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from pyro.optim import ClippedAdam  # noqa: E402

from pyro_cnf import AutoCNF, importance_diagnostics, to_inference_data  # noqa: E402
from pyro_cnf.models import POSTERIORS, BayesianModel, load_posteriordb  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, BayesianModel]:
    """The options and the posterior they name; bad input exits with status 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--posterior", default=POSTERIORS[0], choices=POSTERIORS, metavar="NAME",
        help=f"one of {', '.join(POSTERIORS)} (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--posteriordb", metavar="DIR", help="default: $PYRO_CNF_POSTERIORDB")
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps")
    parser.add_argument("--lr", type=float, default=5e-3, help="ClippedAdam learning rate")
    parser.add_argument("--num-samples", type=int, default=10_000, help="guide draws to check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("pyro-cnf-out/posteriordb"))
    parser.add_argument("--smoke", action="store_true", help="20 steps and 500 draws")
    parser.add_argument("--no-progress", action="store_true", help="do not print the loss")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.num_samples < 100:
        parser.error("--steps must be >= 1 and --num-samples >= 100")
    if args.smoke:
        args.steps, args.num_samples = 20, 500
    try:
        return args, load_posteriordb(args.posterior, args.posteriordb)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))


def comparison_table(reference: dict[str, torch.Tensor], guide: dict[str, np.ndarray]) -> str:
    """One row per reference quantity (``mu``, ``theta[1]``, ...): means, sds and errors."""
    columns = ("ref mean", "ref sd", "mean", "sd", "mean err", "sd ratio")
    lines = [f"{'quantity':<14}" + "".join(f"  {column:>10}" for column in columns)]
    for site, draws in reference.items():
        ref = draws.flatten(0, 1).numpy()  # (chains * draws, *site_shape)
        ours = guide[site].reshape(-1, *ref.shape[1:])
        for index in np.ndindex(*ref.shape[1:]):
            r, q = ref[(slice(None), *index)], ours[(slice(None), *index)]
            name = f"{site}[{','.join(str(i + 1) for i in index)}]" if index else site
            error, ratio = abs(q.mean() - r.mean()) / r.std(), q.std() / r.std()
            cells = [f"{x:>10.4g}" for x in (r.mean(), r.std(), q.mean(), q.std())]
            cells += [f"{error:>10.3f}", f"{ratio:>10.3f}"]
            lines.append(f"{name:<14}" + "".join(f"  {cell}" for cell in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the example; returns the exit status."""
    args, model = parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # small tensors: extra threads cost more than they give
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    print(f"{args.posterior}: {model.description}")

    # Fit AutoCNF (its defaults) by a plain SVI loop.
    guide = AutoCNF(model)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
    svi = SVI(model, guide, ClippedAdam({"lr": args.lr}), elbo)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = svi.step()
        if not args.no_progress and (step % 200 == 0 or step in (1, args.steps)):
            print(f"step {step:>5}  loss {loss:12.4f}  ({time.perf_counter() - start:.0f} s)")
    fit_seconds = time.perf_counter() - start

    # How far to trust the guide: the importance weights of its draws.
    diagnostics = importance_diagnostics(model, guide, num_samples=args.num_samples, seed=args.seed)

    # Guide draws (latent and deterministic sites) and reference draws as InferenceData,
    # indexed 1-based as posteriordb names them.
    reference = model.reference.draws  # {site: (chains, draws, *site_shape)}
    dims = {site: [f"{site}_dim_{i}" for i in range(v.dim() - 2)] for site, v in reference.items()}
    coords = {
        f"{site}_dim_{i}": np.arange(1, size + 1)
        for site, v in reference.items()
        for i, size in enumerate(v.shape[2:])
    }
    guide_idata = to_inference_data(
        model, guide, num_samples=args.num_samples, seed=args.seed + 1,
        log_likelihood=False, coords=coords, dims=dims,
    )  # fmt: skip

    guide_draws = {site: guide_idata.posterior[site].values for site in reference}
    report = "\n\n".join(
        [
            f"AutoCNF on posteriordb's {args.posterior} ({model.reference.kind})",
            f"{'SMOKE RUN: ' if args.smoke else ''}{args.steps} SVI steps (ClippedAdam lr "
            f"{args.lr}, 4 particles, seed {args.seed}) in {fit_seconds:.1f} s",
            diagnostics.summary(),
            f"{args.num_samples} guide draws (unweighted) against the reference draws "
            "(mean err = |mean - ref mean| / ref sd, sd ratio = sd / ref sd):\n"
            + comparison_table(reference, guide_draws),
        ]
    )
    print("\n" + report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.txt").write_text(report + "\n")

    # The marginal densities of the guide over those of the reference, one panel per coordinate.
    panels = [(site, index) for site, v in reference.items() for index in np.ndindex(*v.shape[2:])]
    rows = math.ceil(len(panels) / 3)
    figure, axes = plt.subplots(rows, 3, figsize=(12, 3 * rows), constrained_layout=True)
    for ax, (site, index) in zip(np.ravel(axes), panels, strict=False):
        ref = reference[site][(slice(None), slice(None), *index)].flatten().numpy()
        ours = guide_draws[site][(slice(None), slice(None), *index)].flatten()
        ax.hist(ref, bins=60, density=True, alpha=0.4, label="posteriordb reference")
        ax.hist(ours, bins=60, density=True, histtype="step", lw=1.5, label="AutoCNF")
        ax.set_title(site + "".join(f"[{i + 1}]" for i in index), fontsize=10)
    for ax in np.ravel(axes)[len(panels) :]:
        ax.axis("off")
    np.ravel(axes)[0].legend(fontsize=8)
    figure.suptitle(f"{args.posterior}: AutoCNF ({args.steps} steps) and the reference")
    figure.savefig(args.out / "posteriordb.png", dpi=80)
    plt.close(figure)
    print(f"\nwrote {args.out / 'report.txt'} and {args.out / 'posteriordb.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
