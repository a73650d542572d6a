"""Benchmark the CNF core of pyro-cnf against zuko's ``CNF``.

Run by hand (not a test)::

    python benchmarks/bench_cnf.py            # full run, ~3-4 minutes on 2 shared CPU cores
    python benchmarks/bench_cnf.py --quick    # sanity run, ~1 minute

Timings use one torch thread by default (``--threads``): on a shared 2-core machine, two OpenMP
threads competing with another busy process made a forward pass ~70x slower.

Both flows define the *same density*: zuko's MLP (3 x 64, tanh, random init) is copied into a
``pyro_cnf.MLPField`` so that our base -> data field is ``g(s, z) = -f_zuko(1 - s, z)``. Parts:

1. ``log_prob`` of B=1000 points at d=2 and d=10, each library at its fastest setting whose max
   error against a float64 reference is <= 2e-4 (matched accuracy).
2. One SVI step (Trace_ELBO, Adam) with a CNF guide on a 10-D banana, 1 and 64 particles.
3. Cost of the exact trace per function evaluation (fused, autograd loop, Hutchinson) relative to
   a bare forward pass, for scoring (no_grad) and training (with backward).
4. One training step (rsample_and_log_prob + backward) with direct backprop vs ``adjoint=True``:
   NFE and peak resident memory, each configuration in a fresh subprocess.

Every table is printed as markdown; ``--json PATH`` also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
import torchdiffeq
import zuko
import zuko.transforms
from _common import machine as _machine
from _common import per_call
from pyro.contrib.zuko import ZukoToPyro
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_cnf import CNF, Exact, FlowDistribution, Hutchinson, MLPField, Solver

HIDDEN = (64, 64, 64)
FREQUENCIES = 3
BATCH = 1000
TOLERANCE = 2e-4  # matched accuracy: max |log p - log p_ref| over the batch
REFERENCE_SOLVER = Solver("dopri5", rtol=1e-10, atol=1e-10, max_num_steps=100_000)
ZUKO_REFERENCE_TOL = 1e-10


# --------------------------------------------------------------------------------------------
# Identical functions on both sides
# --------------------------------------------------------------------------------------------


def zuko_linears(zflow: zuko.flows.CNF) -> list[torch.nn.Module]:
    """zuko's MLP layers (``zuko.nn.Linear``, not ``torch.nn.Linear``) in order."""
    return [m for m in zflow.transform.ode.modules() if hasattr(m, "weight")]


def copy_zuko_into(field_: MLPField, zflow: zuko.flows.CNF) -> None:
    r"""Make ``field_(s, z) == -f_zuko(1 - s, z)``.

    zuko integrates data -> base over t in [0, 1] with input ``(cos pi k t, sin pi k t, x)``; we
    integrate base -> data over s in [0, 1], so s = 1 - t and the field changes sign. With
    cos(pi k (1 - s)) = (-1)^k cos(pi k s) and sin(pi k (1 - s)) = -(-1)^k sin(pi k s), the time
    columns are multiplied by those signs, and the output layer is negated.
    """
    layers = zuko_linears(zflow)
    first, *middle, last = layers
    k = torch.arange(1, FREQUENCIES + 1, dtype=torch.float32)
    cos_sign = (-1.0) ** k
    sin_sign = -cos_sign
    with torch.no_grad():
        w = first.weight
        field_.input_t.weight.copy_(
            torch.cat(
                (w[:, :FREQUENCIES] * cos_sign, w[:, FREQUENCIES : 2 * FREQUENCIES] * sin_sign), 1
            )
        )
        field_.input_z.weight.copy_(w[:, 2 * FREQUENCIES :])
        field_.input_z.bias.copy_(first.bias)
        for ours, theirs in zip(field_.hidden, middle, strict=True):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        field_.output.weight.copy_(-last.weight)
        field_.output.bias.copy_(-last.bias)


def build_pair(d: int, seed: int) -> tuple[zuko.flows.CNF, MLPField]:
    """zuko's CNF (random init) and our field with the same weights (same density)."""
    torch.manual_seed(seed)
    zflow = zuko.flows.CNF(d, hidden_features=HIDDEN, activation=torch.nn.Tanh)
    field_ = MLPField(
        d, hidden_dims=HIDDEN, activation="tanh", time_frequencies=FREQUENCIES, zero_init=False
    )
    copy_zuko_into(field_, zflow)
    return zflow, field_


def field_mismatch(zflow: zuko.flows.CNF, field_: MLPField, d: int) -> float:
    """max |g(s, z) + f_zuko(1 - s, z)| over a few times and points (should be ~1e-7)."""
    z = torch.randn(64, d, generator=torch.Generator().manual_seed(123))
    worst = 0.0
    with torch.no_grad():
        for s in (0.0, 0.137, 0.5, 0.81, 1.0):
            g = field_(torch.tensor(s), z)
            f = zflow.transform.f(torch.tensor(1.0 - s), z)
            worst = max(worst, float((g + f).abs().max()))
    return worst


def base_normal(d: int, dtype: torch.dtype = torch.float32) -> dist.Distribution:
    return dist.Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)).to_event(1)


def set_solver(flow: CNF, solver: Solver) -> CNF:
    flow.solver = solver
    flow.eval_solver = solver
    return flow


def set_zuko_tol(zflow: zuko.flows.CNF, atol: float, rtol: float) -> zuko.flows.CNF:
    zflow.transform.atol = atol
    zflow.transform.rtol = rtol
    return zflow


def ours_log_prob(flow: CNF, base: dist.Distribution, x: torch.Tensor) -> torch.Tensor:
    flow.clear_cache()  # the CNF caches its last solve
    return dist.TransformedDistribution(base, [flow]).log_prob(x)


def zuko_log_prob(zflow: zuko.flows.CNF, x: torch.Tensor) -> torch.Tensor:
    return zflow().log_prob(x)


class ZukoCounter:
    """NFE of zuko's field (a forward hook on its MLP), split into forward and backward passes.

    Also counts ODE solves by wrapping ``zuko.transforms.odeint`` (instrumentation only).
    """

    def __init__(self, zflow: zuko.flows.CNF) -> None:
        self.forward = 0
        self.backward = 0
        self.solves = 0
        self.handle = zflow.transform.ode.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        # -1 outside autograd's engine; anything else while a backward pass runs.
        if torch._C._current_graph_task_id() == -1:
            self.forward += 1
        else:
            self.backward += 1

    def reset(self) -> None:
        self.forward = self.backward = self.solves = 0

    def remove(self) -> None:
        self.handle.remove()


_ACTIVE_SOLVE_COUNTERS: list[ZukoCounter] = []
_ZUKO_ODEINT = zuko.transforms.odeint


def _counting_odeint(*args: object, **kwargs: object) -> object:
    for counter in _ACTIVE_SOLVE_COUNTERS:
        counter.solves += 1
    return _ZUKO_ODEINT(*args, **kwargs)


zuko.transforms.odeint = _counting_odeint


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time several callables alternately (so drifting machine load hits all alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(timed(fns[name]))
    return times


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}" if seconds >= 0.01 else f"{1e3 * seconds:.2f}"


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------------
# Part 1: log_prob at matched accuracy
# --------------------------------------------------------------------------------------------


@dataclass
class Setting:
    lib: str  # "zuko" or "ours"
    label: str
    solver: Solver | None = None  # ours
    tol: tuple[float, float] | None = None  # zuko (atol, rtol)
    nfe: int = 0
    error: float = math.inf
    sweep_ms: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error <= TOLERANCE

    def spec(self) -> dict:
        s = self.solver
        if s is None:
            return {"atol": self.tol[0], "rtol": self.tol[1]}
        if s.adaptive:
            return {"method": s.method, "rtol": s.rtol, "atol": s.atol}
        return {"method": s.method, "steps": s.steps}


def zuko_grid(quick: bool) -> list[Setting]:
    pairs = (
        [(1e-5, 1e-4), (1e-6, 1e-5)]
        if quick
        else [(1e-4, 1e-3), (3e-5, 3e-4), (1e-5, 1e-4), (3e-6, 3e-5), (1e-6, 1e-5), (1e-7, 1e-6)]
    )
    return [Setting("zuko", f"atol={a:g} rtol={r:g}", tol=(a, r)) for a, r in pairs]


def ours_grid(quick: bool) -> list[Setting]:
    # float32: a CNF refuses an rtol below 1e-6 (under its resolution no step can meet it)
    tols = [1e-5, 1e-6] if quick else [1e-5, 3e-6, 1e-6]
    steps = [6, 10] if quick else [4, 6, 8, 10, 12, 16, 24]
    out = [
        Setting("ours", f"dopri5 rtol=atol={t:g}", solver=Solver("dopri5", rtol=t, atol=t))
        for t in tols
    ]
    out += [Setting("ours", f"rk4 steps={n}", solver=Solver("rk4", steps=n)) for n in steps]
    return out


def make_runner(
    s: Setting, zflow: zuko.flows.CNF, flow: CNF, base: dist.Distribution, x: torch.Tensor
) -> Callable[[], torch.Tensor]:
    """A call of ``log_prob(x)`` at setting ``s`` (the setting is applied on every call)."""
    if s.lib == "zuko":

        def run() -> torch.Tensor:
            return zuko_log_prob(set_zuko_tol(zflow, *s.tol), x)

        return run

    def run_ours() -> torch.Tensor:
        return ours_log_prob(set_solver(flow, s.solver), base, x)

    return run_ours


def part1(args: argparse.Namespace, results: dict) -> dict[int, dict[str, Setting]]:
    emit("\n## 1. `log_prob` of B=1000 points at matched accuracy\n")
    chosen: dict[int, dict[str, Setting]] = {}
    summary = []
    for d in (2, 10):
        zflow, field_ = build_pair(d, args.seed)
        zflow.eval()
        mismatch = field_mismatch(zflow, field_, d)
        assert mismatch < 1e-5, f"copied field differs from zuko's by {mismatch}"
        flow = CNF(d, field=field_).eval()
        x = torch.randn(BATCH, d, generator=torch.Generator().manual_seed(args.seed + d))
        base32, base64 = base_normal(d), base_normal(d, torch.float64)

        with torch.no_grad():
            ref_flow = set_solver(copy.deepcopy(flow).double(), REFERENCE_SOLVER)
            start = time.perf_counter()
            ref = ours_log_prob(ref_flow, base64, x.double())
            ref_s, ref_nfe = time.perf_counter() - start, ref_flow.stats.last_nfe
            z64 = set_zuko_tol(
                copy.deepcopy(zflow).double(), ZUKO_REFERENCE_TOL, ZUKO_REFERENCE_TOL
            )
            start = time.perf_counter()
            zref = zuko_log_prob(z64, x.double())
            zref_s = time.perf_counter() - start
            cross64 = float((zref - ref).abs().max())
            # float32 at tight tolerances on both sides (tighter stalls zuko's float32 solver:
            # it has no step budget)
            tight_z = zuko_log_prob(set_zuko_tol(copy.deepcopy(zflow), 1e-7, 1e-6), x)
            tight_o = ours_log_prob(
                set_solver(copy.deepcopy(flow), Solver("dopri5", rtol=1e-6, atol=1e-7)), base32, x
            )
            cross32 = float((tight_z - tight_o).abs().max())
        emit(
            f"d={d}: field mismatch {mismatch:.1e}; reference (ours, float64, dopri5 1e-10): "
            f"{ref_nfe} NFE, {ref_s:.1f} s; zuko float64 at tol 1e-10 vs reference: "
            f"max |diff| = {cross64:.1e} ({zref_s:.1f} s); float32 zuko (atol 1e-7, rtol 1e-6) vs "
            f"ours (dopri5 rtol 1e-6, atol 1e-7): "
            f"max |diff| = {cross32:.1e}; mean log p = {float(ref.mean()):.3f}"
        )
        assert cross64 < 1e-6, "zuko and pyro-cnf do not define the same density"
        assert cross32 < 1e-4, "zuko and pyro-cnf disagree at tight tolerances in float32"

        counter = ZukoCounter(zflow)
        settings = zuko_grid(args.quick) + ours_grid(args.quick)

        for s in settings:
            run = make_runner(s, zflow, flow, base32, x)
            with torch.no_grad():
                counter.reset()
                lp = run()
                s.nfe = counter.forward if s.lib == "zuko" else flow.stats.last_nfe
                s.error = float((lp.double() - ref).abs().max())
                if s.ok:
                    s.sweep_ms = 1e3 * med([timed(run) for _ in range(args.sweep_repeats)])

        rows = [
            [
                s.lib,
                s.label,
                s.nfe,
                f"{s.error:.1e}",
                "yes" if s.ok else "no",
                "" if s.sweep_ms is None else f"{s.sweep_ms:.1f}",
            ]
            for s in settings
        ]
        emit(
            f"\n### d = {d}: sweep (error vs float64 reference; time = median of "
            f"{args.sweep_repeats}, only for settings within {TOLERANCE:g})\n"
        )
        emit(table(["library", "setting", "NFE", "max error", "<= 2e-4", "time (ms)"], rows))

        best: dict[str, Setting] = {}
        for lib in ("zuko", "ours"):
            mine = [s for s in settings if s.lib == lib]
            passing = [s for s in mine if s.ok]
            if passing:
                # Within one library the cost per NFE is fixed (same d, B), so the fewest NFE is
                # the fastest setting; it is a far less noisy estimate than a few timings on a
                # shared machine. Ties go to the lower sweep time.
                best[lib] = min(passing, key=lambda s: (s.nfe, s.sweep_ms))
            else:  # nothing within tolerance (quick grids): most accurate, flagged
                best[lib] = min(mine, key=lambda s: s.error)
                emit(f"WARNING: no {lib} setting within {TOLERANCE:g} at d={d}")
        chosen[d] = best

        fns = {lib: make_runner(s, zflow, flow, base32, x) for lib, s in best.items()}
        with torch.no_grad():
            times = interleaved(fns, args.repeats, warmup=1)
        counter.remove()
        tz, to = med(times["zuko"]), med(times["ours"])
        z, o = best["zuko"], best["ours"]
        summary.append(
            [
                d,
                z.label,
                f"{1e3 * tz:.1f} ({1e3 * min(times['zuko']):.1f})",
                z.nfe,
                f"{z.error:.1e}",
                o.label,
                f"{1e3 * to:.1f} ({1e3 * min(times['ours']):.1f})",
                o.nfe,
                f"{o.error:.1e}",
                f"{tz / to:.2f}x",
            ]
        )
        results["part1"][d] = {
            "field_mismatch": mismatch,
            "reference_nfe": ref_nfe,
            "zuko64_vs_ref": cross64,
            "zuko32_vs_ours32_tight": cross32,
            "sweep": [
                {
                    "lib": s.lib,
                    "setting": s.label,
                    "nfe": s.nfe,
                    "error": s.error,
                    "sweep_ms": s.sweep_ms,
                }
                for s in settings
            ],
            "zuko": {"setting": z.label, "times_s": times["zuko"], "nfe": z.nfe, "error": z.error},
            "ours": {"setting": o.label, "times_s": times["ours"], "nfe": o.nfe, "error": o.error},
        }
    emit(
        f"\n### Summary: fastest setting within {TOLERANCE:g} (fewest NFE among those within "
        f"tolerance; time = median (min) of {args.repeats} calls, the two libraries interleaved)\n"
    )
    emit(
        table(
            [
                "d",
                "zuko setting",
                "zuko ms median (min)",
                "zuko NFE",
                "zuko error",
                "ours setting",
                "ours ms median (min)",
                "ours NFE",
                "ours error",
                "zuko / ours",
            ],
            summary,
        )
    )
    return chosen


# --------------------------------------------------------------------------------------------
# Part 2: one SVI step with a CNF guide
# --------------------------------------------------------------------------------------------


class Banana(dist.TorchDistribution):
    """Five independent 2-D bananas: a ~ N(0, 10), b | a ~ N(0.03 (a^2 - 100), 1); log Z = 0."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, dim: int = 10, scale: float = 10.0, curvature: float = 0.03) -> None:
        assert dim % 2 == 0
        self.dim, self.scale, self.curvature = dim, scale, curvature
        super().__init__(torch.Size(), torch.Size([dim]), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        a, b = value[..., 0::2], value[..., 1::2]
        mean_b = self.curvature * (a * a - self.scale**2)
        lp = (
            -0.5 * (a / self.scale) ** 2
            - math.log(self.scale)
            - 0.5 * (b - mean_b) ** 2
            - math.log(2 * math.pi)
        )
        return lp.sum(-1)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + (self.dim // 2,)
        a = self.scale * torch.randn(shape)
        b = self.curvature * (a * a - self.scale**2) + torch.randn(shape)
        return torch.stack((a, b), -1).flatten(-2)


def banana_model() -> None:
    pyro.sample("x", Banana(10))


def svi_case(
    args: argparse.Namespace,
    particles: int,
    zflow0: zuko.flows.CNF,
    field0: MLPField,
    zset: Setting,
    oset: Setting,
) -> tuple[dict[str, list[float]], dict[str, list[dict]]]:
    """Step times and per-step NFE of the three guides (zuko, ours, ours adjoint), interleaved."""
    d = field0.dim
    elbo_kw = (
        {}
        if particles == 1
        else {"num_particles": particles, "vectorize_particles": True, "max_plate_nesting": 0}
    )
    zflow = set_zuko_tol(copy.deepcopy(zflow0), *zset.tol)
    zcount = ZukoCounter(zflow)

    def zuko_guide() -> None:
        pyro.module("zflow", zflow)
        pyro.sample("x", ZukoToPyro(zflow()))

    def zuko_stats() -> dict:
        return {"fwd": zcount.forward, "bwd": zcount.backward, "solves": zcount.solves}

    def make_guide(flow: CNF, module: str) -> Callable[[], None]:
        base = base_normal(d)

        def guide() -> None:
            pyro.module(module, flow)
            pyro.sample("x", FlowDistribution(base, [flow]))

        return guide

    def make_stats(flow: CNF) -> Callable[[], dict]:
        def stats() -> dict:
            st = flow.stats
            return {
                "fwd": st.nfe_forward + st.nfe_inverse,
                "bwd": st.nfe_backward,
                "solves": st.forward_solves + st.inverse_solves,
                "inverse": st.inverse_solves,
            }

        return stats

    pyro.clear_param_store()
    steps = {
        "zuko": SVI(banana_model, zuko_guide, Adam({"lr": args.lr}), Trace_ELBO(**elbo_kw)).step
    }
    resets, stats = {"zuko": zcount.reset}, {"zuko": zuko_stats}
    # distinct module names: two flows under one name would share parameters
    for name, adjoint, module in (("ours", False, "cnf"), ("ours adjoint", True, "cnf_adjoint")):
        solver = Solver(**oset.spec(), adjoint=adjoint)
        flow = CNF(d, field=copy.deepcopy(field0), solver=solver, eval_solver=solver)
        guide = make_guide(flow, module)
        steps[name] = SVI(banana_model, guide, Adam({"lr": args.lr}), Trace_ELBO(**elbo_kw)).step
        resets[name], stats[name] = flow.stats.reset, make_stats(flow)

    times: dict[str, list[float]] = {name: [] for name in steps}
    per_step: dict[str, list[dict]] = {name: [] for name in steps}
    _ACTIVE_SOLVE_COUNTERS.append(zcount)
    try:
        for step in steps.values():
            for _ in range(args.svi_warmup):
                step()
        names = list(steps)
        for r in range(args.svi_repeats):
            for name in names if r % 2 == 0 else reversed(names):
                resets[name]()
                times[name].append(timed(steps[name]))
                per_step[name].append(stats[name]())
    finally:
        _ACTIVE_SOLVE_COUNTERS.remove(zcount)
        zcount.remove()
    return times, per_step


def part2(args: argparse.Namespace, results: dict, chosen: dict[str, Setting]) -> None:
    d = 10
    emit("\n## 2. One SVI step (Trace_ELBO, Adam) with a CNF guide, 10-D banana\n")
    zset, oset = chosen["zuko"], chosen["ours"]
    emit(f"zuko: {zset.label}; ours: {oset.label} (the d=10 matched-accuracy settings)\n")
    zflow0, field0 = build_pair(d, args.seed)
    rows = []
    for particles in (1, 64):
        times, per_step = svi_case(args, particles, zflow0, field0, zset, oset)
        tz = med(times["zuko"])
        for name in times:
            fwd = med([s["fwd"] for s in per_step[name]])
            bwd = med([s["bwd"] for s in per_step[name]])
            solves = med([s["solves"] for s in per_step[name]])
            t = med(times[name])
            label = zset.label if name == "zuko" else oset.label
            label += " adjoint" if "adjoint" in name else ""
            rows.append(
                [
                    particles,
                    name,
                    label,
                    f"{1e3 * t:.1f} ({1e3 * min(times[name]):.1f})",
                    f"{fwd:g}",
                    f"{bwd:g}",
                    f"{solves:g}",
                    f"{tz / t:.2f}x",
                ]
            )
            results["part2"].setdefault(str(particles), {})[name] = {
                "times_s": times[name],
                "per_step": per_step[name],
            }
    emit(
        table(
            [
                "particles",
                "guide",
                "setting",
                "step ms median (min)",
                "forward NFE",
                "backward NFE",
                "solves / step",
                "zuko / this",
            ],
            rows,
        )
    )
    emit(
        "\nforward NFE: field evaluations during the guide's solve(s); backward NFE: evaluations "
        "during `loss.backward()` (zuko's checkpointed adjoint re-runs its steps; our direct "
        "backprop makes none, our `adjoint=True` solves the adjoint ODE). Median over "
        f"{args.svi_repeats} steps after {args.svi_warmup} warm-up steps, interleaved."
    )


# --------------------------------------------------------------------------------------------
# Part 3: exact-trace overhead per function evaluation
# --------------------------------------------------------------------------------------------

EVALUATIONS = ("forward only", "fused exact", "autograd exact (loop)", "Hutchinson (1 probe)")


def field_costs(args: argparse.Namespace, d: int) -> dict:
    """Per-call seconds of each evaluation, scoring and training, and fused-vs-loop agreement."""
    torch.manual_seed(args.seed)
    field_ = MLPField(d, hidden_dims=HIDDEN, zero_init=False)
    t = torch.tensor(0.37)
    z0 = torch.randn(BATCH, d)
    z1 = z0.clone().requires_grad_(True)
    hutch, loop = Hutchinson(), Exact(fused=False)
    noise = hutch.init(z0)

    def evaluate(kind: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if kind == "forward only":
            return field_(t, z), None
        if kind == "fused exact":
            f, div, _ = field_.call_and_divergence(t, z)
        elif kind == "autograd exact (loop)":
            f, div, _ = loop(field_, t, z, None, None)
        else:
            f, div, _ = hutch(field_, t, z, None, noise)
        return f, div

    def scoring(kind: str) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                evaluate(kind, z0)

        return run

    def training(kind: str) -> Callable[[], None]:
        def run() -> None:
            field_.zero_grad(set_to_none=True)
            z1.grad = None
            f, div = evaluate(kind, z1)
            (f.sum() if div is None else f.sum() + div.sum()).backward()

        return run

    with torch.no_grad():
        fused = evaluate("fused exact", z0)[1]
        autograd = evaluate("autograd exact (loop)", z0)[1]
    out: dict = {"fused_vs_loop": float((fused - autograd).abs().max())}
    for mode, make in (("scoring (no_grad)", scoring), ("training (+ backward)", training)):
        out[mode] = per_call({kind: make(kind) for kind in EVALUATIONS}, args.micro_samples)
    return out


def part3(args: argparse.Namespace, results: dict) -> None:
    emit("\n## 3. Cost of one function evaluation with its divergence, B=1000\n")
    rows = []
    for d in (2, 10):
        res = field_costs(args, d)
        results["part3"][d] = res
        emit(f"d={d}: fused vs autograd divergence max |diff| = {res['fused_vs_loop']:.1e}")
        for mode in ("scoring (no_grad)", "training (+ backward)"):
            bare = med(res[mode]["forward only"])
            bare_min = min(res[mode]["forward only"])
            for kind in EVALUATIONS:
                m, lo = med(res[mode][kind]), min(res[mode][kind])
                rows.append(
                    [
                        d,
                        mode,
                        kind,
                        f"{ms(m)} ({ms(lo)})",
                        f"{m / bare:.2f}",
                        f"{lo / bare_min:.2f}",
                    ]
                )
    emit("")
    emit(
        table(
            [
                "d",
                "mode",
                "evaluation",
                "ms / call median (min)",
                "x forward only (median)",
                "x forward only (min)",
            ],
            rows,
        )
    )
    emit(
        f"\n{args.micro_samples} samples per evaluation, each the mean of enough calls to last "
        "~20 ms, the four evaluations taking turns. Training: backward of `f.sum() + div.sum()` "
        "(of `f.sum()` for the bare forward) to the parameters and to `z`."
    )


# --------------------------------------------------------------------------------------------
# Part 4: one training step, direct backprop vs adjoint, peak memory (fresh subprocesses)
# --------------------------------------------------------------------------------------------


def _training_step(q: FlowDistribution, flow: CNF, n: int) -> float:
    flow.zero_grad(set_to_none=True)
    flow.clear_cache()
    _, log_q = q.rsample_and_log_prob((n,))
    loss = -log_q.mean()
    loss.backward()
    return float(loss)


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _proc_status_kib("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def memory_worker(args: argparse.Namespace) -> None:
    """Run in a fresh process: one training step, report NFE and the rise of ru_maxrss."""
    torch.set_num_threads(args.threads)
    spec = json.loads(args.solver_spec)
    adjoint = args._memory_worker == "adjoint"
    d = 10
    _, field_ = build_pair(d, args.seed)
    solver = Solver(**spec, adjoint=adjoint)
    flow = CNF(d, field=field_, solver=solver, eval_solver=solver)
    q = FlowDistribution(base_normal(d), [flow])
    torch.manual_seed(args.seed)
    _training_step(q, flow, 8)  # lazy initialisation out of the way
    gc.collect()
    # Reset the kernel's high-water mark to the current RSS (Linux >= 4.0), so the peak read after
    # the step is the step's own, not the import's; else fall back to the rise of ru_maxrss.
    reset = _reset_peak_rss()
    before = _proc_status_kib("VmRSS") if reset else _maxrss_kib()
    flow.stats.reset()
    start = time.perf_counter()
    _training_step(q, flow, args.batch)
    elapsed = time.perf_counter() - start
    after = _proc_status_kib("VmHWM") if reset else _maxrss_kib()
    st = flow.stats
    out = {
        "nfe_forward": st.nfe_forward,
        "nfe_backward": st.nfe_backward,
        "forward_solves": st.forward_solves,
        "inverse_solves": st.inverse_solves,
        "rss_before_mib": before / 1024,
        "peak_rise_mib": (after - before) / 1024,
        "peak_method": "VmHWM after clear_refs" if reset else "ru_maxrss rise",
        "times_s": [elapsed],
    }
    for _ in range(args.worker_repeats):
        out["times_s"].append(timed(lambda: _training_step(q, flow, args.batch)))
    print("RESULT " + json.dumps(out), flush=True)


def part4(args: argparse.Namespace, results: dict, chosen: Setting) -> None:
    emit("\n## 4. One training step at d=10: direct backprop vs adjoint\n")
    emit(
        f"solver: {chosen.label}; loss = -mean log q of `rsample_and_log_prob`; each row a fresh "
        "process; peak = resident-memory high-water mark during the step minus the RSS before it "
        "(kernel peak reset through /proc/self/clear_refs; after a warm-up step of 8 points)\n"
    )
    rows = []
    batches = (1000, 4096)
    for batch in batches:
        for mode in ("direct", "adjoint"):
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--_memory-worker",
                mode,
                "--solver-spec",
                json.dumps(chosen.spec()),
                "--batch",
                str(batch),
                "--threads",
                str(args.threads),
                "--seed",
                str(args.seed),
                "--worker-repeats",
                str(args.worker_repeats),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                emit(f"worker failed ({mode}, B={batch}):\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(line[-1][len("RESULT ") :])
            results["part4"][f"{mode}-{batch}"] = r
            rows.append(
                [
                    batch,
                    mode,
                    r["nfe_forward"],
                    r["nfe_backward"],
                    f"{1e3 * med(r['times_s']):.0f}",
                    f"{r['peak_rise_mib']:.0f}",
                ]
            )
    emit(
        table(
            [
                "B",
                "gradient",
                "forward NFE",
                "backward NFE",
                "step ms (median)",
                "peak RSS rise (MiB)",
            ],
            rows,
        )
    )
    methods = {r.get("peak_method") for r in results["part4"].values()}
    emit(f"\npeak measured by: {', '.join(sorted(m for m in methods if m))}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def machine() -> str:
    return _machine(f"zuko {zuko.__version__}, torchdiffeq {torchdiffeq.__version__}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small grids and few repeats (sanity run)")
    p.add_argument("--parts", default="1234", help="which parts to run, e.g. 13 (default: all)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: stable on a shared 2-core machine)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=None, help="timed calls per final measurement")
    p.add_argument("--json", default=None, help="also write raw results to this file")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the SVI steps")
    # internal: the part-4 worker process
    p.add_argument(
        "--_memory-worker",
        dest="_memory_worker",
        choices=("direct", "adjoint"),
        help=argparse.SUPPRESS,
    )
    p.add_argument("--solver-spec", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=4096, help=argparse.SUPPRESS)
    p.add_argument("--worker-repeats", type=int, default=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.repeats = args.repeats or (3 if q else 15)
    args.sweep_repeats = 1 if q else 5
    args.svi_warmup = 1 if q else 3
    args.svi_repeats = 3 if q else 21
    args.micro_samples = 3 if q else 31
    if q and args._memory_worker is None:
        args.worker_repeats = 0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args._memory_worker:
        memory_worker(args)
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    emit(f"# pyro-cnf vs zuko CNF benchmark{' (quick)' if args.quick else ''}\n")
    command = " ".join(["python benchmarks/bench_cnf.py", *sys.argv[1:]])
    emit(f"command: `{command}`")
    emit(f"\nmachine: {machine()}")
    emit(f"field: MLP {HIDDEN}, tanh, {FREQUENCIES} time frequencies; float32 unless stated")
    results: dict = {
        "machine": machine(),
        "args": vars(args),
        "part1": {},
        "part2": {},
        "part3": {},
        "part4": {},
    }
    chosen = None
    if "1" in args.parts or "2" in args.parts or "4" in args.parts:
        chosen = part1(args, results) if "1" in args.parts else None
    if chosen is None and ("2" in args.parts or "4" in args.parts):
        # without part 1: the defaults measured on the reference machine
        chosen = {
            10: {
                "zuko": Setting("zuko", "atol=1e-6 rtol=1e-5", tol=(1e-6, 1e-5)),
                "ours": Setting("ours", "rk4 steps=8", solver=Solver("rk4", steps=8)),
            }
        }
    if "2" in args.parts:
        part2(args, results, chosen[10])
    if "3" in args.parts:
        part3(args, results)
    if "4" in args.parts:
        part4(args, results, chosen[10]["ours"])
    emit(f"\ntotal wall time: {time.perf_counter() - start:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
