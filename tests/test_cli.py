"""The ``pyro-cnf`` command: it finds the scripts, runs the demo, and answers bad input in one line.

The examples themselves run through ``pyro-cnf run`` in ``tests/test_examples.py``; the console
script and ``python -m pyro_cnf`` are checked once each in a subprocess here.
"""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_cnf import cli

ROOT = Path(__file__).parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


def test_list_shows_every_script_with_its_first_docstring_line(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:]}
    assert list(listed) == SCRIPTS
    for name in SCRIPTS:
        source = (ROOT / "examples" / f"{name}.py").read_text()
        first_line = ast.get_docstring(ast.parse(source)).splitlines()[0]
        assert listed[name] == first_line


def test_the_scripts_are_found_in_this_checkout():
    assert cli._examples_dir() == ROOT / "examples"
    assert set(cli._examples()) == set(SCRIPTS)


def test_pyproject_packages_every_folder_of_pyro_cnf():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "pyro_cnf").rglob("__init__.py")
    }
    assert set(config["packages"]) == folders | {"pyro_cnf.examples"}
    assert config["package-dir"] == {"pyro_cnf.examples": "examples"}
    assert (ROOT / "examples" / "__init__.py").is_file()  # a regular package in the wheel


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["run", "nope"], "unknown example 'nope'"),
        (["run"], "needs an example name"),
        (["frobnicate"], "invalid choice"),
        (["list", "--bogus"], "unrecognized arguments"),
        (["run", "--smoke", "funnel"], "unrecognized arguments"),
        (["run", "eight_schools", "--steps", "ten"], "--steps"),
        (["run", "funnel", "--steps", "0"], "--steps"),
        (["run", "conditional", "--flow", "sylvester"], "--flow"),
        (["run", "energies", "--targets", "u9"], "--targets"),
        (["run", "density_anomaly", "--target-fpr", "1.5"], "--target-fpr"),
        (["demo", "--seed", "x"], "--seed"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("pyro-cnf demo:")]  # the demo's banner
    assert len(err) == 1, err
    assert words in err[0] and "error" in err[0]


def test_a_failing_script_is_one_line_and_status_1(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cli.main(["run", "funnel", "--smoke", "--out", str(blocker / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NotADirectoryError" in err[0] and "--traceback" in err[0]
    with pytest.raises(NotADirectoryError):
        cli.main(["--traceback", "run", "funnel", "--smoke", "--out", str(blocker / "out")])


def test_a_script_help_and_sys_argv(capsys):
    saved = list(sys.argv)
    assert cli.main(["run", "funnel", "--help"]) == 0
    assert sys.argv == saved  # restored after the script ran
    out = capsys.readouterr().out
    assert out.startswith("usage: funnel.py") and "--smoke" in out and "--out" in out
    assert cli.main(["demo", "--help"]) == 0
    assert "usage: eight_schools.py" in capsys.readouterr().out


def test_demo_runs_eight_schools_with_the_users_options(tmp_path, capsys):
    assert cli.main(["demo", "--smoke", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "examples/eight_schools.py" in captured.err
    report = (tmp_path / "report.txt").read_text()
    assert "AutoCNF and AutoNormal vs exact" in report and "30 SVI steps" in report


def _console_script():
    local = Path(sys.executable).parent / "pyro-cnf"
    return str(local) if local.exists() else shutil.which("pyro-cnf")


def test_console_script_help():
    script = _console_script()
    if script is None:
        pytest.skip("the pyro-cnf console script is not installed (pip install -e .)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([script, "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0
    assert all(command in done.stdout for command in ("demo", "run", "list"))


def test_python_m_pyro_cnf():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pyro_cnf", "run", "funnel", "--steps", "x"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "funnel.py: error: argument --steps: invalid int value: 'x' (see --help)"
    )
