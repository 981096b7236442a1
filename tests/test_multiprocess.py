"""Two CPU processes, started the way the READMEs document (`torchrun --standalone --nproc_per_node 2`), run one
trainer of each package: different noise per process, identical weights, saving from the main process only and
from every process, and a resume in the middle of an epoch that repeats the uninterrupted run on both processes.

One launch runs all five packages (_multiprocess_worker.py); each package's results are checked by its own test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PACKAGES = ("imagen", "video-diffusion", "make-a-video", "phenaki", "nuwa")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("two-processes")
    # `python -m torch.distributed.run` is the `torchrun` command of this interpreter's torch
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE / "_multiprocess_worker.py"),
        str(out),
        *PACKAGES,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    return out, result


@pytest.mark.slow
@pytest.mark.parametrize("package", PACKAGES)
def test_two_processes_train_identically_save_from_main_and_resume_mid_epoch(two_processes, package):
    out, result = two_processes
    assert result.returncode == 0, result.stderr[-6000:]
    first, second = (json.loads((out / package / f"rank{rank}.json").read_text()) for rank in range(2))

    assert [first["world_size"], second["world_size"]] == [2, 2]
    assert "MULTI_CPU" in first["distributed_type"] and [first["is_main"], second["is_main"]] == [True, False]
    assert first["first_draw"] != second["first_draw"]  # each process has its own seed
    assert first["losses"] != second["losses"]  # its own batches and noise...
    assert first["weights_equal_across_processes"] and first["weights"] == second["weights"]  # ...the same weights

    # the resume after one step (mid-epoch) from a save by every process repeats the run on each process
    for info in (first, second):
        assert info["resumed_losses"] == info["losses"]
        assert info["resumed_weights"] == info["weights"]
        assert info["resumed_weights_equal_across_processes"] and info["own_rng_file"]
        assert info["positions_equal_across_processes"]
        assert all(position["batches_per_epoch"] == 3 for position in info["positions"].values())

    # saved by the main process alone (no deadlock): it resumes, the other process re-seeds, the weights stay equal
    assert first["main_only_weights_equal_across_processes"]
    assert first["main_only_steps"] == second["main_only_steps"]
    assert set(first["main_only_steps"].values()) == {2}
    assert first["after_main_only"][0] == first["losses"][1]
