r"""Neal's funnel in 10 dimensions: how much of the neck does each guide reach?

:func:`pyro_cnf.models.funnel`: :math:`v \sim \mathcal N(0, 3^2)`,
:math:`x_i \mid v \sim \mathcal N(0, e^{v})` for :math:`i = 1..9`. Nothing is observed, so
:math:`\log Z = 0` and :math:`\mathrm{sd}\,v = 3` exactly; a Gaussian guide cannot follow the
scale of :math:`x` changing by :math:`e^{\pm 4.5}` along :math:`v`, and under-covers
:math:`v`. Each guide is judged by :math:`\mathrm{KL}(q\,\|\,p) = -\mathrm{ELBO}`, Pareto
:math:`\hat k` and its :math:`\mathrm{sd}\,v` (own draws and importance-resampled).

Writes ``report.txt``, ``funnel.png`` (draws of :math:`(v, x_1)` over the exact density's
contours) and, with :mod:`pyro_cnf.arviz`, one InferenceData ``<guide>.nc`` per guide.

Run::

    pyro-cnf run funnel                       # cnf, normal, pyro-iaf; 1500 steps
    python examples/funnel.py --smoke         # seconds

Every guide is built with its defaults (``AutoCNF(model)``) and fitted in the same SVI loop;
``docs/benchmarks.md`` has AutoCNF's numbers across fit seeds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pyro.distributions as dist
from torch import Tensor

from . import _common as C

__all__ = ["DESCRIPTION", "build_parser", "main"]

DESCRIPTION = "Neal's funnel (10-D): AutoCNF vs Pyro's guides, sd(v) against the exact 3"

_STEPS, _SMOKE_STEPS = 1500, 30
_SAMPLES, _SMOKE_SAMPLES = 10_000, 500


def build_parser(prog: str | None = None) -> C.ExampleParser:
    """The example's command-line options."""
    parser = C.ExampleParser(prog=prog, description=DESCRIPTION)
    C.add_common_arguments(
        parser, name="funnel", steps=_STEPS, guides="cnf,normal,pyro-iaf", num_samples=_SAMPLES
    )
    return parser


def _settings(guide: str, smoke: bool) -> C.GuideSettings:
    settings = C.default_settings(guide)
    # the funnel's scales are 3 (v) and ~9.5 (x): start the affine part wide
    settings = C.GuideSettings(**{**settings.__dict__, "init_scale": 1.0})
    if smoke:
        settings = C.GuideSettings(**{**settings.__dict__, "particles": 4})
    return settings


def _log_density(v: Tensor, x: Tensor) -> Tensor:
    """Exact log density of :math:`(v, x_1)`: the other coordinates integrate out."""
    return dist.Normal(0.0, 3.0).log_prob(v) + dist.Normal(0.0, (v / 2).exp()).log_prob(x)


def _figure(runs: list[C.GuideRun], out: Path) -> Path:
    box: C.Box = ((-9.0, 9.0), (-25.0, 25.0))
    figure, axes = C.new_figure(1, len(runs), (3.2 * len(runs), 3.2))
    for ax, run in zip(axes[0], runs, strict=True):
        C.density_panel(
            ax,
            box,
            _log_density,
            (run.draws["v"], run.draws["x"][:, 0]),
            title=f"{run.name}: KL {C.fmt(run.kl(0.0), 2)}, k̂ {run.diagnostics.khat:.2f}",
            labels=("v", "x[0]"),
        )
    figure.suptitle("guide draws (dots) over the exact funnel density (contours)")
    return C.save_figure(figure, out / "funnel.png")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the example; returns the exit status (0 on success)."""
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        return C.run_guide_comparison(
            args,
            "funnel",
            "Neal's funnel (10 latent dimensions: v, x[9]); log Z = 0, sd(v) = 3 exactly",
            "v",
            (_STEPS, _SMOKE_STEPS),
            (_SAMPLES, _SMOKE_SAMPLES),
            _settings,
            _figure,
        )

    return C.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
