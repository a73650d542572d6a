r"""The banana and the Rezende–Mohamed energies: target density against fitted density.

Five 2-D targets from the model zoo, each with a known :math:`\log Z`:
:func:`~pyro_cnf.models.banana` (analytic, :math:`\log Z = 0`) and the energies :math:`U_1`
(a ring split in two), :math:`U_2` (a sine ridge), :math:`U_3` (a ridge that splits),
:math:`U_4` (two ridges joined by a step) of Rezende & Mohamed (2015), made proper by a
:math:`\mathcal N(0, 4^2 I)` prior (:func:`~pyro_cnf.models.energy_u1` ...; :math:`\log Z` by
quadrature). Each guide is fitted by SVI to each target; the report gives
:math:`\mathrm{KL}(q\,\|\,p) = \log Z - \mathrm{ELBO}` and Pareto :math:`\hat k`, and
``energies.png`` shows, row by row, the target density next to each guide's density on a grid
(the flow's exact :math:`q(z)`, computed by inverting it; a histogram of draws for a guide
without an inverse).

Run::

    pyro-cnf run energies                                  # AutoCNF on all five, 1500 steps each
    pyro-cnf run energies --guide cnf,realnvp --targets u1,u2
    python examples/energies.py --smoke                    # seconds

Every guide is built with its defaults (``AutoCNF(model)``) and fitted in the same SVI loop;
the report prints each guide's numbers.

Reverse KL is mode-seeking. On :math:`U_1` (two symmetric halves of a ring) a fit from a narrow
start keeps one half (KL 0.70, the :math:`\log 2 = 0.693` of missing one of two equal halves);
annealing (``fit_svi(anneal_steps=...)``: the tempered target :math:`p^\beta`, :math:`\beta`
from 0.01 to 1) keeps both, and the figure shows them. On :math:`U_2`–:math:`U_4` the guide
follows one to two periods of ridges that the wide prior spreads over many (not annealed: from
:math:`\beta = 0.01` their weak prior makes the tempered target forty times wider, and those
fits failed).

Reference: D. J. Rezende and S. Mohamed, *Variational inference with normalizing flows*, ICML
2015, https://arxiv.org/abs/1505.05770.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pyro.infer.autoguide import AutoContinuous
from torch import Tensor

from ..infer.diagnostics import exact_scoring
from ..models import BayesianModel, get_model
from . import _common as C

__all__ = ["DESCRIPTION", "TARGETS", "build_parser", "main"]

DESCRIPTION = "banana and the Rezende-Mohamed energies: target vs fitted density figures"

TARGETS: dict[str, str] = {
    "banana": "banana",
    "u1": "energy_u1",
    "u2": "energy_u2",
    "u3": "energy_u3",
    "u4": "energy_u4",
}
"""Target name -> zoo model name."""

_BOXES: dict[str, C.Box] = {
    "banana": ((-25.0, 25.0), (-6.0, 17.0)),
    "u1": ((-4.0, 4.0), (-4.0, 4.0)),
    "u2": ((-8.0, 8.0), (-4.0, 4.0)),
    "u3": ((-8.0, 8.0), (-4.0, 4.0)),
    "u4": ((-8.0, 8.0), (-4.0, 4.0)),
}

_STEPS, _SMOKE_STEPS = 1500, 20
_SAMPLES, _SMOKE_SAMPLES = 10_000, 500


def build_parser(prog: str | None = None) -> C.ExampleParser:
    """The example's command-line options."""
    parser = C.ExampleParser(prog=prog, description=DESCRIPTION)
    C.add_common_arguments(
        parser, name="energies", steps=_STEPS, guides="cnf", num_samples=_SAMPLES
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        metavar="NAMES",
        help=f"comma-separated targets (default {','.join(TARGETS)})",
    )
    return parser


# Every guide anneals on U1 over the first half of its steps (Rezende & Mohamed 2015): from a
# narrow start, reverse KL keeps one of its two lobes (KL ~ log 2). Not on the others: from
# beta = 0.01 their weak N(0, 4^2) prior makes the tempered target forty times wider, and the
# AutoCNF fits of U2 and U3 failed (docs/benchmarks.md).
_ANNEALED = ("u1",)


def _parse_targets(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise C.ExampleError("no target given")
    for name in names:
        if name not in TARGETS:
            raise C.ExampleError(f"unknown target {name!r}; valid targets: {', '.join(TARGETS)}")
    return list(dict.fromkeys(names))


def _settings(guide: str, target: str, smoke: bool) -> C.GuideSettings:
    settings = C.default_settings(guide)
    settings = C.GuideSettings(**{**settings.__dict__, "init_scale": 1.0})
    if target in _ANNEALED:
        settings = C.GuideSettings(**{**settings.__dict__, "anneal_fraction": 0.5})
    if guide == "cnf":
        settings = C.GuideSettings(**{**settings.__dict__, "lr": 0.005})
    if smoke:
        settings = C.GuideSettings(**{**settings.__dict__, "particles": 4})
    return settings


def _values(model: BayesianModel, z1: Tensor, z2: Tensor) -> dict[str, Tensor]:
    """The zoo model's latent sites at grid points ``(z1, z2)``."""
    if model.latent_sites == ("x0", "x1"):
        return {"x0": z1, "x1": z2}
    return {"z": torch.stack([z1, z2], -1)}


def _target_log_density(model: BayesianModel) -> Callable[[Tensor, Tensor], Tensor]:
    log_z = model.reference.log_Z
    assert log_z is not None
    return lambda z1, z2: model.log_joint(_values(model, z1, z2)) - log_z


def _guide_log_density(run: C.GuideRun) -> Callable[[Tensor, Tensor], Tensor] | None:
    """The guide's exact log-density on the plane, when it has one that can be inverted."""
    guide = run.guide
    if not isinstance(guide, AutoContinuous):
        return None

    def log_density(z1: Tensor, z2: Tensor) -> Tensor:
        # every site here is real-valued: the unconstrained latent vector is (z1, z2) itself
        points = torch.stack([z1.flatten(), z2.flatten()], -1)
        with exact_scoring(guide), torch.no_grad():
            return guide.get_posterior().log_prob(points).reshape(z1.shape)

    try:
        log_density(torch.zeros(1), torch.zeros(1))
    except NotImplementedError:  # a flow without an inverse: fall back to a histogram
        return None
    return log_density


def _histogram_log_density(draws: tuple[Tensor, Tensor], box: C.Box) -> Any:
    (x_lo, x_hi), (y_lo, y_hi) = box
    counts = torch.histogramdd(
        torch.stack(draws, -1).to(torch.float64),
        bins=[60, 60],
        range=[x_lo, x_hi, y_lo, y_hi],
    ).hist

    def log_density(z1: Tensor, z2: Tensor) -> Tensor:
        i = ((z1 - x_lo) / (x_hi - x_lo) * 60).long().clamp(0, 59)
        j = ((z2 - y_lo) / (y_hi - y_lo) * 60).long().clamp(0, 59)
        return counts[i, j].log()

    return log_density


def _xy(run: C.GuideRun) -> tuple[Tensor, Tensor]:
    if "z" in run.draws:
        return run.draws["z"][:, 0], run.draws["z"][:, 1]
    return run.draws["x0"], run.draws["x1"]


def _figure(results: dict[str, list[C.GuideRun]], guides: list[str], out: Path, grid: int) -> Path:
    targets = list(results)
    cols = 1 + len(guides)
    figure, axes = C.new_figure(len(targets), cols, (2.6 * cols, 2.4 * len(targets)))
    for row, target in zip(axes, targets, strict=True):
        model = get_model(TARGETS[target])
        box = _BOXES[target]
        C.density_panel(
            row[0], box, _target_log_density(model), title=f"{target}: target", filled=True
        )
        runs = {run.name: run for run in results[target]}
        for ax, guide in zip(row[1:], guides, strict=True):
            run = runs.get(guide)
            if run is None:
                ax.set_title(f"{guide}: failed", fontsize=9)
                continue
            log_density = _guide_log_density(run) or _histogram_log_density(_xy(run), box)
            kl = run.kl(model.reference.log_Z)
            C.density_panel(
                ax,
                box,
                log_density,
                title=f"{guide}: KL {C.fmt(kl, 3)}, k̂ {run.diagnostics.khat:.2f}",
                filled=True,
                num=grid,
            )
    figure.suptitle("target density (left) and fitted guide densities")
    return C.save_figure(figure, out / "energies.png")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the example; returns the exit status (0 on success)."""
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        guides = C.parse_guides(args.guides)
        targets = _parse_targets(args.targets)
        out = C.prepare_output(args.out)
        steps = C.resolve(args.steps, _STEPS, _SMOKE_STEPS, args.smoke)
        num_samples = C.resolve(args.num_samples, _SAMPLES, _SMOKE_SAMPLES, args.smoke)
        results: dict[str, list[C.GuideRun]] = {}
        failures: list[str] = []
        rows = []
        for target in targets:
            model = get_model(TARGETS[target])
            runs, failed = C.fit_guides(
                model,
                guides,
                steps=steps,
                seed=args.seed,
                num_samples=num_samples,
                settings=lambda guide, target=target: _settings(guide, target, args.smoke),
                progress=not args.no_progress,
            )
            results[target] = runs
            failures += [f"{target}, {line}" for line in failed]
            log_z = model.reference.log_Z
            for run in runs:
                d = run.diagnostics
                rows.append(
                    [
                        target,
                        run.name,
                        C.fmt(run.kl(log_z), 4),
                        f"{d.khat:.2f}",
                        C.verdict(d.khat, d.khat_threshold),
                        f"{d.ess:.0f}",
                        f"{d.log_evidence:.4f} ± {d.log_evidence_se:.4f}",
                        C.fmt(log_z, 4),
                        f"{run.fit.wall_time:.0f}",
                    ]
                )
        header = ["target", "guide", "KL(q||p)", "k-hat", "verdict", "ESS", "log Z (IS)"]
        header += ["log Z exact", "fit s"]
        report = "\n".join(
            [
                "2-D targets: banana (analytic log Z = 0) and the Rezende-Mohamed energies U1-U4",
                "with a N(0, 4^2 I) prior (log Z by quadrature)",
                f"steps {steps}, seed {args.seed}, S = {num_samples} importance draws"
                + ("  [SMOKE RUN: the numbers mean nothing]" if args.smoke else ""),
                "",
                C.table(header, rows),
                *failures,
                "",
                "KL(q||p) = log Z - ELBO. k-hat: Pareto k of the importance weights (< 0.5 good).",
            ]
        )
        figures = [_figure(results, guides, out, 30 if args.smoke else 100)] if rows else []
        written = list(figures)
        all_runs = [(target, run) for target, runs in results.items() for run in runs]
        if all_runs and C.arviz_available():
            for target, run in all_runs:
                path, _ = C.write_inference_data(
                    get_model(TARGETS[target]),
                    run,
                    out,
                    num_samples,
                    args.seed,
                    stem=f"{target}_{run.name}",
                )
                if path is not None:
                    written.append(path)
        written.insert(0, C.write_report(out, report))
        print(report)
        print("\nwrote " + ", ".join(str(p) for p in written))
        return 0 if rows else 1

    return C.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
