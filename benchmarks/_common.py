"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

import os
import platform
import subprocess
import time
from collections.abc import Callable

import pyro
import torch

import pyro_cnf


def cpu_model() -> str:
    """The CPU model name as lscpu reports it."""
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def machine(extra: str = "") -> str:
    """One line naming the machine and the versions measured."""
    return (
        f"{cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), pyro-ppl {pyro.__version__}, "
        f"pyro-cnf {pyro_cnf.__version__}, Python {platform.python_version()}"
        + (f", {extra}" if extra else "")
    )


def per_call(
    fns: dict[str, Callable[[], object]], samples: int, target_s: float = 0.02, warmup: int = 1
) -> dict[str, list[float]]:
    """Per-call seconds of several callables, sampled alternately (ABBA order).

    The first call of each is untimed and sizes its samples: each sample averages enough calls
    to last about ``target_s`` (one call when a call is slower). Calls slower than a second get
    no further warm-up. The callables then take turns sample by sample, so that a change in
    machine load hits all of them alike.
    """
    inner = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
        if first < 1.0:
            for _ in range(warmup - 1):
                fn()
            start = time.perf_counter()
            fn()
            first = time.perf_counter() - start
        inner[name] = max(1, round(target_s / max(first, 1e-6)))
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(samples):
        for name in names if r % 2 == 0 else reversed(names):
            fn, n = fns[name], inner[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            out[name].append((time.perf_counter() - start) / n)
    return out
