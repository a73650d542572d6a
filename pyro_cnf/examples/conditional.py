r"""A conditional density :math:`p(x \mid c)` learned by a conditional flow, against the exact one.

The data come from a known conditional density: a context :math:`c \sim \mathcal U(-1, 1)`, then

.. math::

    x_0 \mid c \sim \mathcal N(0, 1), \qquad
    x_1 \mid x_0, c \sim \mathcal N\big(c\,(x_0^2 - 1),\ 0.5^2\big),

a Gaussian at :math:`c = 0` that bends into a banana opening upwards (:math:`c > 0`) or downwards
(:math:`c < 0`). A :class:`~pyro_cnf.ConditionalFlowDistribution` with a conditional flow from the
registry (default a :class:`~pyro_cnf.ConditionalCNF`: its vector field reads :math:`c`) is fitted
by maximum likelihood to :math:`N` pairs :math:`(x, c)` with Adam. Because :math:`\log p(x \mid
c)` is known exactly, the held-out mean of :math:`\log p(x \mid c) - \log q(x \mid c)` estimates
the expected :math:`\mathrm{KL}(p(\cdot \mid c)\,\|\,q(\cdot \mid c))` over contexts, in nats,
with its standard error; the report gives it before and after training.

Writes ``report.txt`` and ``conditional.png`` (exact against fitted density at three contexts).

Run::

    pyro-cnf run conditional                     # ConditionalCNF, 2000 steps
    pyro-cnf run conditional --flow maf          # a conditional MAF instead
    python examples/conditional.py --smoke       # seconds

Headline numbers (``pyro-cnf run conditional``: seed 0, float64, one thread on the shared 2-core
reference machine, 845 s): held-out :math:`E_c\,\mathrm{KL} = 0.0315 \pm 0.0048` nats after 2000
steps (the untrained flow, a standard normal: :math:`0.718 \pm 0.031`); held-out negative
log-likelihood 2.1835 nats per point against 2.1519 for the exact density.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ..distributions import ConditionalFlowDistribution
from ..ode import Solver
from ..transforms.registry import flow_names, flow_spec, make_flow
from . import _common as C

__all__ = ["DESCRIPTION", "build_parser", "exact_log_prob", "main", "sample_data"]

DESCRIPTION = "a conditional density p(x | c) with a ConditionalCNF, against the exact one"

_STEPS, _SMOKE_STEPS = 2000, 20
_SAMPLES, _SMOKE_SAMPLES = 4096, 512  # held-out pairs
_TRAIN, _SMOKE_TRAIN = 4096, 512
_BATCH = 256
_CONTEXTS = (-0.9, 0.0, 0.9)
_BOX: C.Box = ((-3.5, 3.5), (-4.0, 6.0))


def sample_data(num: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``num`` pairs from the data distribution: points ``(num, 2)`` and contexts ``(num, 1)``."""
    c = torch.rand(num, 1, generator=generator) * 2 - 1
    x0 = torch.randn(num, generator=generator)
    x1 = c[:, 0] * (x0**2 - 1) + 0.5 * torch.randn(num, generator=generator)
    return torch.stack([x0, x1], -1), c


def exact_log_prob(x: Tensor, c: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid c)` for points ``(..., 2)`` and contexts ``(..., 1)``."""
    x0, x1 = x[..., 0], x[..., 1]
    mean = c[..., 0] * (x0**2 - 1)
    return dist.Normal(0.0, 1.0).log_prob(x0) + dist.Normal(mean, 0.5).log_prob(x1)


def build_parser(prog: str | None = None) -> C.ExampleParser:
    """The example's command-line options."""
    parser = C.ExampleParser(prog=prog, description=DESCRIPTION)
    C.add_common_arguments(
        parser, name="conditional", steps=_STEPS, guides=None, num_samples=_SAMPLES
    )
    conditional = [name for name in flow_names() if flow_spec(name).conditional]
    parser.add_argument(
        "--flow",
        "--guide",
        dest="flow",
        default="cnf",
        choices=conditional,
        metavar="NAME",
        help=f"conditional flow from the registry (default cnf; one of {', '.join(conditional)})",
    )
    parser.add_argument(
        "--train-size",
        type=C.positive_int,
        default=None,
        metavar="N",
        help=f"training pairs (default {_TRAIN})",
    )
    parser.add_argument(
        "--lr", type=C.positive_float, default=3e-3, help="Adam learning rate (default 3e-3)"
    )
    return parser


def _make_flow(name: str) -> Any:
    if name == "cnf":
        return make_flow(
            "cnf", 2, context_dim=1, hidden_dims=(64, 64), solver=Solver("rk4", steps=8)
        )
    return make_flow(name, 2, context_dim=1)


@torch.no_grad()
def _kl(density: ConditionalFlowDistribution, x: Tensor, c: Tensor) -> tuple[float, float]:
    """Held-out mean of log p - log q and its standard error (flows in eval mode)."""
    gaps = exact_log_prob(x, c) - density.condition(c).log_prob(x)
    return float(gaps.mean()), float(gaps.std() / math.sqrt(gaps.numel()))


def _figure(density: ConditionalFlowDistribution, out: Path, grid: int) -> Path:
    figure, axes = C.new_figure(2, len(_CONTEXTS), (3.0 * len(_CONTEXTS), 5.6))
    for k, context in enumerate(_CONTEXTS):

        def exact(z1: Tensor, z2: Tensor, context: float = context) -> Tensor:
            return exact_log_prob(torch.stack([z1, z2], -1), torch.full((*z1.shape, 1), context))

        def fitted(z1: Tensor, z2: Tensor, context: float = context) -> Tensor:
            points = torch.stack([z1.flatten(), z2.flatten()], -1)
            c = torch.full((points.shape[0], 1), context)
            return density.condition(c).log_prob(points).reshape(z1.shape)

        C.density_panel(axes[0][k], _BOX, exact, title=f"exact, c = {context:g}", filled=True)
        C.density_panel(
            axes[1][k], _BOX, fitted, title=f"fitted, c = {context:g}", filled=True, num=grid
        )
    figure.suptitle("p(x | c): exact (top) and the fitted conditional flow (bottom)")
    return C.save_figure(figure, out / "conditional.png")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the example; returns the exit status (0 on success)."""
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        out = C.prepare_output(args.out)
        steps = C.resolve(args.steps, _STEPS, _SMOKE_STEPS, args.smoke)
        num_test = C.resolve(args.num_samples, _SAMPLES, _SMOKE_SAMPLES, args.smoke)
        num_train = C.resolve(args.train_size, _TRAIN, _SMOKE_TRAIN, args.smoke)
        pyro.set_rng_seed(args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        x_train, c_train = sample_data(num_train, generator)
        x_test, c_test = sample_data(num_test, generator)
        flow = _make_flow(args.flow)
        density = ConditionalFlowDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), flow)
        flow.eval()
        kl_before = _kl(density, x_test, c_test)
        flow.train()
        optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.1 ** (1 / steps))
        from tqdm.auto import tqdm

        losses = []
        bar = tqdm(range(steps), desc="MLE", disable=args.no_progress, leave=False)
        for step in bar:
            index = torch.randint(num_train, (min(_BATCH, num_train),), generator=generator)
            loss = -density.condition(c_train[index]).log_prob(x_train[index]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise C.ExampleError(f"training diverged at step {step} (loss {losses[-1]})")
            if step % 10 == 0:
                bar.set_postfix(nll=f"{losses[-1]:.3f}")
        flow.eval()
        kl_after = _kl(density, x_test, c_test)
        with torch.no_grad():
            exact_nll = float(-exact_log_prob(x_test, c_test).mean())
        rows = [
            ["before training", f"{kl_before[0]:.4f} ± {kl_before[1]:.4f}"],
            [f"after {steps} steps", f"{kl_after[0]:.4f} ± {kl_after[1]:.4f}"],
        ]
        report = "\n".join(
            [
                "Conditional density p(x | c): x0 ~ N(0, 1), x1 ~ N(c (x0^2 - 1), 0.5^2), c ~ U(-1, 1)",
                f"flow: conditional {args.flow!r} (context_dim 1), fitted by maximum likelihood "
                f"(Adam, lr {args.lr:g} decaying 10x, batch {_BATCH})",
                f"{num_train} training pairs, {num_test} held-out pairs, seed {args.seed}"
                + ("  [SMOKE RUN: the numbers mean nothing]" if args.smoke else ""),
                "",
                C.table(["flow", "E_c KL(p(.|c) || q(.|c)) (nats, held out)"], rows),
                "",
                f"exact held-out negative log-likelihood: {exact_nll:.4f} nats per point",
                f"fitted: {exact_nll + kl_after[0]:.4f}; final training NLL: "
                f"{sum(losses[-50:]) / len(losses[-50:]):.4f} (mean of the last steps)",
                "KL estimate: held-out mean of log p(x|c) - log q(x|c), exact log p known.",
            ]
        )
        written = [C.write_report(out, report)]
        written.append(_figure(density, out, 30 if args.smoke else 100))
        print(report)
        print("\nwrote " + ", ".join(str(p) for p in written))
        return 0

    return C.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
