"""pyro_cnf.reference: moments against a reference posterior in its sds, the overlaid pair plot.

Exact answers: draws of known normal distributions, and a conjugate Normal model whose
importance-corrected draws recover the exact posterior.
"""

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")  # headless

import arviz as az  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_arviz import Y, normal_guide, normal_model, posterior  # noqa: E402, F401  (the conjugate model)

import pyro_cnf  # noqa: E402
from pyro_cnf import to_inference_data  # noqa: E402
from pyro_cnf._arviz_compat import arviz_major  # noqa: E402
from pyro_cnf.reference import compare_to_reference  # noqa: E402

EXTRA = r'pip install "pyro-cnf\[arviz\]"'

ARVIZ_1 = arviz_major() >= 1


def from_posterior(**variables):
    """InferenceData (0.x) or DataTree (1.x) with a posterior group only."""
    if ARVIZ_1:
        return az.from_dict({"posterior": variables})
    return az.from_dict(posterior=variables)


# ------------------------------------------------------------------------- optional dependency


def test_exported_at_the_root_and_importing_does_not_import_arviz():
    assert pyro_cnf.compare_to_reference is compare_to_reference
    code = (
        "import sys, pyro_cnf, pyro_cnf.reference\n"
        "from pyro_cnf import compare_to_reference\n"
        "assert 'arviz' not in sys.modules and 'matplotlib' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_calls_without_arviz_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # makes `import arviz` fail
    with pytest.raises(ImportError, match=EXTRA):
        compare_to_reference(object(), object())


# ------------------------------------------------------------------------------ the comparison


def test_compare_to_reference_measures_errors_in_reference_sds(tmp_path):
    rng = np.random.default_rng(0)
    ref = from_posterior(a=rng.normal(1.0, 2.0, (4, 5000)), b=rng.normal(0.0, 1.0, (4, 5000, 2)))
    ours = from_posterior(
        a=rng.normal(1.5, 3.0, (1, 20_000)),  # mean off by 0.25 sd, sd 50 % too large
        b=rng.normal(0.0, 1.0, (1, 20_000, 2)),
    )
    table = compare_to_reference(ours, ref, pair_plot=tmp_path / "pair.png")
    assert list(table.index) == ["a", "b[0]", "b[1]"]
    assert table.loc["a", "mean_error"] == pytest.approx(0.25, abs=0.05)
    assert table.loc["a", "sd_error"] == pytest.approx(0.5, abs=0.05)
    assert table.loc[["b[0]", "b[1]"], ["mean_error", "sd_error"]].abs().max().max() < 0.05
    assert (tmp_path / "pair.png").stat().st_size > 1000


def test_weighted_comparison_uses_the_importance_correction():
    m, s = posterior(Y)
    data = to_inference_data(normal_model, normal_guide(1.0, 1.5), num_samples=20_000, seed=0)
    rng = np.random.default_rng(1)
    reference = from_posterior(mu=rng.normal(m, s, (4, 10_000)))
    raw = compare_to_reference(data, reference)
    corrected = compare_to_reference(data, reference, weighted=True)
    assert raw.loc["mu", "mean_error"] == pytest.approx(1.0, abs=0.05)
    assert raw.loc["mu", "sd_error"] == pytest.approx(0.5, abs=0.05)
    assert abs(corrected.loc["mu", "mean_error"]) < 0.05
    assert abs(corrected.loc["mu", "sd_error"]) < 0.05


def test_bad_input_gives_clear_errors():
    vi = to_inference_data(normal_model, normal_guide(), num_samples=50, seed=0)
    reference = az.load_arviz_data("non_centered_eight")
    with pytest.raises(ValueError, match="reference's posterior has no variable 'theta_tilde'"):
        compare_to_reference(
            reference, reference, var_names=["theta_t"], names={"theta_t": "theta_tilde"}
        )
    with pytest.raises(ValueError, match="has 1 elements but the reference's 'theta' has 8"):
        compare_to_reference(vi, reference, names={"mu": "theta"})
