"""Every trainer of every package resumes exactly in the middle of an epoch: trained N steps straight, or k steps,
saved, loaded into a fresh trainer (other seed) and trained N - k more, it gives the same losses and weights."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _trainer_factories as factories  # noqa: E402

STEPS, RESUME_AT = 4, 1  # the first step ends in the middle of the first epoch; the fourth is in the second


@pytest.mark.parametrize("kind", factories.KINDS)
def test_a_resume_mid_epoch_repeats_the_uninterrupted_run(kind, tmp_path):
    torch.set_num_threads(1)
    uninterrupted = factories.build(kind, tmp_path / "straight", seed=11)
    expected = [uninterrupted.step() for _ in range(STEPS)]

    first = factories.build(kind, tmp_path / "first", seed=11)
    losses = [first.step() for _ in range(RESUME_AT)]
    positions = {name: stream.state_dict() for name, stream in first.engine.data_streams.items()}
    assert all(0 < p["batches"] < p["batches_per_epoch"] for p in positions.values())  # mid-epoch indeed
    path = first.save(tmp_path / "checkpoint.safetensors")

    second = factories.build(kind, tmp_path / "second", seed=12345)
    second.load(path)
    losses += [second.step() for _ in range(STEPS - RESUME_AT)]

    for got, want in zip(losses, expected):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-6, atol=1e-7)
    for a, b in zip(second.weights(), uninterrupted.weights()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
