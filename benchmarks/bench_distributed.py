"""Data-parallel density estimation: rows per second and held-out NLL on 1 and 2 processes.

Runs ``examples/distributed_density.py`` under ``torchrun --standalone --nproc_per_node N`` for
each N in ``--procs`` (flow matching, and maximum likelihood with a CNF solved by fixed-step
RK4), the same global batch for every N, one intra-op thread per process, alternating the
process counts ``--repeats`` times so a change in machine load hits all of them alike. Prints
one table: the median rows per second of training (validation excluded), the ratio to one
process, and the held-out NLL of the last repeat (the true density's NLL is the floor).

``OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "distributed_density.py"


def run(procs: int, extra: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", str(procs), str(EXAMPLE), "--out", out, "--no-progress"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(command + extra, check=True, env=env, capture_output=True)
        return json.loads((Path(out) / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setups = {
        "flow matching, batch 4096": ["--steps", "300", "--batch-size", "4096"],
        "maximum likelihood (RK4, 8 steps), batch 4096": [
            *("--mle", "--steps", "20", "--batch-size", "4096", "--num-val", "1000")
        ],
    }
    print(machine("one intra-op thread per process, gloo"))
    print()
    print("| fit | processes | rows / s (median) | ratio to 1 process | held-out NLL | true NLL |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, extra in setups.items():
        rates: dict[int, list[float]] = {n: [] for n in args.procs}
        last: dict[int, dict[str, object]] = {}
        for _ in range(args.repeats):
            for n in args.procs:
                last[n] = run(n, extra)
                rates[n].append(float(last[n]["rows_per_second"]))  # type: ignore[arg-type]
        base = statistics.median(rates[args.procs[0]])
        for n in args.procs:
            rate = statistics.median(rates[n])
            print(
                f"| {name} | {n} | {rate:,.0f} | {rate / base:.2f} | "
                f"{last[n]['val_nll']:.3f} | {last[n]['true_nll']:.3f} |"
            )


if __name__ == "__main__":
    main()
