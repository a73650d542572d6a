"""Every example script in smoke mode, standalone and through ``pyro-cnf run``, with its numbers.

Each script runs twice: as ``python examples/NAME.py --smoke --out DIR`` in a subprocess (the
way a reader runs it) and in-process as ``pyro-cnf run NAME --smoke --out DIR``. Both runs must
write the report, the figure and (with ArviZ) the InferenceData, and the report's numbers must
parse and agree with what is known exactly (reference log Z, bounds that hold for any guide).
"""

import ast
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch

from pyro_cnf import cli
from pyro_cnf.models import energy_u1, get_model

ROOT = Path(__file__).parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POSTERIOR = "eight_schools-eight_schools_noncentered"


def _has_arviz():
    try:
        import arviz  # noqa: F401
    except ImportError:
        return False
    return True


def _rows(report, names):
    """Whitespace-separated table rows of the report whose first cell is in ``names``."""
    rows = {}
    for line in report.splitlines():
        cells = line.split()
        if cells and cells[0] in names:
            rows[cells[0]] = cells[1:]
    return rows


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def _report(out):
    report = (out / "report.txt").read_text()
    assert "smoke run" in report.lower()
    return report


def _check_guides_against_exact(out, exact_log_z, focus_mean, focus_sd, figure):
    """The eight schools and funnel tables: KL, k-hat, ESS, log Z (IS) and the focus site."""
    rows = _rows(_report(out), {"AutoCNF", "AutoNormal", "exact"})
    assert set(rows) == {"AutoCNF", "AutoNormal", "exact"}
    exact = [float(cell) for cell in rows["exact"][3:9] if cell != "-"]
    assert exact[0] == pytest.approx(exact_log_z, abs=1e-3)
    assert exact[2:] == pytest.approx([focus_mean, focus_sd, focus_mean, focus_sd], abs=2e-3)
    for guide in ("AutoCNF", "AutoNormal"):
        kl, khat, ess, log_z, se, *moments, seconds = (float(cell) for cell in rows[guide])
        assert math.isfinite(kl) and kl > 0  # KL(q||p) = log Z - ELBO > 0 for a smoke fit
        assert not math.isnan(khat) and 1 <= ess <= 500
        # the importance estimate of log Z is at least the ELBO and (for S draws) near log Z
        assert exact_log_z - kl - 1e-6 <= log_z <= exact_log_z + 4 * se + 1e-3
        assert all(math.isfinite(m) for m in moments) and moments[1] > 0 and moments[3] > 0
        assert seconds >= 0
    assert _is_png(out / figure)
    if _has_arviz():
        for guide in ("AutoCNF", "AutoNormal"):
            assert (out / f"{guide}.nc").stat().st_size > 1000


def check_eight_schools(out):
    reference = get_model("eight_schools_centered").reference
    mean, sd = float(reference.mean["tau"]), float(reference.sd["tau"])
    _check_guides_against_exact(out, reference.log_Z, mean, sd, "eight_schools.png")
    report = _report(out)
    if _has_arviz():  # the InferenceData holds the guide's draws of every site
        import arviz as az

        idata = az.from_netcdf(str(out / "AutoCNF.nc"))
        assert idata.posterior["theta"].shape == (1, 500, 8)
        assert float(idata.posterior["tau"].min()) > 0
        assert "ArviZ summary of AutoCNF" in report


def check_funnel(out):
    _check_guides_against_exact(out, 0.0, 0.0, 3.0, "funnel.png")


def check_energies(out, targets=("banana", "u1", "u2", "u3", "u4")):
    rows = _rows(_report(out), set(targets))
    assert list(rows) == list(targets)
    names = {"banana": "banana", **{f"u{k}": f"energy_u{k}" for k in range(1, 5)}}
    for target, cells in rows.items():
        kl, khat, ess, log_z, se, log_z_exact, seconds = (float(cell) for cell in cells)
        assert log_z_exact == pytest.approx(get_model(names[target]).reference.log_Z, abs=1e-4)
        assert math.isfinite(kl) and kl > 0 and not math.isnan(khat) and 1 <= ess <= 500
        assert log_z_exact - kl - 1e-6 <= log_z  # the importance estimate is at least the ELBO
    assert _is_png(out / "energies.png")
    if _has_arviz():
        assert all((out / f"{target}.nc").is_file() for target in targets)


def check_logistic_regression(out):
    rows = _rows(_report(out), {"AutoCNF", "AutoNormal", "AutoMVN"})
    assert set(rows) == {"AutoCNF", "AutoNormal", "AutoMVN"}
    for cells in rows.values():
        elbo, log_z, se, khat, ess, mean_err, sd_err, accuracy, seconds = map(float, cells)
        assert math.isfinite(elbo) and elbo <= log_z + 1e-9  # ELBO <= log mean exp
        assert mean_err >= 0 and sd_err >= 0 and math.isfinite(mean_err + sd_err)
        assert 0.0 <= accuracy <= 1.0
    # AutoCNF starts at the Laplace approximation: after 20 steps it already classifies well
    assert float(rows["AutoCNF"][7]) > 0.85
    assert _is_png(out / "logistic_regression.png")


def check_conditional(out):
    report = _report(out)
    rows = _rows(report, {"untrained", "trained"})
    before, after = float(rows["untrained"][0]), float(rows["trained"][0])
    # the untrained flow is N(0, I): its KL to p(x|c) is known to be well above 0
    assert 0.3 < before < 1.5 and math.isfinite(after)
    # the exact entropy: H(x0) + E H(x1 | x0, c) = 0.5 log(2 pi e) + 0.5 log(2 pi e 0.25)
    exact = float(re.search(r"negative log-likelihood: exact ([\d.]+)", report).group(1))
    assert exact == pytest.approx(math.log(2 * math.pi * math.e) - math.log(2), abs=0.15)
    assert _is_png(out / "conditional.png")


def check_density_anomaly(out):
    keys = {"KL(p||q)", "target_FPR", "realised_FPR", "TPR", "ROC_AUC", "loc[0]"}
    rows = _rows(_report(out), keys)
    assert set(rows) == keys
    assert 0.1 < float(rows["KL(p||q)"][0]) < 20  # 20 steps leave q far from the 8 Gaussians
    assert float(rows["target_FPR"][0]) == 0.05
    # 500 held-out points set the threshold: the realised rate on 500 fresh ones is near 0.05
    assert 0.0 <= float(rows["realised_FPR"][0]) <= 0.15
    assert 0.0 <= float(rows["TPR"][0]) <= 1.0 and 0.0 <= float(rows["ROC_AUC"][0]) <= 1.0
    assert float(rows["loc[0]"][0]) == 1.0  # the true shift
    assert _is_png(out / "density_anomaly.png")


def check_distributed_density(out):
    keys = {"world_size", "steps", "val_nll", "true_nll", "rows_per_second"}
    rows = _rows(_report(out), keys)
    assert set(rows) == keys
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == int(rows["world_size"][0]) == 1
    assert result["steps"] == 300
    # 300 flow-matching steps on 8192 points: within half a nat of the true density's NLL
    assert 0 < result["val_nll"] - result["true_nll"] < 0.5
    assert float(rows["val_nll"][0]) == pytest.approx(result["val_nll"], rel=1e-5)


def check_many_groups(out):
    rows = _rows(_report(out), {"AutoAmortizedCNF", "AutoNormal"})
    assert set(rows) == {"AutoAmortizedCNF", "AutoNormal"}
    for cells in rows.values():
        numbers = [float(cell) for cell in cells]
        assert len(numbers) == 9
        assert all(x >= 0 for x in numbers[:6])  # errors and sd ratios
        assert numbers[2] >= numbers[3]  # the worst group's error bounds the mean error
        assert numbers[4] <= numbers[5]  # sd ratios: min <= max
    assert _is_png(out / "many_groups.png")


def check_posteriordb(out):
    from pyro_cnf.models import load_posteriordb

    reference = load_posteriordb(POSTERIOR).reference
    expected = {}  # quantity -> (reference mean, reference sd)
    for site, draws in reference.draws.items():
        mean, sd = reference.mean[site].reshape(-1), reference.sd[site].reshape(-1)
        for i in range(mean.numel()):
            expected[f"{site}[{i + 1}]" if draws.dim() > 2 else site] = (
                float(mean[i]),
                float(sd[i]),
            )
    assert {"mu", "tau", "theta[1]", "theta[8]"} <= set(expected)
    rows = _rows((out / "report.txt").read_text(), set(expected))
    assert set(rows) == set(expected)
    for key, cells in rows.items():
        numbers = [float(cell) for cell in cells]
        assert len(numbers) == 6 and all(math.isfinite(x) for x in numbers), cells
        assert numbers[:2] == pytest.approx(expected[key], rel=1e-3)  # printed to 4 digits
        assert numbers[3] > 0  # the guide's sd
        assert numbers[4] == pytest.approx(abs(numbers[2] - numbers[0]) / numbers[1], abs=2e-3)
    assert _is_png(out / "posteriordb.png")


CHECKS = {name[len("check_") :]: f for name, f in globals().items() if name.startswith("check_")}


def _options(name):
    if name != "posteriordb":
        return []
    folder = os.environ.get("PYRO_CNF_POSTERIORDB")
    if not (folder and Path(folder).is_dir()):
        if os.environ.get("CI"):
            pytest.fail(f"PYRO_CNF_POSTERIORDB ({folder!r}) does not name a folder on CI")
        pytest.skip("no posteriordb folder: set PYRO_CNF_POSTERIORDB")
    return ["--posterior", POSTERIOR]


def test_every_script_has_its_check():
    assert set(SCRIPTS) == set(CHECKS)
    assert {"eight_schools", "funnel", "energies", "posteriordb"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_is_short_and_uses_only_the_public_api(name):
    source = (ROOT / "examples" / f"{name}.py").read_text()
    assert len(source.splitlines()) <= 250
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro_cnf"):
            assert not any(part.startswith("_") for part in node.module.split("."))
            assert not any(alias.name.startswith("_") for alias in node.names), name
            assert not node.module.startswith("pyro_cnf.examples")
        if isinstance(node, ast.Import):
            assert not any(alias.name.startswith("pyro_cnf.") for alias in node.names)
    assert 'if __name__ == "__main__":' in source and "import matplotlib.pyplot" not in source
    for option in ("--smoke", "--out", "--seed", "--steps"):
        assert f'"{option}"' in source, option


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_standalone(name, tmp_path):
    options = _options(name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--smoke", *options]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert (tmp_path / "report.txt").read_text() in done.stdout + "\n"  # printed, then written
    CHECKS[name](tmp_path)


@pytest.mark.parametrize("name", SCRIPTS)
def test_pyro_cnf_run(name, tmp_path, capsys):
    extra = ["--targets", "banana,u1"] if name == "energies" else []
    assert cli.main(["run", name, "--smoke", "--out", str(tmp_path), *_options(name), *extra]) == 0
    assert "report.txt" in capsys.readouterr().out
    if name == "energies":
        check_energies(tmp_path, ("banana", "u1"))
    else:
        CHECKS[name](tmp_path)


def _script_namespace(name):
    """The script's functions, without running it (``__name__`` is not ``"__main__"``)."""
    import runpy

    return runpy.run_path(str(ROOT / "examples" / f"{name}.py"))


def test_eight_schools_quadrature_is_the_exact_answer():
    namespace = _script_namespace("eight_schools")
    y, sigma = torch.tensor(namespace["Y"]), torch.tensor(namespace["SIGMA"])
    exact = namespace["exact_answer"](y, sigma)
    reference = get_model("eight_schools_centered").reference  # the zoo's independent quadrature
    assert exact["log_Z"] == pytest.approx(reference.log_Z, abs=1e-6)
    assert exact["mean"] == pytest.approx(float(reference.mean["tau"]), abs=1e-6)
    assert exact["sd"] == pytest.approx(float(reference.sd["tau"]), abs=1e-6)
    coarse = namespace["exact_answer"](y, sigma, num=201)  # converged: halving the grid agrees
    assert coarse["log_Z"] == pytest.approx(exact["log_Z"], abs=1e-6)


def test_many_groups_exact_posterior_is_the_dense_gaussian_answer():
    """The closed forms of the example against a dense multivariate Normal computation."""
    exact_posterior = _script_namespace("many_groups")["exact_posterior"]
    y = 1.5 + torch.randn(6, 1) + torch.randn(6, 5)
    exact = exact_posterior(y)
    # all of (mu, theta, y) is jointly Gaussian: build its covariance and condition on y
    G, n = y.shape
    A = torch.zeros(1 + G + G * n, 1 + G + G * n)  # x = A @ independent standard normals
    A[0, 0] = 10.0  # mu
    A[1 : 1 + G, 0] = 10.0  # theta_i = mu + e_i
    A[1 : 1 + G, 1 : 1 + G] = torch.eye(G)
    rows = 1 + G + torch.arange(G * n)  # y_ij = theta_i + e_ij, row-major over (i, j)
    A[rows] = A[1 + torch.arange(G * n) // n]
    A[rows, rows] = 1.0
    cov = A @ A.T
    latent, observed = slice(0, 1 + G), slice(1 + G, None)
    gain = cov[latent, observed] @ torch.linalg.inv(cov[observed, observed])
    mean = gain @ y.reshape(-1)
    post = cov[latent, latent] - gain @ cov[observed, latent]
    assert float(exact["mu_mean"]) == pytest.approx(float(mean[0]), abs=1e-9)
    assert float(exact["mu_sd"]) == pytest.approx(float(post[0, 0].sqrt()), abs=1e-9)
    assert torch.allclose(exact["theta_mean"], mean[1:], atol=1e-9)
    assert torch.allclose(exact["theta_sd"], post.diagonal()[1:].sqrt(), atol=1e-9)
    log_z = dist.MultivariateNormal(torch.zeros(G * n), cov[observed, observed]).log_prob(
        y.reshape(-1)
    )
    assert float(exact["log_z"]) == pytest.approx(float(log_z), abs=1e-8)


def test_eight_schools_model_is_the_zoo_model():
    namespace = _script_namespace("eight_schools")
    y, sigma = torch.tensor(namespace["Y"]), torch.tensor(namespace["SIGMA"])
    zoo = get_model("eight_schools_centered")
    values = {k: v for k, v in zoo.reference.mean.items() if k in zoo.latent_sites}
    import pyro.poutine as poutine

    trace = poutine.trace(poutine.condition(namespace["model"], values)).get_trace(y, sigma)
    assert float(trace.log_prob_sum()) == pytest.approx(float(zoo.log_joint(values)), abs=1e-9)


def test_conditional_exact_log_prob_is_normalized():
    namespace = _script_namespace("conditional")
    g0, g1 = torch.linspace(-7, 7, 701), torch.linspace(-45, 45, 1801)
    x0, x1 = torch.meshgrid(g0, g1, indexing="ij")
    points = torch.stack([x0, x1], -1)
    for c in (-0.9, 0.0, 0.7):
        density = namespace["exact_log_prob"](points, torch.full((*x0.shape, 1), c)).exp()
        cell = (g0[1] - g0[0]) * (g1[1] - g1[0])
        assert float(density.sum() * cell) == pytest.approx(1.0, abs=1e-4)
    x, c = namespace["sample_data"](20_000)
    residual = (x[:, 1] - c[:, 0] * (x[:, 0] ** 2 - 1)) / 0.5
    assert float(residual.std()) == pytest.approx(1.0, abs=0.03)


def test_energies_targets_are_the_zoo_energies():
    namespace = _script_namespace("energies")
    assert namespace["TARGETS"]["u1"] is energy_u1
    assert set(namespace["TARGETS"]) == set(namespace["BOXES"])
