"""Two processes on the CPU (gloo): the trainers keep every rank's weights identical under DDP."""

import json
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file


@pytest.mark.slow
def test_two_process_cpu_training_keeps_ranks_identical(tmp_path):
    """DDP over gloo: both trainers (generator + discriminator, then MaskGIT) end with the same weights on each rank."""
    sys.path.insert(0, str(Path(__file__).parent))  # so the spawned children can import the worker module
    import _phenaki_ddp_worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_phenaki_ddp_worker.train_on_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(info["num_processes"] == 2 for info in infos)
    assert infos[0]["steps"] == [{"cvivit": 3, "discr": 3}, {"phenaki": 2}]
    first, second = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
