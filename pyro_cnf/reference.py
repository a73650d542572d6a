r"""Compare a posterior with a reference one: moments in reference sds, an overlaid pair plot.

:func:`compare_to_reference` takes two InferenceData (or ArviZ 1.x DataTrees), the result (e.g.
from :func:`~pyro_cnf.to_inference_data`, optionally importance-weighted) and a reference (e.g.
NUTS draws), and tabulates, for every scalar parameter, the difference of the means and of the
sds in units of the reference sd. It can save a pair plot of both, drawn with matplotlib directly
(ArviZ's pair plot moved to arviz-plots in 1.x with another API).

ArviZ, pandas and matplotlib are imported lazily, as in :mod:`pyro_cnf.arviz`; install them with
``pip install "pyro-cnf[arviz]"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._arviz_compat import group, require
from .arviz import pareto_smooth

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["compare_to_reference"]


def _flat_draws(posterior: Any, var: str) -> tuple[np.ndarray, list[str]]:
    """``(N, P)`` draws of one variable with its element labels (``theta[0]``, ``L[1,0]``)."""
    array = posterior[var]
    extra = [d for d in array.dims if d not in ("chain", "draw")]
    array = array.transpose("chain", "draw", *extra)
    shape = tuple(array.sizes[d] for d in extra)
    values = np.asarray(array.values, dtype=np.float64).reshape(-1, math.prod(shape))
    labels = (
        [var] if not shape else [f"{var}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]
    )
    return values, labels


def _weighted_moments(values: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, ...]:
    if weights is None:
        return values.mean(0), values.std(0, ddof=1)
    mean = weights @ values
    return mean, np.sqrt(weights @ (values - mean) ** 2)


def _pair_plot(
    labels: Sequence[str],
    draws: np.ndarray,
    reference: np.ndarray,
    path: str | os.PathLike[str],
    max_points: int = 1000,
) -> None:
    """An overlaid pair plot (reference vs result) saved to ``path``.

    Drawn with matplotlib directly: ArviZ's pair plot moved to arviz-plots in 1.x with another
    API, and one small implementation serves every ArviZ version.
    """
    figure_module = require("matplotlib.figure")
    k = len(labels)
    fig = figure_module.Figure(figsize=(2.2 * k + 1, 2.2 * k), layout="constrained")
    axes = np.atleast_2d(fig.subplots(k, k, squeeze=False))

    def thin(values: np.ndarray) -> np.ndarray:
        step = max(1, values.shape[0] // max_points)
        return values[::step]

    ref, ours = thin(reference), thin(draws)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if j > i:
                ax.set_axis_off()
                continue
            if i == j:
                bins = np.histogram_bin_edges(np.concatenate([reference[:, i], draws[:, i]]), 40)
                ax.hist(reference[:, i], bins=bins, density=True, histtype="step", color="C0")
                ax.hist(draws[:, i], bins=bins, density=True, histtype="step", color="C1")
                ax.set_yticks([])
            else:
                ax.scatter(ref[:, j], ref[:, i], s=3, alpha=0.3, color="C0", linewidths=0)
                ax.scatter(ours[:, j], ours[:, i], s=3, alpha=0.3, color="C1", linewidths=0)
            if i == k - 1:
                ax.set_xlabel(labels[j])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i])
    handles = [
        axes[0, 0].plot([], [], color="C0", label="reference")[0],
        axes[0, 0].plot([], [], color="C1", label="result")[0],
    ]
    fig.legend(handles=handles, loc="outside upper right")
    fig.savefig(os.fspath(path), format="png", dpi=80)


def compare_to_reference(
    data: Any,
    reference: Any,
    *,
    var_names: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
    weighted: bool = False,
    pair_plot: str | os.PathLike[str] | None = None,
    pair_plot_params: Sequence[str] | None = None,
) -> pd.DataFrame:
    r"""Compare posterior means and sds with a reference posterior, in units of the reference sd.

    For every scalar parameter (each element of each variable):

    .. math::
        \mathtt{mean\_error} = \frac{\bar\theta - \bar\theta_\mathrm{ref}}{\mathrm{sd}_\mathrm{ref}},
        \qquad
        \mathtt{sd\_error} = \frac{\mathrm{sd} - \mathrm{sd}_\mathrm{ref}}{\mathrm{sd}_\mathrm{ref}}.

    Arguments:
        data: The result, e.g. from :func:`~pyro_cnf.to_inference_data`.
        reference: Reference InferenceData, e.g. NUTS draws (all chains pooled).
        var_names: Variables of ``data`` to compare (default: those whose reference names are
            in both posteriors).
        names: Reference names of ``data``'s variables where they differ, ``{ours: theirs}``.
        weighted: Weight ``data``'s draws by their Pareto-smoothed importance weights
            (``sample_stats.log_weight``): the importance-corrected posterior.
        pair_plot: Where to save an overlaid pair plot (PNG) of reference and result.
        pair_plot_params: Parameter labels to plot (default: the first 8).

    Returns:
        A ``pandas.DataFrame`` indexed by parameter label (``mu``, ``theta[0]``, ...) with
        columns ``mean``, ``mean_ref``, ``sd``, ``sd_ref``, ``mean_error``, ``sd_error``.

    Raises:
        ValueError: If a variable is missing from either posterior or the shapes differ.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyro_cnf import to_inference_data
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> def shifted():  # a guide off by 0.1 sd
        ...     pyro.sample("x", dist.Normal(0.1, 1.0))
        >>> def exact():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> options = {"num_samples": 8000, "log_likelihood": False}
        >>> ours = to_inference_data(model, shifted, seed=0, **options)
        >>> reference = to_inference_data(model, exact, seed=1, **options)
        >>> table = compare_to_reference(ours, reference)
        >>> abs(float(table.loc["x", "mean_error"]) - 0.1) < 0.05
        True
    """
    require("arviz")
    pandas = require("pandas")
    names = dict(names or {})
    ours = group(data, "posterior", "the result needs a posterior group")
    theirs = group(reference, "posterior", "the reference needs a posterior group")
    if var_names is None:
        var_names = [v for v in ours.data_vars if names.get(v, v) in theirs.data_vars]
        if not var_names:
            raise ValueError("the result and the reference share no posterior variable")
    weights = None
    if weighted:
        stats = group(data, "sample_stats", "weighted=True needs sample_stats.log_weight")
        if "log_weight" not in stats.data_vars:
            raise ValueError("weighted=True needs sample_stats.log_weight")
        log_w, _ = pareto_smooth(
            np.asarray(stats["log_weight"].transpose("chain", "draw").values).reshape(-1)
        )
        weights = np.exp(log_w)
        weights /= weights.sum()
    columns: dict[str, list[np.ndarray]] = {"ours": [], "ref": []}
    labels: list[str] = []
    for var in var_names:
        ref_var = names.get(var, var)
        if var not in ours.data_vars:
            raise ValueError(f"the result's posterior has no variable {var!r}")
        if ref_var not in theirs.data_vars:
            raise ValueError(f"the reference's posterior has no variable {ref_var!r}")
        values, var_labels = _flat_draws(ours, var)
        ref_values, _ = _flat_draws(theirs, ref_var)
        if values.shape[1] != ref_values.shape[1]:
            raise ValueError(
                f"{var!r} has {values.shape[1]} elements but the reference's {ref_var!r} has "
                f"{ref_values.shape[1]}"
            )
        columns["ours"].append(values)
        columns["ref"].append(ref_values)
        labels.extend(var_labels)
    draws, ref_draws = np.concatenate(columns["ours"], 1), np.concatenate(columns["ref"], 1)
    mean, sd = _weighted_moments(draws, weights)
    mean_ref, sd_ref = _weighted_moments(ref_draws, None)
    table = pandas.DataFrame(
        {
            "mean": mean,
            "mean_ref": mean_ref,
            "sd": sd,
            "sd_ref": sd_ref,
            "mean_error": (mean - mean_ref) / sd_ref,
            "sd_error": (sd - sd_ref) / sd_ref,
        },
        index=pandas.Index(labels, name="parameter"),
    )
    if pair_plot is not None:
        plotted = list(pair_plot_params) if pair_plot_params is not None else labels[:8]
        unknown = [p for p in plotted if p not in labels]
        if unknown or len(plotted) < 1:
            raise ValueError(f"pair_plot_params must be among {labels}, got {plotted}")
        index = [labels.index(p) for p in plotted]
        if weights is not None:  # plot the importance-corrected posterior: resample the draws
            rng = np.random.default_rng(0)
            draws = draws[rng.choice(draws.shape[0], size=draws.shape[0], p=weights)]
        _pair_plot(plotted, draws[:, index], ref_draws[:, index], pair_plot)
    return table
