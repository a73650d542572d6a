"""Shared test settings: float64 by default (``--dtype float32`` to override), a fixed seed per test.

A module or test marked ``float64`` runs in float64 whatever ``--dtype`` says (its comparisons
are tighter than float32's resolution).
"""

import pyro
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--dtype", default="float64", choices=["float32", "float64"])


@pytest.fixture(autouse=True)
def _numerics(request):
    previous = torch.get_default_dtype()
    dtype = "float64" if request.node.get_closest_marker("float64") else None
    torch.set_default_dtype(getattr(torch, dtype or request.config.getoption("--dtype")))
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    torch.set_default_dtype(previous)
