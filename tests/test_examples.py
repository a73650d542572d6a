"""Every example in smoke mode, the ``pyro-cnf`` command, and its handling of bad input.

The examples run in-process through ``main(argv)`` (a subprocess would pay the imports again);
the console script and ``python -m pyro_cnf`` are checked once each in a subprocess.
"""

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_cnf import cli
from pyro_cnf.examples import example_names, load_example
from pyro_cnf.models import get_model

ROOT = Path(__file__).parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(name, tmp_path, *options):
    out = tmp_path / name
    status = load_example(name).main(["--smoke", "--no-progress", "--out", str(out), *options])
    return status, out


def _table(report, first_column):
    """Rows of the report's table as {first cell: cells}, for rows whose first cell is listed."""
    rows = {}
    for line in report.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] in first_column:
            rows[cells[0]] = cells
    return rows


def _number(cell):
    return float(cell.split("±")[0])


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_every_example_has_a_script_and_a_main():
    scripts = {path.stem for path in (ROOT / "examples").glob("*.py")}
    assert set(example_names()) <= scripts
    for name in example_names():
        assert callable(load_example(name).main)


def test_eight_schools_smoke(tmp_path):
    status, out = _run("eight_schools", tmp_path)
    assert status == 0
    report = (out / "report.txt").read_text()
    assert "k-hat" in report and "SMOKE RUN" in report
    rows = _table(report, {"cnf", "normal", "mvn", "pyro-iaf", "reference"})
    assert set(rows) == {"cnf", "normal", "mvn", "pyro-iaf", "reference"}
    log_z = get_model("eight_schools_centered").reference.log_Z
    assert _number(rows["reference"][5]) == pytest.approx(log_z, abs=1e-3)
    for guide in ("cnf", "normal", "mvn", "pyro-iaf"):
        kl, khat, log_z_hat = _number(rows[guide][1]), float(rows[guide][2]), rows[guide][5]
        estimate, se = (float(part) for part in log_z_hat.split("±"))
        # KL = log Z - ELBO >= 0; the importance estimate of log Z is biased low and >= ELBO
        assert math.isfinite(kl) and kl > 0
        assert math.isfinite(khat)
        assert log_z - kl <= estimate <= log_z + 4 * se + 1e-6
        # tau is positive: its mean and sd (own and importance-resampled draws) are positive
        assert all(_number(cell) > 0 for cell in rows[guide][6:10])
    assert _is_png(out / "eight_schools.png")


def test_funnel_smoke(tmp_path):
    status, out = _run("funnel", tmp_path, "--guide", "cnf,normal")
    assert status == 0
    report = (out / "report.txt").read_text()
    rows = _table(report, {"cnf", "normal", "reference"})
    assert _number(rows["reference"][7]) == pytest.approx(3.0)  # sd(v) = 3 exactly
    for guide in ("cnf", "normal"):
        assert _number(rows[guide][1]) > 0  # KL = -ELBO > 0 (log Z = 0)
    assert _is_png(out / "funnel.png")


def test_energies_smoke(tmp_path):
    status, out = _run("energies", tmp_path, "--targets", "banana,u1", "--guide", "cnf,normal")
    assert status == 0
    report = (out / "report.txt").read_text()
    rows = [re.split(r"\s{2,}", line.strip()) for line in report.splitlines()]
    rows = [row for row in rows if row[0] in ("banana", "u1")]
    assert [(row[0], row[1]) for row in rows] == [
        ("banana", "cnf"),
        ("banana", "normal"),
        ("u1", "cnf"),
        ("u1", "normal"),
    ]
    for row in rows:
        assert _number(row[2]) > 0  # KL
        exact = get_model("banana" if row[0] == "banana" else "energy_u1").reference.log_Z
        assert _number(row[7]) == pytest.approx(exact, abs=1e-4)
    assert _is_png(out / "energies.png")


def test_logistic_regression_smoke(tmp_path):
    status, out = _run("logistic_regression", tmp_path, "--guide", "cnf,normal")
    assert status == 0
    report = (out / "report.txt").read_text()
    assert "NUTS skipped" in report  # smoke mode does not pay for the reference
    rows = _table(report, {"cnf", "normal"})
    for row in rows.values():
        elbo, log_z_hat = _number(row[1]), _number(row[2])
        assert math.isfinite(elbo) and elbo <= log_z_hat + 1e-9  # ELBO <= log mean exp
        assert 0.5 < float(row[8]) <= 1.0  # training accuracy of a smoke fit: better than chance
    assert _is_png(out / "logistic_regression.png")


def test_conditional_smoke(tmp_path):
    status, out = _run("conditional", tmp_path)
    assert status == 0
    report = (out / "report.txt").read_text()
    before, after = (
        _number(_table(report, {key})[key][1]) for key in ("before training", "after 20 steps")
    )
    # the untrained flow is the standard normal: its KL to p(x|c) is known to be well above 0
    assert 0.3 < before < 1.5
    assert math.isfinite(after)
    assert _is_png(out / "conditional.png")


def test_exact_log_prob_of_the_conditional_example_is_normalized():
    import torch

    from pyro_cnf.examples.conditional import exact_log_prob, sample_data

    g0, g1 = torch.linspace(-7, 7, 701), torch.linspace(-45, 45, 1801)
    x0, x1 = torch.meshgrid(g0, g1, indexing="ij")
    points = torch.stack([x0, x1], -1)
    for c in (-0.9, 0.0, 0.7):
        density = exact_log_prob(points, torch.full((*x0.shape, 1), c)).exp()
        cell = (g0[1] - g0[0]) * (g1[1] - g1[0])
        assert float(density.sum() * cell) == pytest.approx(1.0, abs=1e-4)
    x, c = sample_data(20_000, torch.Generator().manual_seed(0))
    residual = (x[:, 1] - c[:, 0] * (x[:, 0] ** 2 - 1)) / 0.5
    assert float(residual.std()) == pytest.approx(1.0, abs=0.03)


# --- the command ------------------------------------------------------------------------------


def test_cli_list(capsys):
    assert cli.main(["list", "--guides"]) == 0
    out = capsys.readouterr().out
    for name in example_names():
        assert name in out
    assert "cnf" in out and "mvn" in out


@pytest.mark.parametrize(
    ("argv", "status", "words"),
    [
        (["run", "nope"], 2, "unknown example 'nope'"),
        (["run"], 2, "needs an example name"),
        (["frobnicate"], 2, "invalid choice"),
        (["list", "--bogus"], 2, "unrecognized arguments"),
        (["run", "eight_schools", "--steps", "0"], 2, "--steps"),
        (["run", "eight_schools", "--steps", "ten"], 2, "--steps"),
        (["run", "funnel", "--num-samples", "-5"], 2, "--num-samples"),
        (["run", "conditional", "--flow", "sylvester"], 2, "--flow"),
        (["run", "eight_schools", "--guide", "nonsense", "--smoke"], 1, "unknown guide"),
        (["run", "energies", "--targets", "u9", "--smoke"], 1, "unknown target"),
        (["demo", "--seed", "x"], 2, "--seed"),
    ],
)
def test_cli_bad_input_is_one_line(argv, status, words, capsys):
    assert cli.main(argv) == status
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("pyro-cnf demo: AutoCNF")]  # demo banner
    assert len(err) == 1, err
    assert words in err[0] and "error" in err[0]


def test_cli_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cli.main(["run", "funnel", "--smoke", "--out", str(blocker / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write to the output folder" in err[0]
    assert not (blocker / "out").exists()


def _console_script():
    found = shutil.which("pyro-cnf")
    local = Path(sys.executable).parent / "pyro-cnf"
    return str(local) if local.exists() else found


def test_console_script_help_and_errors(tmp_path):
    script = _console_script()
    if script is None:
        pytest.skip("the pyro-cnf console script is not installed (pip install -e .)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([script, "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0
    assert "demo" in done.stdout and "run" in done.stdout and "list" in done.stdout
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run(
        [script, "run", "funnel", "--smoke", "--out", str(blocker / "x")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_python_m_pyro_cnf(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pyro_cnf", "run", "nope"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "unknown example" in done.stderr


def test_density_anomaly_smoke(tmp_path):
    status, out = _run("density_anomaly", tmp_path)
    assert status == 0
    report = (out / "report.txt").read_text()
    assert "SMOKE RUN" in report
    rows = _table(
        report,
        {
            "KL(p || q), nats",
            "NFE of one log_prob",
            "target FPR",
            "realised FPR",
            "ROC AUC",
            "loc[0]",
        },
    )
    assert len(rows) == 6
    # 20 steps leave q far from the 8 Gaussians: KL(p || q) is clearly positive
    assert 0.1 < _number(rows["KL(p || q), nats"][1]) < 20
    assert int(rows["NFE of one log_prob"][1]) > 0
    assert float(rows["target FPR"][1]) == 0.05
    # 500 held-out points set the threshold: the realised rate on 500 fresh ones is near 0.05
    assert 0.0 <= float(rows["realised FPR"][1]) <= 0.15
    assert 0.0 <= float(rows["ROC AUC"][1]) <= 1.0
    assert float(rows["loc[0]"][1]) == 1.0  # the true shift
    assert _is_png(out / "density_anomaly.png")


def test_posteriordb_example_smoke(tmp_path):
    """``examples/posteriordb.py`` is a standalone script: run it in a subprocess."""
    script = str(ROOT / "examples" / "posteriordb.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    missing = tmp_path / "no_such_posteriordb"
    done = subprocess.run(
        [sys.executable, script, "--smoke", "--posteriordb", str(missing)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    assert str(missing) in done.stderr and "Traceback" not in done.stderr

    folder = os.environ.get("PYRO_CNF_POSTERIORDB")
    if not (folder and Path(folder).is_dir()):
        if os.environ.get("CI"):
            pytest.fail(f"PYRO_CNF_POSTERIORDB ({folder!r}) does not name a folder on CI")
        pytest.skip("no posteriordb folder: set PYRO_CNF_POSTERIORDB")
    from pyro_cnf.models import load_posteriordb

    name = "eight_schools-eight_schools_noncentered"
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, script, "--posterior", name, "--smoke", "--no-progress"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    reference = load_posteriordb(name).reference
    expected = {}  # quantity -> (reference mean, reference sd)
    for site, draws in reference.draws.items():
        mean, sd = reference.mean[site].reshape(-1), reference.sd[site].reshape(-1)
        for i in range(mean.numel()):
            key = f"{site}[{i + 1}]" if draws.dim() > 2 else site
            expected[key] = (float(mean[i]), float(sd[i]))
    assert {"mu", "tau", "theta[1]", "theta[8]"} <= set(expected)
    rows = _table((out / "report.txt").read_text(), set(expected))
    assert set(rows) == set(expected)
    for key, cells in rows.items():
        numbers = [float(cell) for cell in cells[1:]]
        assert len(numbers) == 6 and all(math.isfinite(x) for x in numbers), cells
        assert numbers[:2] == pytest.approx(expected[key], rel=1e-3)  # printed to 4 digits
        assert numbers[3] > 0  # the guide's sd
        assert numbers[4] == pytest.approx(abs(numbers[2] - numbers[0]) / numbers[1], abs=2e-3)
    assert _is_png(out / "posteriordb.png")
