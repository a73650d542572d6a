"""Shared test settings: float64 by default (``--dtype float32`` to override), a fixed seed per test."""

import pyro
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--dtype", default="float64", choices=["float32", "float64"])


@pytest.fixture(autouse=True)
def _numerics(request):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, request.config.getoption("--dtype")))
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    torch.set_default_dtype(previous)
