"""Density estimation: flow matching against maximum likelihood for the same CNF, same run.

Parts (``--parts`` selects, default all):

1. Time to accuracy on 2-D 8 Gaussians: a CNF trained by maximum likelihood (plain and RNODE)
   and the same CNF trained by flow matching (rectified flow) run *interleaved* in one process:
   each trainer runs in its own thread and they pass a baton every ``--slice`` seconds, so all
   see the same machine load. Each records its validation NLL against the seconds spent in its
   own training steps (validation excluded). Target: the best validation NLL of the
   maximum-likelihood runs + 0.05 nats; the table gives each trainer's time to reach it.
2. Quality and straightness: KL(p || q) from ``--kl-draws`` draws of p with exact log p and exact
   log q, and the evaluations (NFE) of an adaptive dopri5 solve, for rectified flow, OT-CFM and
   one reflow step (and the maximum-likelihood CNFs of part 1).
3. A 10-D Gaussian mixture fitted by rectified flow: KL(p || q).
4. Anomaly detection: thresholds for target false-positive rates from held-out normal points,
   realised FPR on fresh normal points, TPR and ROC AUC against anomalies.

Training runs in float32 (faster than float64 here); scoring for KL uses the same float32 flow with
dopri5 at rtol = atol = 1e-5 and a per-point error norm (about 1e-4 nats of solver error).

Run with one intra-op thread on a shared machine: ``OMP_NUM_THREADS=1 python
benchmarks/bench_density.py --json benchmarks/results/bench_density.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from _common import machine

from pyro_cnf import (
    CNF,
    AnomalyDetector,
    MLPField,
    Solver,
    eight_gaussians,
    fit_density,
    fit_flow_matching,
    gaussian_mixture,
    reflow,
)

EVAL = Solver("dopri5", rtol=1e-5, atol=1e-5, norm="max")
LOOSE = Solver("dopri5", rtol=1e-3, atol=1e-3, norm="max")


class Baton:
    """Round-robin turns between threads: whoever holds the baton trains; the rest wait."""

    def __init__(self, names: list[str], slice_s: float) -> None:
        self.order = list(names)
        self.turn = 0
        self.slice_s = slice_s
        self.cond = threading.Condition()
        self.since = time.perf_counter()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.order[self.turn % len(self.order)] == name)
            self.since = time.perf_counter()

    def tick(self, name: str) -> None:
        if time.perf_counter() - self.since < self.slice_s or len(self.order) == 1:
            return
        with self.cond:
            self.turn = (self.order.index(name) + 1) % len(self.order)
            self.cond.notify_all()
        self.wait(name)

    def done(self, name: str) -> None:
        with self.cond:
            index = self.order.index(name)
            self.order.remove(name)
            if self.order:
                self.turn = index % len(self.order)
            self.cond.notify_all()


def make_cnf(dim: int, hidden: int, regularization: tuple[str, ...] = ()) -> CNF:
    field = MLPField(dim, (hidden, hidden, hidden), "silu")
    return CNF(dim, field=field, eval_solver=EVAL, regularization=regularization)


@torch.no_grad()
def kl_and_nfe(p, result, num_draws: int, chunk: int = 10_000) -> dict:
    """KL(p || q) +- se from draws of p, and the NFE of scoring and sampling 4096 points."""
    q = result.distribution
    (flow,) = q.transforms
    flow.eval()
    x = p.sample((num_draws,))
    gaps = torch.cat(
        [
            p.log_prob(x[i : i + chunk]) - q.log_prob(x[i : i + chunk])
            for i in range(0, num_draws, chunk)
        ]
    )
    flow.stats.reset()
    q.log_prob(x[:4096])
    nfe_score = flow.stats.nfe_inverse
    flow.stats.reset()
    x0 = q.base_dist.sample((4096,))
    x1 = flow(x0)
    nfe_sample = flow.stats.nfe_forward
    loose = CNF(flow.input_dim, field=flow.field, T=flow.T, eval_solver=LOOSE).eval()
    loose(x0)
    flow.train()
    gaps = gaps.double()
    return {
        "kl": float(gaps.mean()),
        "kl_se": float(gaps.std() / math.sqrt(num_draws)),
        "nfe_log_prob": nfe_score,
        "nfe_sample": nfe_sample,
        "nfe_sample_loose": loose.stats.nfe_forward,
        "euler_1": euler_error(flow, x0, x1, 1),
        "euler_4": euler_error(flow, x0, x1, 4),
    }


def euler_error(flow, x0, x1, steps: int) -> float:
    """Mean distance between k Euler steps of the field and the dopri5 map (0 for straight paths)."""
    x, dt = x0, flow.T / steps
    for k in range(steps):
        x = x + dt * flow.field(torch.full((len(x), 1), k * dt), x)
    return float((x - x1).norm(dim=-1).mean())


def time_to(result, target: float) -> float | None:
    for nll, seconds in zip(result.val_nll, result.val_train_time, strict=True):
        if nll <= target:
            return seconds
    return None


MLE_VARIANTS = ("mle", "mle_ema", "mle_rnode")


def part1(args, p, data, val) -> dict:
    """Interleaved MLE (plain, EMA, RNODE) and flow matching; time to the best MLE + 0.05."""
    flows = {name: make_cnf(2, args.hidden) for name in ("mle", "mle_ema", "fm")}
    flows["mle_rnode"] = make_cnf(2, args.hidden, ("kinetic", "jacobian"))
    for flow in flows.values():  # the same initial field for everyone
        flow.field.load_state_dict(flows["fm"].field.state_dict())
    options = {
        "mle": {},
        "mle_ema": {"ema_decay": 0.99},
        "mle_rnode": {"regularization_weight": args.rnode},
    }
    runs: dict[str, Callable[[Callable], object]] = {}
    for name in MLE_VARIANTS:
        runs[name] = lambda cb, name=name: fit_density(
            flows[name],
            data,
            val_data=val,
            num_steps=args.mle_steps,
            batch_size=args.mle_batch,
            lr=args.mle_lr,
            eval_every=args.mle_eval_every,
            progress=False,
            callback=cb,
            **options[name],
        )
    runs["fm"] = lambda cb: fit_flow_matching(
        flows["fm"],
        data,
        val_data=val,
        num_steps=args.fm_steps,
        batch_size=args.fm_batch,
        lr=args.fm_lr,
        eval_every=args.fm_eval_every,
        progress=False,
        callback=cb,
    )
    budget = dict.fromkeys(MLE_VARIANTS, args.mle_budget) | {"fm": math.inf}
    baton = Baton(list(runs), args.slice)
    results, errors = {}, {}

    def worker(name: str) -> None:
        baton.wait(name)
        try:

            def callback(result) -> bool:
                baton.tick(name)
                return result.train_time > budget[name]

            results[name] = runs[name](callback)
        except Exception as error:  # noqa: BLE001 - reported below
            errors[name] = error
        finally:
            baton.done(name)

    threads = [threading.Thread(target=worker, args=(name,)) for name in runs]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"training failed: {errors}")
    best_mle = min(results[n].best_val_nll for n in MLE_VARIANTS)
    target = best_mle + 0.05
    entropy = float(-p.log_prob(val).double().mean())
    out = {"wall_s": wall, "val_entropy": entropy, "best_mle_val_nll": best_mle, "target": target}
    for name, result in results.items():
        out[name] = {
            "steps": result.num_steps,
            "train_s": result.train_time,
            "ms_per_step": 1000 * result.train_time / result.num_steps,
            "best_val_nll": result.best_val_nll,
            "time_to_target_s": time_to(result, target),
            "curve": list(
                zip(result.val_steps, result.val_train_time, result.val_nll, strict=True)
            ),
        }
    mle_times = [out[n]["time_to_target_s"] for n in MLE_VARIANTS]
    mle_time = min(t for t in mle_times if t is not None)
    fm_time = out["fm"]["time_to_target_s"]
    out["speedup"] = None if fm_time is None else mle_time / fm_time
    out["results"] = results  # dropped before writing JSON
    return out


def rectified_2d(args, data, val, **overrides):
    """Flow matching of a fresh 2-D CNF with the rectified-flow settings of part 1."""
    options = {
        "val_data": val,
        "num_steps": args.fm_steps,
        "batch_size": args.fm_batch,
        "lr": args.fm_lr,
        "eval_every": args.fm_eval_every,
        "progress": False,
    } | overrides
    return fit_flow_matching(make_cnf(2, args.hidden), data, **options)


def part2(args, p, data, val, fm_result) -> tuple[dict, object]:
    """KL and NFE: rectified flow and OT-CFM at the same settings, and reflow of part 1's flow."""
    out = {}
    if fm_result is None:
        fm_result = rectified_2d(args, data, val)
    out[f"rectified (batch {args.fm_batch})"] = kl_and_nfe(p, fm_result, args.kl_draws) | {
        "train_s": fm_result.train_time
    }
    for coupling, label in (("independent", "rectified"), ("ot", "OT-CFM")):
        result = rectified_2d(
            args, data, val, coupling=coupling, batch_size=args.ot_batch, lr=args.ot_lr
        )
        out[f"{label} (batch {args.ot_batch})"] = kl_and_nfe(p, result, args.kl_draws) | {
            "train_s": result.train_time
        }
    (rectified_flow,) = fm_result.distribution.transforms
    rectified_flow.clear_cache()
    result = reflow(
        copy.deepcopy(rectified_flow),  # refit a copy: part 4 uses the rectified flow
        args.reflow_pairs,
        val_data=val,
        num_steps=args.reflow_steps,
        batch_size=args.fm_batch,
        lr=args.reflow_lr,
        eval_every=args.fm_eval_every,
        progress=False,
    )
    out[f"reflow of rectified (batch {args.fm_batch})"] = kl_and_nfe(p, result, args.kl_draws) | {
        "train_s": result.train_time
    }
    return out, fm_result


def part3(args) -> dict:
    p = gaussian_mixture(10)
    data, val = p.sample((args.train_size,)), p.sample((2000,))
    result = fit_flow_matching(
        make_cnf(10, args.hidden_10d),
        data,
        val_data=val,
        num_steps=args.fm_steps_10d,
        batch_size=args.fm_batch,
        lr=args.fm_lr_10d,
        eval_every=args.fm_eval_every_10d,
        progress=False,
    )
    entropy = float(-p.log_prob(val).mean())
    return kl_and_nfe(p, result, args.kl_draws) | {
        "train_s": result.train_time,
        "entropy": entropy,
        "best_val_nll": result.best_val_nll,
    }


def part4(args, p, distribution) -> list[dict]:
    """Thresholds from held-out normal points; realised FPR on fresh ones; anomalies uniform on a box.

    The exact density p, scored the same way, gives the best TPR and ROC AUC any density could.
    """
    held_out, fresh = p.sample((args.calibration,)), p.sample((args.fresh,))
    box = torch.distributions.Uniform(torch.full((2,), -6.0), torch.full((2,), 6.0))
    anomalies = box.sample((args.fresh,))
    rows = []
    for name, density in (("flow", distribution), ("exact p", p)):
        detector = AnomalyDetector(density)
        for target in (0.01, 0.05, 0.1):
            detector.fit_threshold(held_out, target_fpr=target)
            report = detector.evaluate(fresh, anomalies)
            rows.append({"density": name} | report.__dict__)
    return rows


def print_part1(one: dict) -> None:
    print(
        "\n## 1. Time to a validation NLL within 0.05 nats of the best MLE CNF "
        f"({one['wall_s']:.0f} s interleaved)"
    )
    print(
        f"validation entropy of p: {one['val_entropy']:.4f}; best MLE val NLL "
        f"{one['best_mle_val_nll']:.4f}; target {one['target']:.4f}"
    )
    print("| trainer | steps | ms/step | training s | best val NLL | best - H | s to target |")
    print("|---|---|---|---|---|---|---|")
    for name in (*MLE_VARIANTS, "fm"):
        r = one[name]
        t = r["time_to_target_s"]
        print(
            f"| {name} | {r['steps']} | {r['ms_per_step']:.1f} | {r['train_s']:.1f} | "
            f"{r['best_val_nll']:.4f} | {r['best_val_nll'] - one['val_entropy']:.4f} | "
            f"{'-' if t is None else f'{t:.1f}'} |"
        )
    print(f"speedup (fastest MLE time to target / flow-matching time): {one['speedup']:.1f}x")


def print_quality(two: dict, draws: int) -> None:
    print(
        f"\n## 2. 8 Gaussians: KL(p||q) from {draws} draws of p; NFE of dopri5 on 4096 points "
        "(rtol = atol = 1e-5 unless stated)"
    )
    print(
        "Euler k steps: mean distance from k Euler steps of the field to the dopri5 map of 4096 "
        "base draws (0 for straight paths)"
    )
    print(
        "| model | KL (nats) | ± se | NFE log_prob | NFE sample | NFE sample at 1e-3 | "
        "Euler 1 step | Euler 4 steps | training s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in two.items():
        train = f"{r['train_s']:.1f}" if "train_s" in r else "(part 1)"
        print(
            f"| {name} | {r['kl']:.4f} | {r['kl_se']:.4f} | {r['nfe_log_prob']} | "
            f"{r['nfe_sample']} | {r['nfe_sample_loose']} | {r['euler_1']:.3f} | "
            f"{r['euler_4']:.3f} | {train} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="1234")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks that it runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--hidden-10d", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--mle-steps", type=int, default=5000)
    parser.add_argument("--mle-budget", type=float, default=300.0, help="training s per MLE run")
    parser.add_argument("--mle-batch", type=int, default=256)
    parser.add_argument("--mle-lr", type=float, default=1e-2)
    parser.add_argument("--mle-eval-every", type=int, default=10)
    parser.add_argument("--rnode", type=float, default=0.01)
    parser.add_argument("--fm-steps", type=int, default=5000)
    parser.add_argument("--fm-batch", type=int, default=1024)
    parser.add_argument("--fm-lr", type=float, default=1e-2)
    parser.add_argument("--fm-eval-every", type=int, default=50)
    parser.add_argument("--ot-batch", type=int, default=256)
    parser.add_argument("--ot-lr", type=float, default=3e-3)
    parser.add_argument("--fm-steps-10d", type=int, default=10_000)
    parser.add_argument("--fm-lr-10d", type=float, default=3e-3)
    parser.add_argument("--fm-eval-every-10d", type=int, default=1000)
    parser.add_argument("--reflow-pairs", type=int, default=20_000)
    parser.add_argument("--reflow-steps", type=int, default=3000)
    parser.add_argument("--reflow-lr", type=float, default=3e-3)
    parser.add_argument("--kl-draws", type=int, default=100_000)
    parser.add_argument("--calibration", type=int, default=5000)
    parser.add_argument("--fresh", type=int, default=20_000)
    parser.add_argument("--slice", type=float, default=0.5, help="seconds per interleaved turn")
    args = parser.parse_args()
    if args.quick:
        args.mle_steps, args.mle_budget, args.fm_steps, args.fm_steps_10d = 30, 10.0, 300, 300
        args.reflow_steps, args.kl_draws, args.train_size = 100, 4000, 4000
        args.mle_eval_every, args.fm_eval_every, args.fm_eval_every_10d = 10, 100, 100
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    pyro.set_rng_seed(args.seed)
    print(machine("float32 training"))
    p = eight_gaussians()
    data, val = p.sample((args.train_size,)), p.sample((2000,))
    report: dict = {"machine": machine(), "args": vars(args) | {"json": str(args.json)}}
    fm_result = None
    if "1" in args.parts:
        one = part1(args, p, data, val)
        results = one.pop("results")
        fm_result = results["fm"]
        report["time_to_accuracy"] = one
        print_part1(one)
        report["mle_quality"] = {n: kl_and_nfe(p, results[n], args.kl_draws) for n in MLE_VARIANTS}
    if "2" in args.parts:
        two, fm_result = part2(args, p, data, val, fm_result)
        two |= report.get("mle_quality", {})
        report["quality_8gaussians"] = two
        print_quality(two, args.kl_draws)
    if "3" in args.parts:
        three = part3(args)
        report["gaussian_mixture_10d"] = three
        print(
            f"\n## 3. 10-D Gaussian mixture (5 components), rectified flow: KL {three['kl']:.4f} "
            f"± {three['kl_se']:.4f} nats (entropy {three['entropy']:.3f}), NFE log_prob "
            f"{three['nfe_log_prob']}, training {three['train_s']:.1f} s"
        )
    if "4" in args.parts:
        if fm_result is None:
            fm_result = rectified_2d(args, data, None)
        four = part4(args, p, fm_result.distribution)
        report["anomaly"] = four
        print(
            "\n## 4. Anomaly detection: 8 Gaussians (rectified flow) against uniform on "
            f"[-6, 6]^2; {args.calibration} held-out normal points set the threshold; "
            f"{args.fresh} fresh normal and {args.fresh} anomalous points"
        )
        print("| density | target FPR | realised FPR | off by (points) | TPR | ROC AUC |")
        print("|---|---|---|---|---|---|")
        for r in four:
            off = 100 * abs(r["fpr"] - r["target_fpr"])
            print(
                f"| {r['density']} | {r['target_fpr']:.2f} | {r['fpr']:.4f} | {off:.2f} | "
                f"{r['tpr']:.4f} | {r['roc_auc']:.4f} |"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
