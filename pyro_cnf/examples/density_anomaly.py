r"""Density estimation and anomaly detection with a CNF, and the learned density inside a Pyro model.

The data are the 2-D 8 Gaussians (:func:`~pyro_cnf.eight_gaussians`: eight equal-weight
Gaussians of standard deviation 0.5 on a circle of radius 4), whose log-density is known exactly.
The example

1. fits a :class:`~pyro_cnf.CNF` to :math:`N` points, by flow matching (rectified flow,
   :func:`~pyro_cnf.fit_flow_matching`; ``--trainer ot`` for minibatch OT-CFM) or by maximum
   likelihood (``--trainer mle``, :func:`~pyro_cnf.fit_density`), with a validation NLL;
2. estimates :math:`\mathrm{KL}(p\,\|\,q) = \mathbb E_p[\log p - \log q]` from fresh draws of
   :math:`p`, scoring :math:`q` exactly (one inverse ODE solve with the exact trace);
3. flags anomalies by likelihood (:class:`~pyro_cnf.AnomalyDetector`): the threshold on
   :math:`-\log q` is set for a target false-positive rate from held-out normal points, then the
   realised false-positive rate is measured on fresh normal points, and the true-positive rate and
   ROC AUC against anomalies drawn uniformly on :math:`[-6, 6]^2`;
4. uses the learned density as the likelihood of a Pyro model, :math:`y_i = \ell + e_i` with
   :math:`e_i \sim q` (``pyro.sample("y", q shifted by loc, obs=y)``), and infers the shift
   :math:`\ell` by SVI with an ``AutoNormal`` guide, against the true shift.

Writes ``report.txt`` and ``density_anomaly.png`` (exact and fitted density; the anomaly
threshold's contour with the flagged points).

Run::

    pyro-cnf run density_anomaly                   # flow matching, 3000 steps
    pyro-cnf run density_anomaly --trainer mle     # maximum likelihood (much slower per step)
    python examples/density_anomaly.py --smoke     # seconds

Headline numbers: the density-estimation section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineTransform
from pyro.infer.autoguide import AutoNormal
from torch import Tensor

from ..anomaly import AnomalyDetector, AnomalyReport
from ..datasets import eight_gaussians
from ..distributions import FlowDistribution
from ..infer import DensityFitResult, fit_density, fit_flow_matching, fit_svi
from ..infer.diagnostics import exact_scoring
from ..nn import MLPField
from ..ode import Solver
from ..transforms.continuous import CNF
from . import _common as C

__all__ = ["DESCRIPTION", "TRAINERS", "build_parser", "main"]

DESCRIPTION = "density estimation and anomaly detection"

TRAINERS = {
    "fm": "flow matching, straight paths (rectified flow)",
    "ot": "flow matching with exact minibatch optimal-transport pairs (OT-CFM)",
    "mle": "maximum likelihood through the ODE solver",
}

_STEPS = {"fm": 3000, "ot": 3000, "mle": 400}
_SMOKE_STEPS = 20
_SAMPLES, _SMOKE_SAMPLES = 20_000, 500  # draws of p for KL, fresh normal and anomalous points
_TRAIN, _SMOKE_TRAIN = 20_000, 2048
_CALIBRATION, _SMOKE_CALIBRATION = 5000, 500
_SHIFT = (1.0, -0.5)
_OBSERVATIONS = 50
_SVI_STEPS, _SMOKE_SVI_STEPS = 300, 3
_BOX: C.Box = ((-6.5, 6.5), (-6.5, 6.5))
_ANOMALY_BOX = 6.0


def build_parser(prog: str | None = None) -> C.ExampleParser:
    """The example's command-line options."""
    parser = C.ExampleParser(prog=prog, description=DESCRIPTION)
    C.add_common_arguments(
        parser,
        name="density_anomaly",
        steps=_STEPS["fm"],
        guides=None,
        num_samples=_SAMPLES,
    )
    parser.add_argument(
        "--trainer",
        default="fm",
        choices=list(TRAINERS),
        help="fm (rectified flow, default), ot (OT-CFM) or mle (maximum likelihood)",
    )
    parser.add_argument(
        "--train-size",
        type=C.positive_int,
        default=None,
        metavar="N",
        help=f"training points (default {_TRAIN})",
    )
    parser.add_argument(
        "--target-fpr",
        type=C.positive_float,
        default=0.05,
        help="false-positive rate the anomaly threshold is set for (default 0.05)",
    )
    parser.add_argument(
        "--lr", type=C.positive_float, default=None, help="Adam learning rate (default per trainer)"
    )
    return parser


def _make_flow() -> CNF:
    # rk4 with 8 steps as the cheap solver of training mode (used by maximum likelihood and
    # inside SVI below); the accurate eval_solver scores the KL and the anomalies
    return CNF(
        2,
        field=MLPField(2, (64, 64, 64), "silu"),
        solver=Solver("rk4", steps=8),
        eval_solver=Solver("dopri5", rtol=1e-5, atol=1e-5, norm="max"),
    )


def _fit(
    trainer: str,
    flow: CNF,
    data: Tensor,
    val: Tensor,
    steps: int,
    lr: float | None,
    evaluations: int,
    progress: bool,
) -> DensityFitResult:
    eval_every = max(1, steps // evaluations)
    if trainer == "mle":
        return fit_density(
            flow,
            data,
            val_data=val,
            num_steps=steps,
            lr=lr or 1e-2,
            eval_every=eval_every,
            progress=progress,
        )
    return fit_flow_matching(
        flow,
        data,
        val_data=val,
        coupling="ot" if trainer == "ot" else "independent",
        num_steps=steps,
        batch_size=256 if trainer == "ot" else min(1024, data.shape[0]),
        lr=lr or (3e-3 if trainer == "ot" else 1e-2),
        eval_every=eval_every,
        progress=progress,
    )


@torch.no_grad()
def _kl(p: dist.Distribution, q: FlowDistribution, flow: CNF, num: int) -> tuple[float, float]:
    """``E_p[log p - log q]`` and its standard error from ``num`` draws of p (exact scoring)."""
    x = p.sample((num,))
    with exact_scoring(flow):
        gaps = p.log_prob(x) - q.log_prob(x)
    return float(gaps.mean()), float(gaps.std() / math.sqrt(num))


def _shift_posterior(
    q: FlowDistribution, flow: CNF, steps: int, seed: int, progress: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Infer a location shift of data drawn from p, with the learned q as the likelihood."""
    p = eight_gaussians()
    shift = torch.tensor(_SHIFT)
    y = shift + p.sample((_OBSERVATIONS,))

    def model(y: Tensor) -> None:
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 3.0).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample(
                "y",
                dist.TransformedDistribution(q, [AffineTransform(loc, 1.0, event_dim=1)]),
                obs=y,
            )

    flow.requires_grad_(False)  # the learned density is fixed; SVI fits only the shift
    flow.train()  # the cheap training-mode solver (rk4, 8 steps) inside SVI
    pyro.clear_param_store()
    guide = AutoNormal(model, init_scale=0.1)
    fit_svi(
        model,
        guide,
        y,
        num_steps=steps,
        optimizer=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.1 ** (1 / steps)}),
        seed=seed,
        progress=progress,
    )
    flow.requires_grad_(True)
    low, median, high = guide.quantiles([0.158655, 0.5, 0.841345], y)["loc"]
    return shift, median.detach(), (high - low).detach() / 2  # a Normal: mean, sd


def _figure(
    p: dist.Distribution,
    q: FlowDistribution,
    flow: CNF,
    detector: AnomalyDetector,
    normal: Tensor,
    anomalies: Tensor,
    out: Path,
    grid: int,
) -> Path:
    figure, axes = C.new_figure(1, 3, (10.5, 3.6))
    C.density_panel(
        axes[0][0],
        _BOX,
        lambda a, b: p.log_prob(torch.stack([a, b], -1)),
        title="exact p",
        filled=True,
        num=grid,
    )

    def fitted(a: Tensor, b: Tensor) -> Tensor:
        points = torch.stack([a.flatten(), b.flatten()], -1)
        with exact_scoring(flow):
            return q.log_prob(points).reshape(a.shape)

    C.density_panel(axes[0][1], _BOX, fitted, title="fitted q (CNF)", filled=True, num=grid)
    ax = axes[0][2]
    x, y = C.grid_2d(_BOX, grid)
    with torch.no_grad():
        scores = detector.score(torch.stack([x.flatten(), y.flatten()], -1)).reshape(x.shape)
    ax.contour(x.numpy(), y.numpy(), scores.numpy(), levels=[detector.threshold], colors="k")
    flagged = detector.predict(anomalies)
    ax.scatter(*normal[:1000].T.numpy(), s=2, color="C0", alpha=0.4, label="normal")
    ax.scatter(*anomalies[:1000][flagged[:1000]].T.numpy(), s=3, color="C3", label="flagged")
    ax.scatter(*anomalies[:1000][~flagged[:1000]].T.numpy(), s=3, color="C7", label="missed")
    ax.set_xlim(*_BOX[0])
    ax.set_ylim(*_BOX[1])
    ax.set_title(f"threshold at target FPR {detector.target_fpr:g}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    figure.suptitle("8 Gaussians: exact density, fitted CNF, likelihood-threshold anomalies")
    return C.save_figure(figure, out / "density_anomaly.png")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the example; returns the exit status (0 on success)."""
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        if not args.target_fpr < 1:
            raise C.ExampleError(f"--target-fpr must be below 1, got {args.target_fpr}")
        out = C.prepare_output(args.out)
        steps = C.resolve(args.steps, _STEPS[args.trainer], _SMOKE_STEPS, args.smoke)
        num = C.resolve(args.num_samples, _SAMPLES, _SMOKE_SAMPLES, args.smoke)
        num_train = C.resolve(args.train_size, _TRAIN, _SMOKE_TRAIN, args.smoke)
        num_calibration = _SMOKE_CALIBRATION if args.smoke else _CALIBRATION
        progress = not args.no_progress
        pyro.set_rng_seed(args.seed)
        p = eight_gaussians()
        data, val = p.sample((num_train,)), p.sample((256 if args.smoke else 2000,))
        flow = _make_flow()
        evaluations = 2 if args.smoke else 10
        result = _fit(args.trainer, flow, data, val, steps, args.lr, evaluations, progress)
        q = result.distribution
        kl, kl_se = _kl(p, q, flow, num)
        flow.eval()
        flow.stats.reset()
        with torch.no_grad():
            q.log_prob(val[:1000])
        nfe = flow.stats.nfe_inverse
        flow.train()

        detector = AnomalyDetector(q)
        detector.fit_threshold(p.sample((num_calibration,)), target_fpr=args.target_fpr)
        normal = p.sample((num,))
        box = dist.Uniform(torch.full((2,), -_ANOMALY_BOX), torch.full((2,), _ANOMALY_BOX))
        anomalies = box.sample((num,))
        report: AnomalyReport = detector.evaluate(normal, anomalies)

        svi_steps = _SMOKE_SVI_STEPS if args.smoke else _SVI_STEPS
        shift, loc, scale = _shift_posterior(q, flow, svi_steps, args.seed, progress)
        entropy = float(-p.log_prob(val).mean())
        rows = [
            ["KL(p || q), nats", f"{kl:.4f} ± {kl_se:.4f}", f"{num} fresh draws of p"],
            ["best validation NLL", f"{result.best_val_nll:.4f}", f"entropy of p {entropy:.4f}"],
            ["NFE of one log_prob", str(nfe), "dopri5, rtol = atol = 1e-5"],
            ["training time", f"{result.train_time:.1f} s", f"{result.num_steps} steps"],
        ]
        anomaly_rows = [
            ["target FPR", f"{report.target_fpr:.3f}", f"{num_calibration} held-out normal points"],
            ["realised FPR", f"{report.fpr:.4f}", f"{report.num_normal} fresh normal points"],
            ["TPR", f"{report.tpr:.4f}", f"{report.num_anomalous} uniform points on [-6, 6]^2"],
            ["ROC AUC", f"{report.roc_auc:.4f}", "threshold-free"],
        ]
        shift_rows = [
            [f"loc[{i}]", f"{float(shift[i]):.3f}", f"{float(loc[i]):.3f} ± {float(scale[i]):.3f}"]
            for i in range(2)
        ]
        text = "\n".join(
            [
                "Density estimation and anomaly detection: 8 Gaussians (radius 4, sd 0.5)",
                f"CNF (MLP field 3 x 64, silu) trained by {TRAINERS[args.trainer]}; "
                f"{num_train} training points, seed {args.seed}"
                + ("  [SMOKE RUN: the numbers mean nothing]" if args.smoke else ""),
                "",
                C.table(["density", "value", "note"], rows),
                "",
                C.table(["anomaly detection", "value", "note"], anomaly_rows),
                "",
                f"A Pyro model with the learned density as likelihood: y_i = loc + e_i, "
                f"e_i ~ q, {_OBSERVATIONS} observations; AutoNormal posterior after "
                f"{svi_steps} SVI steps",
                C.table(["latent", "true", "posterior mean ± sd"], shift_rows),
            ]
        )
        written = [C.write_report(out, text)]
        written.append(
            _figure(p, q, flow, detector, normal, anomalies, out, 24 if args.smoke else 120)
        )
        print(text)
        print("\nwrote " + ", ".join(str(path) for path in written))
        return 0

    return C.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
