"""Data-parallel fits on two CPU processes (gloo, launched by torchrun) against one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import distributed_fits as fits
import pytest
import torch

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    run = subprocess.run(
        [*command, str(HERE / "distributed_fits.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_the_ranks_shuffle_disjoint_shards_that_cover_each_epoch(ranks):
    assert [r["world_size"] for r in ranks] == [2, 2]
    rows = [sorted(sum(r["epoch"], [])) for r in ranks]
    assert not set(rows[0]) & set(rows[1])
    assert sorted(rows[0] + rows[1]) == list(range(fits.NUM_POINTS))


def test_two_processes_fit_a_density_as_one_process_on_the_same_global_batch(ranks):
    state, losses = fits.density_fit(fits.NUM_POINTS)
    for rank in ranks:
        assert rank["density_state"].keys() == state.keys()
        for name, value in state.items():
            torch.testing.assert_close(rank["density_state"][name], value, rtol=1e-9, atol=1e-10)
        # the history is the global batch's loss, the same on every rank
        torch.testing.assert_close(torch.tensor(rank["density_losses"]), torch.tensor(losses))
    assert losses[-1] < losses[0]


def test_two_processes_take_disjoint_subsamples_and_fit_svi_as_one_on_full_data(ranks):
    params, _ = fits.svi_fit(None)
    for rank in ranks:
        for name, value in params.items():
            torch.testing.assert_close(rank["svi_params"][name], value, rtol=1e-9, atol=1e-10)
    # each of the 10 steps, the two ranks' subsamples of the plate are disjoint halves of the data
    steps = list(zip(ranks[0]["svi_seen"][-10:], ranks[1]["svi_seen"][-10:], strict=True))
    for a, b in steps:
        assert len(a) == len(b) == fits.NUM_POINTS // 2
        assert sorted(a + b) == list(range(fits.NUM_POINTS))


def test_the_example_gives_the_same_held_out_nll_on_two_processes_as_on_one(tmp_path):
    script = HERE.parent / "examples" / "distributed_density.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    results = {}
    for procs in (1, 2):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc_per_node", str(procs)]
        out = tmp_path / str(procs)
        command = [*launcher, str(script), "--smoke", "--no-progress", "--out", str(out)]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        results[procs] = json.loads((out / "result.json").read_text())
    assert [results[n]["world_size"] for n in (1, 2)] == [1, 2]
    assert abs(results[2]["val_nll"] - results[1]["val_nll"]) < 0.05
    # both fits come within 0.5 nats of the true density's NLL on the same held-out points
    for result in results.values():
        assert 0 < result["val_nll"] - result["true_nll"] < 0.5


def test_each_rank_counts_its_own_solves_and_the_ranks_keep_one_cnf_guide(ranks):
    _, one = fits.cnf_svi_fit()
    assert one["inverse"] == 0 and one["forward"] == 4 * one["last"]  # 3 steps + the set-up
    for rank in ranks:
        # one forward solve per step and no inverse solve on every process; the extra solve is
        # the call that builds the guide so that every rank can start from rank 0's parameters
        assert rank["cnf_nfe"] == {**one, "forward": one["forward"] + one["last"]}
    # different particle draws on the two ranks, averaged gradients: identical parameters
    assert ranks[0]["cnf_params"].keys() == ranks[1]["cnf_params"].keys()
    for name, value in ranks[0]["cnf_params"].items():
        assert torch.equal(ranks[1]["cnf_params"][name], value), name
