"""Benchmark every flow of the registry against the same composition of Pyro's transforms.

Run by hand (not a test)::

    python benchmarks/bench_discrete.py            # full run, ~3 minutes on 2 shared CPU cores
    python benchmarks/bench_discrete.py --quick    # sanity run, ~80 s

Timings use one torch thread by default (``--threads``; also set ``OMP_NUM_THREADS=1``): the
reference machine is a shared 2-core VM, where competing OpenMP threads make timings meaningless.

For each name in ``flow_names()`` the script builds ``make_flow(name, 10)`` (each factory's
default options) and, where Pyro has the same layers, the same stack from Pyro's own factories
(``affine_coupling``, ``permute``, ``affine_autoregressive``, ``spline_coupling``, ...) in a
``ComposeTransformModule``, with every layer's ``state_dict`` copied from ours (so both sides are
the same function). Stacks without a Pyro equivalent are compared to the nearest Pyro
composition, or timed alone. Then:

1. Checks: outputs, log-dets and inverses of the two sides on the same points (they must agree
   when the weights were copied), our round trip ``inv(flow(x))``, and each side's log-det
   against ``log|det|`` of the autograd Jacobian, in float64 with every parameter moved away
   from its initial value (``--perturb``).
2. Timings at d=10, B=1000, float32, of three calls:

   * sampling, no grad: ``y = flow(x); flow.log_abs_det_jacobian(x, y)`` under ``no_grad``;
   * sampling, training: the same with grad, then ``(y.sum() + ladj.sum()).backward()``;
   * scoring, no grad: ``x = flow.inv(y); flow.log_abs_det_jacobian(x, y)`` under ``no_grad``.

   Every call gets a new input tensor (16 tensors, cycled, so no transform cache can answer).
   The two sides take turns sample by sample; each sample averages enough calls to last about
   ``--target-ms`` (one call when a call is slower), after warm-up calls. The tables give the
   median (and min) per-call time, points per second and the ratio ours / Pyro. The scoring
   calls of naf and bnaf (a bisection inverse, about 50 s per 1000 points for bnaf) use a batch
   of ``--bisect-batch`` points instead, so that the whole run stays near 3 minutes.

Every table is printed as markdown; ``--json PATH`` also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.distributions.transforms as T
import torch
from _common import machine as _machine
from _common import per_call
from pyro.distributions.torch_transform import ComposeTransformModule
from torch import Tensor, nn
from torch.distributions import Transform

from pyro_cnf.transforms import InverseTransformModule, flow_names, flow_spec, make_flow
from pyro_cnf.transforms.stacks import Permutation

DIM = 10
BATCH = 1000
POOL = 16  # distinct input tensors per timed call, cycled
MODES = ("sample", "train", "score")
MODE_TITLES = {
    "sample": "Sampling direction, no grad: `y = flow(x); flow.log_abs_det_jacobian(x, y)`",
    "train": "Sampling direction, training: the same with grad, then `backward()`",
    "score": "Scoring direction, no grad: `x = flow.inv(y); flow.log_abs_det_jacobian(x, y)`",
}

# name -> Pyro factory of one layer, called with the input dim (Pyro's defaults are ours)
PYRO_LAYER: dict[str, Callable[..., Transform]] = {
    "realnvp": T.affine_coupling,
    "glow": T.affine_coupling,  # nearest: the couplings only (Pyro has no ActNorm, no vector LU)
    "maf": T.affine_autoregressive,  # nearest: used through `.inv`
    "iaf": T.affine_autoregressive,
    "nsf_coupling": T.spline_coupling,
    "nsf_autoregressive": T.spline_autoregressive,
    "planar": T.planar,
    "radial": T.radial,
    "householder": T.householder,
    # our Sylvester layers use one reflection for Q, Pyro's factory defaults to d // 2 + 1
    "sylvester": lambda d: T.sylvester(d, count_transforms=1),
    "naf": T.neural_autoregressive,
    "bnaf": T.block_autoregressive,
}
SIDES = ("ours", "pyro")
# stacks whose Pyro twin is another function of the same weights
OTHER_MAP = {"glow", "sylvester"}  # glow: no ActNorm / LU layers; sylvester: other factor order
# Pyro layers whose `_inverse` only answers from the cache (a KeyError for any other point)
PYRO_NO_INVERSE = {"planar", "radial", "sylvester", "naf", "bnaf"}
NOTES = {
    "realnvp": "`affine_coupling` + `permute`",
    "glow": "nearest: `affine_coupling` + `permute` (Pyro has no ActNorm / vector LU linear)",
    "maf": "nearest: `affine_autoregressive(...).inv` + `permute` (Pyro has no MAF layer)",
    "iaf": "`affine_autoregressive` + `permute`",
    "nsf_coupling": "`spline_coupling` + `permute`",
    "nsf_autoregressive": "`spline_autoregressive` + `permute`",
    "planar": "`planar` (no inverse)",
    "radial": "`radial` (no inverse)",
    "householder": "`householder`",
    "sylvester": "`sylvester` + `permute` (no inverse; different factor order, see text)",
    "naf": "`neural_autoregressive` + `permute` (no inverse)",
    "bnaf": "`block_autoregressive` + `permute` (no inverse)",
    "hybrid": "no Pyro equivalent (RealNVP + CNF)",
    "cnf": "no Pyro equivalent (bench_cnf.py compares it with zuko)",
}


# --------------------------------------------------------------------------------------------
# Building the pairs
# --------------------------------------------------------------------------------------------


@dataclass
class Pair:
    name: str
    ours: Transform
    ours_params: list[Tensor]
    pyro: Transform | None = None
    pyro_params: list[Tensor] = field(default_factory=list)
    same_map: bool = False  # the Pyro side is the same function: outputs must agree
    pyro_inverse: bool = False
    ours_inverse: bool = True
    layers: str = ""


def core_of(part: Transform) -> Transform:
    """The Pyro layer inside one of our layers (our wrappers keep it as ``module``/``transform``)."""
    if isinstance(part, InverseTransformModule):
        return part.module
    inner = getattr(part, "transform", None)
    return inner if isinstance(inner, Transform) and isinstance(inner, nn.Module) else part


def unique_params(modules: list[nn.Module]) -> list[Tensor]:
    seen: dict[int, Tensor] = {}
    for m in modules:
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def count(params: list[Tensor]) -> int:
    return sum(p.numel() for p in params)


def layer_summary(flow: Transform) -> str:
    parts = getattr(flow, "parts", [flow])
    names = [type(p).__name__ for p in parts if not isinstance(p, Permutation)]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return " + ".join(f"{k} x{v}" for k, v in counts.items())


def pyro_twin(name: str, ours: Transform) -> tuple[Transform, list[Tensor]] | None:
    """Pyro's composition for our stack ``ours``, every layer's weights copied from ours.

    Layers are built by Pyro's factories in torch's default dtype, then ``load_state_dict``
    copies our values in. Returns the composition and its parameters (Pyro's ``.inv`` of a
    module is not a module, so the composition does not list them all itself), or None.
    """
    factory = PYRO_LAYER.get(name)
    if factory is None:
        return None
    parts: list[Transform] = []
    modules: list[nn.Module] = []
    for part in ours.parts:
        if isinstance(part, Permutation):
            parts.append(T.permute(DIM, part.permutation.clone()))
            continue
        core = core_of(part)
        if name == "glow" and not isinstance(core, T.AffineCoupling):
            continue  # ActNorm, LULinear: nothing in Pyro
        layer = factory(DIM)
        if not isinstance(core, type(layer)):
            raise TypeError(f"{name}: our layer {type(core).__name__} is not a {type(layer)}")
        layer.load_state_dict(core.state_dict())
        modules.append(layer)
        if name == "glow" and parts:
            parts.append(T.permute(DIM, torch.arange(DIM - 1, -1, -1)))
        parts.append(layer.inv if name == "maf" else layer)
    return ComposeTransformModule(parts), unique_params(modules)


def build_pair(name: str, seed: int) -> Pair:
    torch.manual_seed(seed)
    ours = make_flow(name, DIM)
    pair = Pair(
        name,
        ours,
        list(ours.parameters()),
        ours_inverse=flow_spec(name).inverse != "none",
        layers=layer_summary(ours),
    )
    twin = pyro_twin(name, ours)
    if twin is not None:
        pair.pyro, pair.pyro_params = twin
        pair.same_map = name not in OTHER_MAP
        pair.pyro_inverse = name not in PYRO_NO_INVERSE
    return pair


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def nan_max(values: list[float]) -> float:
    return float("nan") if any(v != v for v in values) else max(values)


def max_diff(a: Tensor, b: Tensor) -> float:
    return nan_max([(a - b).abs().max().item()])


def perturbed_double(flow: Transform, seed: int, scale: float) -> Transform:
    """A float64 copy of ``flow``, every parameter moved away from its initial value.

    Each parameter gets Gaussian noise of standard deviation ``scale`` times its RMS (at least
    0.1, so that zero-initialised layers, such as the CNF's output, move too).
    """
    flow = copy.deepcopy(flow).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            size = max(p.square().mean().sqrt().item(), 0.1)
            p.add_(scale * size * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


def autograd_ladj_error(flow: Transform, points: Tensor) -> float:
    """max over points of |flow's log-det - log|det J|| with J from autograd, in float64."""
    errors = []
    for x in points:
        x = x.unsqueeze(0)
        jac = torch.autograd.functional.jacobian(lambda v: flow(v), x).reshape(DIM, DIM)
        reference = torch.linalg.slogdet(jac).logabsdet
        x = x.clone()
        with torch.no_grad():
            y = flow(x)
            ladj = flow.log_abs_det_jacobian(x, y).reshape(())
        errors.append((ladj - reference).abs().item())
    return nan_max(errors)


def check_pair(pair: Pair, args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.check_points, DIM, generator=gen)
    out: dict = {}
    with torch.no_grad():
        y = pair.ours(x)
        ladj = pair.ours.log_abs_det_jacobian(x, y)
        y_data = y.clone()  # not the cached output: the inverse really runs
        if pair.ours_inverse:
            x_back = pair.ours.inv(y_data)
            out["roundtrip"] = max_diff(x_back, x)
            ladj_inv = pair.ours.log_abs_det_jacobian(x_back, y_data)
        if pair.pyro is not None and pair.same_map:
            x2 = x.clone()
            y2 = pair.pyro(x2)
            out["dy"] = max_diff(y2, y)
            out["dladj"] = max_diff(pair.pyro.log_abs_det_jacobian(x2, y2), ladj)
            if pair.pyro_inverse:
                y3 = y_data.clone()
                x3 = pair.pyro.inv(y3)
                out["dx_inv"] = max_diff(x3, x_back)
                out["dladj_inv"] = max_diff(pair.pyro.log_abs_det_jacobian(x3, y3), ladj_inv)
        elif pair.name == "sylvester":
            out["dy"] = max_diff(pair.pyro(x.clone()), y)  # same weights, other map
    # log-dets against autograd, away from the initialisation, in float64 (float64 is also
    # torch's default dtype meanwhile: Pyro's AffineAutoregressive._inverse, the forward map of
    # maf, builds its work tensor with torch.zeros and no dtype, and fails on float64 otherwise)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours = perturbed_double(pair.ours, args.seed + 3, args.perturb)
        points = x[: args.jac_points].double()
        out["jac_ours"] = autograd_ladj_error(ours, points)
        twin = pyro_twin(pair.name, ours)
        if twin is not None:
            out["jac_pyro"] = autograd_ladj_error(twin[0], points)
    finally:
        torch.set_default_dtype(default)
    cnf = next((p for p in getattr(pair.ours, "parts", [pair.ours]) if hasattr(p, "stats")), None)
    if cnf is not None:  # evaluations per solve of the CNF part, at its initialisation
        cnf.stats.reset()
        with torch.no_grad():
            pair.ours(torch.randn(BATCH, DIM, generator=gen))
        out["nfe"] = cnf.stats.last_nfe
    return out


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def make_call(flow: Transform, params: list[Tensor], mode: str, pool: list[Tensor]) -> Callable:
    inputs = itertools.cycle(pool)

    if mode == "sample":

        def call() -> None:
            x = next(inputs)
            with torch.no_grad():
                y = flow(x)
                flow.log_abs_det_jacobian(x, y)

    elif mode == "train":

        def call() -> None:
            x = next(inputs)
            for p in params:
                p.grad = None
            y = flow(x)
            ladj = flow.log_abs_det_jacobian(x, y)
            (y.sum() + ladj.sum()).backward()

    else:

        def call() -> None:
            y = next(inputs)
            with torch.no_grad():
                x = flow.inv(y)
                flow.log_abs_det_jacobian(x, y)

    return call


def time_pair(pair: Pair, args: argparse.Namespace) -> dict[str, dict]:
    gen = torch.Generator().manual_seed(args.seed + 2)
    results: dict[str, dict] = {}
    for mode in MODES:
        batch = BATCH
        if mode == "score" and flow_spec(pair.name).inverse == "bisection":
            batch = args.bisect_batch  # ~50 s per call at B=1000 for bnaf
        # fresh tensors for every mode: a transform cache must never answer
        pool = [torch.randn(batch, DIM, generator=gen) for _ in range(POOL)]
        if mode == "score":
            with torch.no_grad():  # data: the flow's own samples, as new tensors
                pool = [pair.ours(x).clone() for x in pool]
        fns = {}
        if mode != "score" or pair.ours_inverse:
            fns["ours"] = make_call(pair.ours, pair.ours_params, mode, pool)
        if pair.pyro is not None and (mode != "score" or pair.pyro_inverse):
            fns["pyro"] = make_call(pair.pyro, pair.pyro_params, mode, pool)
        times = per_call(fns, args.repeats, args.target_ms / 1e3, args.warmup) if fns else {}
        results[mode] = {
            "batch": batch,
            "samples": times,
            **{side: statistics.median(times[side]) if side in times else None for side in SIDES},
        }
    return results


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    value = 1e3 * seconds
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def rate(seconds: float | None, batch: int = BATCH) -> str:
    if seconds is None:
        return "—"
    points = batch / seconds
    if points >= 1e6:
        return f"{points / 1e6:.2f} M"
    return f"{points / 1e3:.0f} k" if points >= 1e4 else f"{points:.0f}"


def sci(value: float | None) -> str:
    if value is None:
        return "—"
    return "NaN" if value != value else f"{value:.0e}" if value else "0"


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(text: str = "") -> None:
    print(text, flush=True)


def machine() -> str:
    return _machine(git_state())


def git_state() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"working tree on top of {head}" if dirty else f"commit {head}"


def check_table(pairs: list[Pair], checks: dict[str, dict]) -> str:
    rows = []
    for pair in pairs:
        c = checks[pair.name]
        if pair.pyro is None:
            weights = "—"
        elif pair.same_map:
            weights = "copied"
        elif pair.name == "glow":
            weights = "couplings copied; other layers"
        else:
            weights = "copied; other map"
        rows.append(
            [
                pair.name,
                weights,
                sci(c.get("dy")),
                sci(c.get("dladj")),
                sci(c.get("dx_inv")),
                sci(c.get("dladj_inv")),
                sci(c.get("jac_ours")),
                sci(c.get("jac_pyro")),
                sci(c.get("roundtrip")),
            ]
        )
    return table(
        [
            "stack",
            "Pyro weights",
            "max abs Δy",
            "max abs Δ log-det",
            "max abs Δx (inverse)",
            "max abs Δ log-det (inverse)",
            "ours: log-det vs autograd (perturbed)",
            "Pyro: log-det vs autograd (perturbed)",
            "ours: round trip",
        ],
        rows,
    )


def param_table(pairs: list[Pair]) -> str:
    rows = []
    for pair in pairs:
        rows.append(
            [
                pair.name,
                pair.layers,
                f"{count(pair.ours_params):,}",
                flow_spec(pair.name).inverse,
                NOTES.get(pair.name, "no Pyro equivalent"),
                f"{count(pair.pyro_params):,}" if pair.pyro is not None else "—",
            ]
        )
    return table(
        [
            "stack",
            "our layers",
            "params (ours)",
            "our inverse",
            "Pyro composition",
            "params (Pyro)",
        ],
        rows,
    )


def timing_table(pairs: list[Pair], timings: dict[str, dict], mode: str) -> str:
    rows = []
    for pair in pairs:
        t = timings[pair.name][mode]
        ours, theirs, batch = t["ours"], t["pyro"], t["batch"]
        best = {side: min(t["samples"][side]) for side in t["samples"]}
        if ours is not None and theirs is not None:
            ratio = f"**{ours / theirs:.2f}** ({best['ours'] / best['pyro']:.2f})"
        elif pair.pyro is None:
            ratio = "no Pyro equivalent"
        elif ours is None and theirs is None:
            ratio = "neither has an inverse"
        elif theirs is None:
            ratio = "Pyro: no inverse"
        else:
            ratio = "ours: no inverse"
        label = pair.name if batch == BATCH else f"{pair.name} (B={batch})"
        rows.append(
            [
                label,
                f"{ms(ours)} ({ms(best.get('ours'))})" if ours is not None else "—",
                rate(ours, batch),
                f"{ms(theirs)} ({ms(best.get('pyro'))})" if theirs is not None else "—",
                rate(theirs, batch),
                ratio,
            ]
        )
    return table(
        [
            "stack",
            "ours ms, median (min)",
            "ours points/s",
            "Pyro ms, median (min)",
            "Pyro points/s",
            "ours / Pyro, median (min)",
        ],
        rows,
    )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few repeats and short samples (sanity)")
    p.add_argument(
        "--flows", default=None, help="comma-separated subset of flow_names() (default: all)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: stable on a shared 2-core machine)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=None, help="timed samples per side (>= 7)")
    p.add_argument("--target-ms", type=float, default=None, help="length of one timed sample")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per side and mode")
    p.add_argument("--check-points", type=int, default=128, help="points of the output checks")
    p.add_argument("--jac-points", type=int, default=None, help="points of the autograd check")
    p.add_argument(
        "--perturb",
        type=float,
        default=0.5,
        help="relative std of the noise added to every parameter before the autograd check",
    )
    p.add_argument(
        "--bisect-batch",
        type=int,
        default=None,
        help="batch of the scoring timings of naf/bnaf (bisection inverse; default 100)",
    )
    p.add_argument("--json", default=None, help="also write raw results to this file")
    args = p.parse_args(argv)
    q = args.quick
    args.repeats = args.repeats or (3 if q else 9)
    args.target_ms = args.target_ms or (10.0 if q else 40.0)
    args.bisect_batch = args.bisect_batch or (20 if q else 100)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.jac_points = args.jac_points or (2 if q else 8)
    names = flow_names()
    args.names = names if args.flows is None else args.flows.split(",")
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        p.error(f"unknown flows {unknown}; valid: {', '.join(names)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    emit(f"# Discrete flows vs Pyro's transforms{' (quick)' if args.quick else ''}\n")
    emit(f"command: `{' '.join(['python benchmarks/bench_discrete.py', *sys.argv[1:]])}`")
    emit(f"\nmachine: {machine()}")
    emit(
        f"\nd={DIM}, B={BATCH}, float32, each factory's defaults; median of {args.repeats} "
        f"interleaved samples of ~{args.target_ms:g} ms after {args.warmup} warm-up calls; "
        f"naf/bnaf scoring at B={args.bisect_batch}"
    )
    pairs = [build_pair(name, args.seed) for name in args.names]
    emit("\n## Stacks\n")
    emit(param_table(pairs))

    checks = {}
    for pair in pairs:
        checks[pair.name] = check_pair(pair, args)
    emit(
        f"\n## Checks\n\nours vs Pyro and round trip: {args.check_points} points, float32, the "
        f"initial weights; log-det vs log|det J| of the autograd Jacobian: {args.jac_points} "
        f"points, float64, every parameter + {args.perturb:g} x its RMS x N(0, 1) noise\n"
    )
    emit(check_table(pairs, checks))
    for pair in pairs:
        if "nfe" in checks[pair.name]:
            emit(f"\n{pair.name}: {checks[pair.name]['nfe']} field evaluations per forward solve")

    timings = {}
    for pair in pairs:
        t0 = time.perf_counter()
        timings[pair.name] = time_pair(pair, args)
        print(f"  [{pair.name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    for mode in MODES:
        emit(f"\n## {MODE_TITLES[mode]}\n")
        emit(timing_table(pairs, timings, mode))
    emit(f"\ntotal wall time: {time.perf_counter() - start:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        results = {
            "machine": machine(),
            "args": vars(args),
            "params": {p.name: [count(p.ours_params), count(p.pyro_params)] for p in pairs},
            "checks": checks,
            "timings": timings,
        }
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
