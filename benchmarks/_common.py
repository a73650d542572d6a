"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

import os
import platform
import subprocess

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
