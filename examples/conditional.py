r"""A conditional density p(x | c) learned by a conditional CNF, against the exact one.

The data come from a known conditional density: a context :math:`c \sim \mathcal U(-1, 1)`, then

.. math::

    x_0 \mid c \sim \mathcal N(0, 1), \qquad
    x_1 \mid x_0, c \sim \mathcal N\big(c\,(x_0^2 - 1),\ 0.5^2\big),

a Gaussian at :math:`c = 0` that bends into a banana opening upwards (:math:`c > 0`) or downwards
(:math:`c < 0`). A :class:`~pyro_cnf.ConditionalFlowDistribution` around a conditional flow of the
registry (by default a :class:`~pyro_cnf.ConditionalCNF`, whose vector field reads :math:`c`) is
fitted by maximum likelihood with Adam. As :math:`\log p(x \mid c)` is known, the held-out mean of
:math:`\log p(x \mid c) - \log q(x \mid c)` estimates the expected
:math:`\mathrm{KL}(p(\cdot \mid c)\,\|\,q(\cdot \mid c))` over contexts, in nats, with its standard
error; the report gives it before and after training.

Writes ``report.txt`` and ``conditional.png`` (exact against fitted density at three contexts)::

    python examples/conditional.py                # a ConditionalCNF, 2000 steps
    python examples/conditional.py --flow maf     # a conditional MAF instead
    python examples/conditional.py --smoke        # seconds: checks that everything runs
"""

import argparse
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure

from pyro_cnf import ConditionalFlowDistribution, Solver, flow_names, flow_spec, make_flow

CONTEXTS = (-0.9, 0.0, 0.9)  # where the figure compares the densities


def sample_data(num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` draws of the data distribution: points ``(num, 2)`` and contexts ``(num, 1)``."""
    c = torch.rand(num, 1) * 2 - 1
    x0 = torch.randn(num)
    x1 = c[:, 0] * (x0**2 - 1) + 0.5 * torch.randn(num)
    return torch.stack([x0, x1], -1), c


def exact_log_prob(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The exact log p(x | c) of points ``(..., 2)`` at contexts ``(..., 1)``."""
    x0, x1 = x[..., 0], x[..., 1]
    mean = c[..., 0] * (x0**2 - 1)
    return dist.Normal(0.0, 1.0).log_prob(x0) + dist.Normal(mean, 0.5).log_prob(x1)


@torch.no_grad()
def kl_estimate(
    density: ConditionalFlowDistribution, x: torch.Tensor, c: torch.Tensor
) -> tuple[float, float]:
    """Held-out mean of log p - log q, and its standard error."""
    gaps = exact_log_prob(x, c) - density.condition(c).log_prob(x)
    return float(gaps.mean()), float(gaps.std() / math.sqrt(gaps.numel()))


def main(args: argparse.Namespace) -> None:
    """Fit the conditional flow by maximum likelihood and compare it with the exact density."""
    if args.smoke:
        args.steps, args.num_samples = 20, 512
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # small tensors: a second thread only waits
    args.out.mkdir(parents=True, exist_ok=True)
    pyro.set_rng_seed(args.seed)
    x_train, c_train = sample_data(args.num_samples)
    x_test, c_test = sample_data(args.num_samples)

    # The flow: a ConditionalCNF with a fixed-step solver (cheap to train through), or any
    # conditional flow of the registry; a standard normal base makes the untrained q = N(0, I).
    if args.flow == "cnf":
        flow = make_flow(
            "cnf", 2, context_dim=1, hidden_dims=(64, 64), solver=Solver("rk4", steps=8)
        )
    else:
        flow = make_flow(args.flow, 2, context_dim=1)
    density = ConditionalFlowDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), flow)
    flow.eval()  # scoring: a CNF solves accurately in eval mode
    before = kl_estimate(density, x_test, c_test)

    flow.train()
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.1 ** (1 / args.steps))
    for step in range(args.steps):
        batch = torch.randint(args.num_samples, (256,))
        loss = -density.condition(c_train[batch]).log_prob(x_train[batch]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step:>5}  negative log-likelihood {loss.item():.4f}")
    flow.eval()
    after = kl_estimate(density, x_test, c_test)
    exact_nll = float(-exact_log_prob(x_test, c_test).mean())

    report = "\n".join(
        [
            "Conditional density p(x | c): x0 ~ N(0, 1), x1 ~ N(c (x0^2 - 1), 0.5^2), c ~ U(-1, 1)",
            f"flow: conditional {args.flow!r}, maximum likelihood (Adam, lr {args.lr:g} decaying"
            f" 10x, batch 256),",
            f"{args.steps} steps, {args.num_samples} training and {args.num_samples} held-out"
            f" pairs, seed {args.seed}"
            + ("  [smoke run: the numbers mean nothing]" if args.smoke else ""),
            "",
            "flow      E_c[KL]      se",
            f"untrained  {before[0]:>7.4f}  {before[1]:>6.4f}",
            f"trained    {after[0]:>7.4f}  {after[1]:>6.4f}",
            "",
            "E_c[KL]: held-out mean of log p(x|c) - log q(x|c), in nats, the exact log p known;",
            "the untrained flow is q = N(0, I).",
            f"held-out negative log-likelihood: exact {exact_nll:.4f}, fitted"
            f" {exact_nll + after[0]:.4f} nats per point",
        ]
    )
    (args.out / "report.txt").write_text(report + "\n")
    print("\n" + report)

    figure = Figure(figsize=(9.0, 5.6), layout="constrained")
    axes = figure.subplots(2, len(CONTEXTS))
    x0, x1 = torch.meshgrid(
        torch.linspace(-3.5, 3.5, args.grid), torch.linspace(-4.0, 6.0, args.grid), indexing="xy"
    )
    points = torch.stack([x0.flatten(), x1.flatten()], -1)
    for k, context in enumerate(CONTEXTS):
        c = torch.full((len(points), 1), context)
        with torch.no_grad():
            exact = exact_log_prob(points, c).exp().reshape(x0.shape)
            fitted = density.condition(c).log_prob(points).exp().reshape(x0.shape)
        axes[0][k].pcolormesh(x0.numpy(), x1.numpy(), exact.numpy(), cmap="viridis")
        axes[0][k].set_title(f"exact, c = {context:g}", fontsize=9)
        axes[1][k].pcolormesh(x0.numpy(), x1.numpy(), fitted.numpy(), cmap="viridis")
        axes[1][k].set_title(f"fitted, c = {context:g}", fontsize=9)
    figure.suptitle("p(x | c): exact (top) and the fitted conditional flow (bottom)", fontsize=10)
    figure.savefig(args.out / "conditional.png", dpi=100)
    print(f"\nwrote {args.out}/report.txt, conditional.png")


if __name__ == "__main__":
    conditional = [name for name in flow_names() if flow_spec(name).conditional]
    parser = argparse.ArgumentParser(description="A conditional density with a ConditionalCNF")
    parser.add_argument("--flow", default="cnf", choices=conditional, help="a conditional flow")
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps")
    parser.add_argument("--num-samples", type=int, default=4096, help="training (and test) pairs")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--grid", type=int, default=100, help="grid points per axis")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", type=Path, default=Path("pyro-cnf-out/conditional"))
    parser.add_argument("--smoke", action="store_true", help="20 steps, 512 pairs (seconds)")
    args = parser.parse_args()
    if args.steps < 1 or args.num_samples < 2 or args.grid < 2 or not args.lr > 0:
        parser.error("--steps, --num-samples, --grid and --lr must be positive")
    main(args)
