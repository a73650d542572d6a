"""The lazy imports of ArviZ and its dependencies, and every piece that depends on its version.

ArviZ 0.x and the 1.x line (arviz-base, arviz-stats) differ in ``from_dict``'s signature, the sign
convention of ``psislw``, custom groups and the ELPD container: each difference is one function
here, keyed on the installed major version. Used by :mod:`pyro_cnf.arviz` and
:mod:`pyro_cnf.reference`; nothing here imports ArviZ at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EXTRA = 'pip install "pyro-cnf[arviz]"'


def require(module: str) -> Any:
    """Import ``module`` (ArviZ or one of its dependencies), naming the extra when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} is required for pyro_cnf.arviz but could not be imported ({error}); "
            f"install it with: {EXTRA}"
        ) from error


def arviz_major() -> int:
    """The installed ArviZ major version (0 for the 0.x line, 1 for the arviz-base/stats line)."""
    return int(str(require("arviz").__version__).split(".")[0])


def psislw(log_weights: np.ndarray, r_eff: float) -> tuple[np.ndarray, np.ndarray]:
    """ArviZ's PSIS along the last axis: normalized smoothed log-weights and Pareto k."""
    if arviz_major() >= 1:
        array_stats = require("arviz_stats.base").array_stats
        # arviz-stats 1.x expects log-likelihoods and negates its input (LOO ratios are 1/p(y_i|θ)):
        # the log-weights go in negated, or the fit lands on the wrong tail.
        try:
            smoothed, khat = array_stats.psislw(-log_weights, r_eff=r_eff, axis=-1)
        except ValueError as error:  # no tail to fit: answer as ArviZ 0.x does
            message = str(error)
            if "n_draws_tail" in message:  # too few draws
                k = np.inf
            elif "tail values are the same" in message:  # equal weights: set by the caller
                k = np.inf
            else:
                raise
            normalizer = np.logaddexp.reduce(log_weights, axis=-1, keepdims=True)
            smoothed, khat = log_weights - normalizer, np.full(log_weights.shape[:-1], k)
    else:
        smoothed, khat = require("arviz").psislw(log_weights, reff=r_eff)
    return np.asarray(smoothed, dtype=np.float64), np.asarray(khat, dtype=np.float64)


def from_dict(
    groups: dict[str, dict[str, np.ndarray]],
    coords: Mapping[str, Any] | None,
    dims: Mapping[str, Sequence[str]] | None,
    attrs: dict[str, Any],
) -> Any:
    """ArviZ's ``from_dict``: keyword groups in 0.x, one nested dict in 1.x."""
    coords = dict(coords) if coords is not None else None
    dims = {k: list(v) for k, v in dims.items()} if dims is not None else None
    if arviz_major() >= 1:
        return require("arviz_base").from_dict(
            groups, coords=coords, dims=dims, attrs={"/": attrs, "posterior": dict(attrs)}
        )
    return require("arviz").from_dict(
        **groups, coords=coords, dims=dims, attrs=attrs, posterior_attrs=dict(attrs)
    )


def add_group(data: Any, name: str, dataset: Any) -> Any:
    """Attach an ``xarray.Dataset`` as a custom group."""
    if arviz_major() >= 1:
        data[name] = require("xarray").DataTree(dataset)
    else:
        data.add_groups({name: dataset})
    return data


def elpd_data(
    *,
    elpd: float,
    se: float,
    p_loo: float,
    n_samples: int,
    n_data_points: int,
    warning: bool,
    good_k: float,
    elpd_i: Any,
    pareto_k: Any,
) -> Any:
    """ArviZ's ELPD container (a ``pandas.Series`` in 0.x, a dataclass in 1.x)."""
    if arviz_major() >= 1:
        fields = {
            "elpd": elpd,
            "se": se,
            "p": p_loo,
            "n_samples": n_samples,
            "n_data_points": n_data_points,
            "scale": "log",
            "warning": warning,
            "good_k": good_k,
            "elpd_i": elpd_i,
            "pareto_k": pareto_k,
            "approx_posterior": True,
        }
        utils = require("arviz_stats.utils")
        loo_class = getattr(utils, "ELPDDataLOO", None)  # arviz-stats >= 1.3: one class per kind
        if loo_class is not None:
            return loo_class(**fields)
        return utils.ELPDData(kind="loo", **fields)
    container = require("arviz.stats").ELPDData
    return container(
        data=[
            elpd,
            se,
            p_loo,
            n_samples,
            n_data_points,
            warning,
            elpd_i,
            pareto_k,
            "log",
            good_k,
        ],
        index=[
            "elpd_loo",
            "se",
            "p_loo",
            "n_samples",
            "n_data_points",
            "warning",
            "loo_i",
            "pareto_k",
            "scale",
            "good_k",
        ],
    )


def group(data: Any, name: str, hint: str) -> Any:
    """One group of an InferenceData (0.x) or DataTree (1.x), or a clear error."""
    try:
        return data[name]
    except KeyError:
        raise ValueError(f"the data has no {name!r} group: {hint}") from None
