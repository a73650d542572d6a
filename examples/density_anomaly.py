r"""Density estimation and anomaly detection with a CNF, then the learned density in a Pyro model.

The data are the 2-D 8 Gaussians (:func:`~pyro_cnf.eight_gaussians`: eight equal-weight
Gaussians of standard deviation 0.5 on a circle of radius 4), whose log-density is known exactly.
The script

1. fits a :class:`~pyro_cnf.CNF` to the points by flow matching (rectified flow,
   :func:`~pyro_cnf.fit_flow_matching`; ``--trainer ot`` for minibatch OT-CFM) or by maximum
   likelihood (``--trainer mle``, :func:`~pyro_cnf.fit_density`);
2. estimates :math:`\mathrm{KL}(p\,\|\,q) = E_p[\log p - \log q]` from fresh draws of :math:`p`,
   scoring :math:`q` exactly (one inverse ODE solve with the exact trace);
3. flags anomalies by likelihood (:class:`~pyro_cnf.AnomalyDetector`): the threshold on
   :math:`-\log q` is set for a target false-positive rate on held-out normal points, then the
   realised false-positive rate is measured on fresh normal points, and the true-positive rate
   and ROC AUC against anomalies drawn uniformly on :math:`[-6, 6]^2`;
4. uses the learned density as the likelihood of a Pyro model, :math:`y_i = \ell + e_i` with
   :math:`e_i \sim q`, and infers the shift :math:`\ell` by SVI with ``AutoNormal``.

Writes ``report.txt`` and ``density_anomaly.png`` (exact and fitted density; the anomaly
threshold's contour with the flagged points)::

    python examples/density_anomaly.py                   # flow matching, 3000 steps
    python examples/density_anomaly.py --trainer mle     # maximum likelihood (slower per step)
    python examples/density_anomaly.py --smoke           # seconds: checks that everything runs
"""

import argparse
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro.distributions.transforms import AffineTransform
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_cnf import (
    CNF,
    AnomalyDetector,
    MLPField,
    Solver,
    eight_gaussians,
    fit_density,
    fit_flow_matching,
)

SHIFT = (1.0, -0.5)  # the true shift of the observations in step 4


def fit(flow: CNF, data: torch.Tensor, val: torch.Tensor, args: argparse.Namespace) -> object:
    """Train the flow on the data (validation NLL on ``val``); returns the fit's result."""
    options = {"val_data": val, "num_steps": args.steps, "eval_every": max(1, args.steps // 10)}
    if args.trainer == "mle":
        return fit_density(flow, data, lr=1e-2, progress=False, **options)
    coupling = "ot" if args.trainer == "ot" else "independent"
    batch = 256 if args.trainer == "ot" else 1024
    lr = 3e-3 if args.trainer == "ot" else 1e-2
    return fit_flow_matching(
        flow, data, coupling=coupling, batch_size=batch, lr=lr, progress=False, **options
    )


def shift_model(q: dist.Distribution, y: torch.Tensor) -> None:
    """Observations y_i = loc + e_i with e_i ~ q, the learned density."""
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.TransformedDistribution(q, [AffineTransform(loc, 1.0, 1)]), obs=y)


def main(args: argparse.Namespace) -> None:
    """Fit the density, score it, detect anomalies, infer a shift; write report and figure."""
    if args.smoke:
        args.steps, args.num_samples, args.svi_steps, args.grid = 20, 500, 3, 24
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # small tensors: a second thread only waits
    args.out.mkdir(parents=True, exist_ok=True)
    pyro.set_rng_seed(args.seed)
    p = eight_gaussians()
    data, val = p.sample((4 * args.num_samples,)), p.sample((args.num_samples,))

    # 1. The CNF: a fixed-step solver for training (and inside SVI), an accurate one to score.
    flow = CNF(
        2,
        field=MLPField(2, (64, 64, 64), "silu"),
        solver=Solver("rk4", steps=8),
        eval_solver=Solver("dopri5", rtol=1e-5, atol=1e-5, norm="max"),
    )
    result = fit(flow, data, val, args)
    q = result.distribution
    print(f"trained {result.num_steps} steps in {result.train_time:.0f} s")

    # 2. KL(p || q) from fresh draws of p; in eval mode the CNF scores with its exact solver.
    flow.eval()
    with torch.no_grad():
        x = p.sample((args.num_samples,))
        gaps = p.log_prob(x) - q.log_prob(x)
    kl, kl_se = float(gaps.mean()), float(gaps.std() / math.sqrt(len(gaps)))

    # 3. Anomalies: the threshold from held-out normal points, checked on fresh ones.
    detector = AnomalyDetector(q)
    detector.fit_threshold(p.sample((args.num_samples,)), target_fpr=args.target_fpr)
    normal = p.sample((args.num_samples,))
    anomalies = dist.Uniform(-6.0 * torch.ones(2), 6.0).sample((args.num_samples,))
    anomaly = detector.evaluate(normal, anomalies)

    # 4. The learned density as a likelihood: infer the shift of 50 observations by SVI.
    y = torch.tensor(SHIFT) + p.sample((50,))
    flow.requires_grad_(False)  # the density is fixed; SVI fits only the shift
    flow.train()  # the cheap training solver inside SVI
    pyro.clear_param_store()
    guide = AutoNormal(shift_model, init_scale=0.1)
    optimizer = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.1 ** (1 / args.svi_steps)})
    svi = SVI(shift_model, guide, optimizer, Trace_ELBO())
    for _ in range(args.svi_steps):
        svi.step(q, y)
    low, median, high = guide.quantiles([0.158655, 0.5, 0.841345], q, y)["loc"]
    flow.eval()

    entropy = float(-p.log_prob(val).mean())
    report = "\n".join(
        [
            "Density estimation and anomaly detection: 8 Gaussians (radius 4, sd 0.5)",
            f"CNF (MLP field 3 x 64, silu), trainer {args.trainer}, {args.steps} steps,"
            f" {len(data)} training points, seed {args.seed}"
            + ("  [smoke run: the numbers mean nothing]" if args.smoke else ""),
            "",
            "quantity         value      note",
            f"KL(p||q)         {kl:.4f}     ± {kl_se:.4f} nats, {args.num_samples} draws of p",
            f"val_NLL          {result.best_val_nll:.4f}     best; entropy of p {entropy:.4f}",
            f"target_FPR       {args.target_fpr:.4f}     set on {args.num_samples} normal points",
            f"realised_FPR     {anomaly.fpr:.4f}     on {anomaly.num_normal} fresh normal points",
            f"TPR              {anomaly.tpr:.4f}     uniform anomalies on [-6, 6]^2",
            f"ROC_AUC          {anomaly.roc_auc:.4f}     threshold-free",
            "",
            f"A Pyro model with the learned density as likelihood, {args.svi_steps} SVI steps:",
            "latent  true    posterior_median  sd",
            *(
                f"loc[{i}]  {SHIFT[i]:>5.2f}  {float(median[i]):>16.3f}"
                f"  {float(high[i] - low[i]) / 2:.3f}"
                for i in range(2)
            ),
        ]
    )
    (args.out / "report.txt").write_text(report + "\n")
    print("\n" + report)

    figure = Figure(figsize=(10.5, 3.6), layout="constrained")
    axes = figure.subplots(1, 3)
    a, b = torch.meshgrid(*[torch.linspace(-6.5, 6.5, args.grid)] * 2, indexing="xy")
    points = torch.stack([a.flatten(), b.flatten()], -1)
    with torch.no_grad():  # matplotlib takes numpy arrays
        p_grid, q_grid = (d.log_prob(points).exp().reshape(a.shape).numpy() for d in (p, q))
        scores = detector.score(points).reshape(a.shape).numpy()
    a, b = a.numpy(), b.numpy()
    axes[0].pcolormesh(a, b, p_grid, cmap="viridis")
    axes[0].set_title("exact p", fontsize=9)
    axes[1].pcolormesh(a, b, q_grid, cmap="viridis")
    axes[1].set_title(f"fitted q (CNF): KL(p||q) {kl:.3f}", fontsize=9)
    flagged = detector.predict(anomalies[:1000])
    normal, anomalies = normal[:1000].numpy(), anomalies[:1000].numpy()
    axes[2].contour(a, b, scores, levels=[detector.threshold], colors="k")
    axes[2].scatter(*normal.T, s=2, color="C0", alpha=0.4, label="normal")
    axes[2].scatter(*anomalies[flagged.numpy()].T, s=3, color="C3", label="flagged")
    axes[2].scatter(*anomalies[~flagged.numpy()].T, s=3, color="C7", label="missed")
    axes[2].set(xlim=(-6.5, 6.5), ylim=(-6.5, 6.5))
    axes[2].set_title(f"threshold at target FPR {args.target_fpr:g}", fontsize=9)
    axes[2].legend(fontsize=7, loc="upper right")
    figure.suptitle("8 Gaussians: exact density, fitted CNF, likelihood-threshold anomalies")
    figure.savefig(args.out / "density_anomaly.png", dpi=100)
    print(f"\nwrote {args.out}/report.txt, density_anomaly.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Density estimation and anomaly detection")
    parser.add_argument(
        "--trainer", default="fm", choices=["fm", "ot", "mle"], help="fm: rectified flow"
    )
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--num-samples", type=int, default=5000, help="points per data set")
    parser.add_argument("--svi-steps", type=int, default=300, help="SVI steps for the shift")
    parser.add_argument(
        "--target-fpr", type=float, default=0.05, help="anomaly false-positive rate"
    )
    parser.add_argument("--grid", type=int, default=120, help="grid points per axis")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", type=Path, default=Path("pyro-cnf-out/density_anomaly"))
    parser.add_argument("--smoke", action="store_true", help="20 steps, 500 points (seconds)")
    args = parser.parse_args()
    if min(args.steps, args.svi_steps, args.num_samples - 1, args.grid - 1) < 1:
        parser.error("--steps, --svi-steps, --num-samples and --grid must be positive")
    if not 0 < args.target_fpr < 1:
        parser.error("--target-fpr must lie in (0, 1)")
    main(args)
