"""BaseTrainer checkpoints: loading is all or nothing, strict means refuse, a resume in the middle of an epoch repeats
the uninterrupted run exactly (data order, augmentation, noise), seeds per process, and a run whose gradients stay
non-finite stops."""

import logging
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset

from synthesis_core.checkpoint import CheckpointError, flatten_state_dict, load_checkpoint, save_checkpoint
from synthesis_core.training import BaseTrainer, mix_seed, process_rng_path, process_seed


def make_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Tanh(), nn.Linear(16, 1))


class AugmentedItems(Dataset):
    """Every item drawn with fresh randomness from the three global RNGs, as random augmentations are."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        x = torch.full((4,), float(index)) + 0.1 * torch.randn(4)
        return x * (1 + 0.1 * random.random()) * (1 + 0.1 * float(np.random.rand()))


def make_trainer(folder, seed=3, model_seed=0, with_data=True, **kwargs):
    trainer = BaseTrainer(seed=seed, results_folder=folder, gradient_accumulate_every=2, **kwargs)
    trainer.add_model(
        "net",
        make_net(model_seed),
        lr=1e-2,
        warmup_steps=2,
        total_steps=20,
        max_grad_norm=1.0,
        ema_kwargs={"update_after_step": 0, "update_every": 1},
    )
    if with_data:
        add_data(trainer)
    return trainer


def add_data(trainer):
    # 5 batches of 2 per epoch: one step draws two of them
    return trainer.add_dataloader("train", DataLoader(AugmentedItems(), batch_size=2, shuffle=True))


def train(trainer, steps):
    batches = trainer.data_streams["train"]
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(trainer.gradient_accumulate_every):
            with trainer.accumulate("net"):
                x = next(batches)
                target = x.sum(-1, keepdim=True) + torch.randn(len(x), 1)  # noise from the global RNG
                loss = F.mse_loss(trainer.models["net"](x), target)
                trainer.backward(loss, "net")
                total += loss.item()
        trainer.step("net")
        losses.append(total)
    return losses


def test_a_resume_in_the_middle_of_an_epoch_repeats_the_uninterrupted_run(tmp_path):
    uninterrupted = make_trainer(tmp_path / "a")
    expected = train(uninterrupted, 7)

    first = make_trainer(tmp_path / "b")
    losses = train(first, 3)  # 6 of the 10 batches of epoch 0 and one of epoch 1
    first.save()
    assert first.data_streams["train"].state_dict()["epoch"] == 1
    assert first.data_streams["train"].state_dict()["batches"] == 1

    # another seed and other initial weights: everything comes from the file; the data is added after the load,
    # as ImagenTrainer does when it resumes in its constructor
    second = make_trainer(tmp_path / "b", seed=99, model_seed=7, with_data=False)
    meta = second.load("latest")
    assert meta["data"]["train"]["batches"] == 1
    add_data(second)
    losses += train(second, 4)
    assert losses == expected
    for a, b in zip(uninterrupted.ema("net").ema_model.parameters(), second.ema("net").ema_model.parameters()):
        assert torch.equal(a, b)


def _snapshot(trainer):
    def flat(state):
        tensors, skeleton = flatten_state_dict(state)
        return {k: v.clone() for k, v in tensors.items()}, skeleton

    state_dicts = {
        "model": flat(trainer.unwrap("net").state_dict()),
        "ema": flat(trainer.ema("net").state_dict()),
        "optimizer": flat(trainer.optimizers["net"].state_dict()),
        "scheduler": flat(trainer.schedulers["net"].state_dict()),
    }
    others = {
        "steps": (dict(trainer.step_counts), dict(trainer.skipped_steps)),
        "data": trainer.data_streams["train"].state_dict(),
        "python rng": random.getstate(),
    }
    return state_dicts, others, torch.get_rng_state().clone()


def _assert_same(before, after):
    (state_dicts_a, others_a, rng_a), (state_dicts_b, others_b, rng_b) = before, after
    for key, ((tensors_a, skeleton_a), (tensors_b, skeleton_b)) in zip(
        state_dicts_a, zip(state_dicts_a.values(), state_dicts_b.values())
    ):
        assert skeleton_a == skeleton_b, key
        assert tensors_a.keys() == tensors_b.keys(), key
        for name in tensors_a:
            assert torch.equal(tensors_a[name], tensors_b[name]), (key, name)
    assert others_a == others_b
    assert torch.equal(rng_a, rng_b)


def _broken(path, tmp_path, name, change):
    tensors, meta = load_checkpoint(path)
    change(tensors, meta)
    return save_checkpoint(tmp_path / f"broken-{name}.safetensors", tensors, meta)


BREAKAGES = {
    "steps": lambda t, m: m["steps"].update(net="three"),
    "optimizer tensor": lambda t, m: t.pop("optimizer.net.state.0.exp_avg"),
    "optimizer groups": lambda t, m: m["optimizers"]["net"]["param_groups"].append(
        m["optimizers"]["net"]["param_groups"][0]
    ),
    "scheduler": lambda t, m: m["schedulers"]["net"].update(lr_lambdas=[None, None]),
    "weight shape": lambda t, m: t.update({"model.net.3.weight": torch.zeros(2, 16)}),
    "ema key": lambda t, m: t.pop("ema.net.ema_model.0.weight"),
    "data position": lambda t, m: m["data"]["train"].update(batches=-1),
    "rng": lambda t, m: t.update({"rng.torch": torch.zeros(3, dtype=torch.uint8)}),
    "rng metadata": lambda t, m: m.update(rng={"python": [1, 2]}),
    "models entry": lambda t, m: m.update(models=["net"]),
    "format": lambda t, m: m.update(format="something else"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_failed_load_leaves_the_trainer_exactly_as_it_was(breakage, tmp_path):
    saved = make_trainer(tmp_path / "saved")
    train(saved, 3)
    good = saved.save()
    path = _broken(good, tmp_path, breakage.replace(" ", "-"), BREAKAGES[breakage])

    trainer = make_trainer(tmp_path / "other", seed=5, model_seed=1)
    train(trainer, 1)
    before = _snapshot(trainer)
    with pytest.raises(CheckpointError, match="broken-"):
        trainer.load(path)
    _assert_same(before, _snapshot(trainer))

    trainer.load(good)  # and a good checkpoint still loads
    assert trainer.step_counts == {"net": 3}


def test_strict_load_refuses_a_checkpoint_with_other_models(tmp_path, caplog):
    two = BaseTrainer()
    two.add_model("a", make_net(1), ema=False)
    two.add_model("b", make_net(2), ema=False)
    path = two.save(tmp_path / "two.safetensors")

    one = BaseTrainer()
    one.add_model("a", make_net(3), ema=False)
    before = [p.detach().clone() for p in one.unwrap("a").parameters()]
    with pytest.raises(CheckpointError, match=r"model\(s\) \['b'\] that this trainer does not register"):
        one.load(path)
    assert all(torch.equal(p, q) for p, q in zip(before, one.unwrap("a").parameters()))

    with caplog.at_level(logging.WARNING, logger="synthesis_core.training"):
        one.load(path, strict=False)
    assert "does not register" in caplog.text
    assert all(torch.equal(p, q) for p, q in zip(two.unwrap("a").parameters(), one.unwrap("a").parameters()))
    one.load(path, ignore_models=["b"])  # a model the caller expects and skips

    three = BaseTrainer()
    for name in "abc":
        three.add_model(name, make_net(4), ema=False)
    with pytest.raises(CheckpointError, match=r"no model\(s\) \['c'\]"):
        three.load(path)


def test_processes_get_their_own_seeds():
    assert process_seed(1234, 0) == 1234  # one process: seeded as before
    seeds = {process_seed(1234, rank) for rank in range(8)}
    assert len(seeds) == 8 and all(0 <= s < 2**32 for s in seeds)
    assert process_seed(1235, 1) != process_seed(1234, 1)
    assert mix_seed(1, 2) != mix_seed(2, 1)
    assert (
        process_rng_path("run/checkpoint-00000005.safetensors", 3).name == "checkpoint-00000005.rng-rank3.safetensors"
    )
    with pytest.raises(ValueError, match="seed"):
        BaseTrainer(seed=-1)


def test_training_stops_after_consecutive_non_finite_steps(caplog):
    trainer = BaseTrainer(max_consecutive_nonfinite_steps=3)
    trainer.add_model("net", make_net(), ema=False)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def step(scale=1.0):
        trainer.backward(F.mse_loss(trainer.models["net"](x), y) * scale, "net")
        return trainer.step("net")

    assert [step(float("nan")) for _ in range(2)] == [False, False]
    assert step() is True  # a good step ends the streak
    assert [step(float("inf")) for _ in range(2)] == [False, False]
    with pytest.raises(
        FloatingPointError,
        match=r"3 optimizer steps in a row .*max_consecutive_nonfinite_steps=3"
        r".*learning rate",
    ):
        step(float("nan"))

    # weights that became NaN make every later gradient NaN: the default stops after 10 steps
    stuck = BaseTrainer()
    stuck.add_model("net", make_net(), ema=False)
    with torch.no_grad():
        stuck.unwrap("net")[0].weight[0, 0] = float("nan")
    with caplog.at_level(logging.ERROR), pytest.raises(FloatingPointError, match="10 optimizer steps"):
        for _ in range(11):
            stuck.backward(F.mse_loss(stuck.models["net"](x), y), "net")
            stuck.step("net")
    assert stuck.skipped_steps["net"] == 10

    patient = BaseTrainer(max_consecutive_nonfinite_steps=None)
    patient.add_model("net", make_net(), ema=False)
    for _ in range(12):
        patient.backward(F.mse_loss(patient.models["net"](x), y) * float("nan"), "net")
        assert patient.step("net") is False
    with pytest.raises(ValueError, match="max_consecutive_nonfinite_steps"):
        BaseTrainer(max_consecutive_nonfinite_steps=0)


def test_every_process_restores_its_own_rng_or_reseeds(tmp_path, monkeypatch):
    """What process 1 of a run does, played in one process: with every process saving, it writes its RNG states to
    a companion file and gets them back on load; after a save by the main process only, it re-seeds from the
    seed, its rank and the step (a companion of an earlier save is not used)."""
    trainer = make_trainer(tmp_path / "run")
    train(trainer, 1)
    path = trainer.save()  # the main process's part

    as_process_1 = dict(is_main=property(lambda self: False), process_index=property(lambda self: 1))
    with monkeypatch.context() as patch:
        for name, value in as_process_1.items():
            patch.setattr(BaseTrainer, name, value)
        torch.manual_seed(42)
        expected = torch.rand(3)
        torch.manual_seed(42)
        assert trainer.save() == path  # process 1's part: only its companion file
        assert process_rng_path(path, 1).is_file()
        torch.rand(5)
        trainer.load(path)
        assert torch.equal(torch.rand(3), expected)

    train(trainer, 1)
    path = trainer.save()  # by the main process only: the companion on disk belongs to the previous save
    with monkeypatch.context() as patch:
        for name, value in as_process_1.items():
            patch.setattr(BaseTrainer, name, value)
        trainer.load(path)
        after_load = torch.rand(3)
    set_seed(mix_seed(3, 1, 2))
    assert torch.equal(after_load, torch.rand(3))
