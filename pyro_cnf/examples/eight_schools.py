r"""Centered eight schools: AutoCNF against Pyro's guides and the exact answer.

The centered eight schools model (:func:`pyro_cnf.models.eight_schools_centered`) has a funnel
between :math:`\tau` and :math:`\theta`: at small :math:`\tau` the schools' effects are pinned
to :math:`\mu`. Its exact answer comes from quadrature (:math:`\log Z = -31.3113`,
:math:`E\tau = 3.598`, :math:`\mathrm{sd}\,\tau = 3.220`). Each guide is fitted by SVI and
judged by importance sampling with :math:`S` draws:

* :math:`\mathrm{KL}(q\,\|\,p) = \log Z - \mathrm{ELBO}`, the honest accuracy number;
* Pareto :math:`\hat k` (below 0.5 good, above 0.7 the guide misses posterior mass);
* :math:`E\tau` and :math:`\mathrm{sd}\,\tau` of the guide's own draws and of the
  importance-resampled ones, against the exact values.

Writes ``report.txt``, ``eight_schools.png`` (each guide's draws of :math:`(\mu, \log\tau)`
over the exact posterior's contours) and, with :mod:`pyro_cnf.arviz`, one InferenceData
``<guide>.nc`` per guide.

Run::

    pyro-cnf run eight_schools                     # all four guides, 3000 steps
    pyro-cnf run eight_schools --guide cnf,normal --steps 1500
    python examples/eight_schools.py --smoke       # seconds

``pyro-cnf demo`` runs this example with ``--guide cnf,normal --steps 2000``.

Every guide is built with its defaults (``AutoCNF(model)``: see its docs for what it chooses)
and fitted in the same plain SVI loop; ``docs/benchmarks.md`` has the numbers of this model
across fit seeds, against NUTS.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..models import get_model
from ..models.eight_schools import _log_marginal
from . import _common as C

__all__ = ["DEMO_ARGS", "DESCRIPTION", "build_parser", "main"]

DESCRIPTION = "centered eight schools: AutoCNF vs Pyro's guides vs the exact answer"
DEMO_ARGS = ("--guide", "cnf,normal", "--steps", "2000")
"""What ``pyro-cnf demo`` passes (before the user's own options)."""

_STEPS, _SMOKE_STEPS = 3000, 30
_SAMPLES, _SMOKE_SAMPLES = 10_000, 500


def build_parser(prog: str | None = None) -> C.ExampleParser:
    """The example's command-line options."""
    parser = C.ExampleParser(prog=prog, description=DESCRIPTION)
    C.add_common_arguments(
        parser,
        name="eight_schools",
        steps=_STEPS,
        guides="cnf,normal,mvn,pyro-iaf",
        num_samples=_SAMPLES,
    )
    return parser


def _settings(guide: str, smoke: bool) -> C.GuideSettings:
    return C.default_settings(guide)


def _figure(runs: list[C.GuideRun], out: Path, log_z: float) -> Path:
    box: C.Box = ((-15.0, 25.0), (-5.0, 3.5))
    figure, axes = C.new_figure(1, len(runs), (3.2 * len(runs), 3.2))
    for ax, run in zip(axes[0], runs, strict=True):
        mu, log_tau = run.draws["mu"], run.draws["tau"].log()
        C.density_panel(
            ax,
            box,
            _log_marginal,
            (mu, log_tau),
            title=f"{run.name}: KL {C.fmt(run.kl(log_z), 2)}, k̂ {run.diagnostics.khat:.2f}",
            labels=("mu", "log tau"),
        )
    figure.suptitle("guide draws (dots) over the exact posterior of (mu, log tau) (contours)")
    return C.save_figure(figure, out / "eight_schools.png")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the example; returns the exit status (0 on success)."""
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        return C.run_guide_comparison(
            args,
            "eight_schools_centered",
            "Centered eight schools (10 latent dimensions: mu, tau, theta[8])",
            "tau",
            (_STEPS, _SMOKE_STEPS),
            (_SAMPLES, _SMOKE_SAMPLES),
            _settings,
            lambda runs, out: _figure(
                runs, out, get_model("eight_schools_centered").reference.log_Z
            ),
        )

    return C.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
