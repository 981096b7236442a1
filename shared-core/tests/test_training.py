import json
import logging
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from synthesis_core.checkpoint import CheckpointError, load_checkpoint
from synthesis_core.training import BaseTrainer, cycle, extract_model_state, split_batch, warmup_cosine_lambda


def make_net(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(dropout), nn.Tanh(), nn.Linear(16, 1))


def regression_batch(batch=16, generator=None):
    x = torch.randn(batch, 4, generator=generator)
    return x, (x * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(-1, keepdim=True)


def train_steps(trainer, n, name="net"):
    losses = []
    for _ in range(n):
        x, y = regression_batch()  # drawn from the global RNG, which checkpoints restore
        with trainer.autocast():
            loss = F.mse_loss(trainer.models[name](x), y)
        trainer.backward(loss, name)
        trainer.step(name)
        losses.append(loss.item())
    return losses


def test_tiny_regression_loss_falls():
    trainer = BaseTrainer(seed=0)
    trainer.add_model("net", make_net(), lr=3e-2, ema=False)
    losses = train_steps(trainer, 60)
    assert trainer.device.type == "cpu"
    assert sum(losses[-5:]) / 5 < 0.2 * sum(losses[:5]) / 5
    assert trainer.step_counts == {"net": 60} and trainer.global_step == 60


def test_resume_reproduces_the_uninterrupted_loss_sequence(tmp_path):
    settings = dict(
        lr=1e-2,
        warmup_steps=3,
        total_steps=10,
        max_grad_norm=0.5,
        ema_kwargs={"update_after_step": 2, "update_every": 2},
    )

    trainer = BaseTrainer(seed=1)
    trainer.add_model("net", make_net(seed=0, dropout=0.2), **settings)
    uninterrupted = train_steps(trainer, 8)

    first = BaseTrainer(seed=1, results_folder=tmp_path / "run")
    first.add_model("net", make_net(seed=0, dropout=0.2), **settings)
    resumed = train_steps(first, 5)
    first.save()
    assert first.checkpoints.latest().name == "checkpoint-00000005.safetensors"

    second = BaseTrainer(seed=123, results_folder=tmp_path / "run")  # other seed, other init: all from the file
    second.add_model("net", make_net(seed=7, dropout=0.2), **settings)
    meta = second.load("latest")
    assert meta["steps"] == {"net": 5} and second.step_counts == {"net": 5}
    assert second.get_lr("net") == pytest.approx(first.get_lr("net"))
    resumed += train_steps(second, 3)

    assert resumed == uninterrupted  # exactly: weights, Adam moments, LR schedule, RNG all restored
    for a, b in zip(trainer.ema("net").ema_model.parameters(), second.ema("net").ema_model.parameters()):
        assert torch.equal(a, b)


def test_nan_guard_skips_step_and_keeps_ema_finite(caplog):
    trainer = BaseTrainer()
    trainer.add_model("net", make_net(), lr=1e-2, ema_kwargs={"update_after_step": 0, "update_every": 1})
    train_steps(trainer, 2)
    before = [p.detach().clone() for p in trainer.unwrap("net").parameters()]
    ema_before = [p.detach().clone() for p in trainer.ema("net").ema_model.parameters()]

    x, y = regression_batch()
    loss = F.mse_loss(trainer.models["net"](x), y) * float("nan")
    trainer.backward(loss, "net")
    with caplog.at_level(logging.WARNING, logger="synthesis_core.training"):
        assert trainer.step("net") is False
    assert "non-finite" in caplog.text and "'net'" in caplog.text
    assert trainer.step_counts["net"] == 2 and trainer.skipped_steps["net"] == 1
    for p, b in zip(trainer.unwrap("net").parameters(), before):
        assert torch.equal(p, b) and p.grad is None  # untouched, gradients cleared
    for p, b in zip(trainer.ema("net").ema_model.parameters(), ema_before):
        assert torch.equal(p, b)

    loss = F.mse_loss(trainer.models["net"](x), y)  # training goes on normally afterwards
    trainer.backward(loss, "net")
    assert trainer.step("net") is True
    assert all(torch.isfinite(p).all() for p in trainer.ema("net").ema_model.parameters())


def test_inf_gradient_from_one_parameter_is_caught():
    trainer = BaseTrainer()
    trainer.add_model("net", make_net(), ema=False)
    x, y = regression_batch()
    trainer.backward(F.mse_loss(trainer.models["net"](x), y), "net")
    trainer.unwrap("net")[0].bias.grad[0] = float("inf")
    assert trainer.step("net") is False


def test_max_batch_size_splitting_gives_the_full_batch_gradient():
    x, y = regression_batch(batch=7)
    reference = make_net()
    F.mse_loss(reference(x), y).backward()

    trainer = BaseTrainer()
    net = trainer.add_model("net", make_net(), ema=False)
    chunks = list(split_batch(3, x, y, scale=2.0, captions=[str(i) for i in range(7)]))
    assert [len(c[1][0]) for c in chunks] == [3, 3, 1]
    assert sum(fraction for fraction, _, _ in chunks) == pytest.approx(1.0)
    assert chunks[2][2] == {"scale": 2.0, "captions": ["6"]}  # lists split, non-batch values passed as they are
    for fraction, (cx, cy), _ in chunks:
        trainer.backward(F.mse_loss(net(cx), cy), "net", fraction=fraction)
    for p, q in zip(trainer.unwrap("net").parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)

    assert list(split_batch(None, x)) == [(1.0, (x,), {})]


def test_gradient_accumulation_averages_micro_batches():
    x, y = regression_batch(batch=8)
    reference = make_net()
    F.mse_loss(reference(x), y).backward()
    trainer = BaseTrainer(gradient_accumulate_every=2)
    net = trainer.add_model("net", make_net(), ema=False)
    for cx, cy in ((x[:4], y[:4]), (x[4:], y[4:])):
        trainer.backward(F.mse_loss(net(cx), cy), "net")
    for p, q in zip(trainer.unwrap("net").parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def test_warmup_cosine_schedule():
    f = warmup_cosine_lambda(4, 12, min_factor=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(8) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(12) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)
    assert warmup_cosine_lambda(0, None)(1000) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine_lambda(10, 5)

    trainer = BaseTrainer()
    trainer.add_model("net", make_net(), lr=1.0, warmup_steps=2, total_steps=4, ema=False)
    lrs = [trainer.get_lr("net")]
    for _ in range(4):
        train_steps(trainer, 1)
        lrs.append(trainer.get_lr("net"))
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi * 0.5)), 0.0]
    assert lrs == pytest.approx(expected)


BF16_TRAINER = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from synthesis_core.training import BaseTrainer

    trainer = BaseTrainer(mixed_precision="bf16")
    net = trainer.add_model("net", nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1)), ema=False)
    seen = []
    trainer.unwrap("net")[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    x = torch.randn(8, 4)
    with trainer.autocast():
        out = net(x)
    assert seen == [torch.bfloat16], seen  # the layers ran in bf16 (accelerate hands the output back in float32)
    trainer.backward(F.mse_loss(out.float(), x.sum(-1, keepdim=True)), "net")
    assert trainer.step("net")
    assert trainer.unwrap("net")[0].weight.dtype == torch.float32
    print("ok")
""")


def test_bf16_mixed_precision_on_cpu():
    # a process of its own: accelerate keeps one mixed precision per process, and this test process uses 'no'
    result = subprocess.run(
        [sys.executable, "-c", BF16_TRAINER],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_a_second_mixed_precision_in_one_process_is_refused_not_reset():
    first = BaseTrainer()
    first.add_model("net", make_net(), ema=False)
    with pytest.raises(ValueError, match="mixed_precision.*one setting per process"):
        BaseTrainer(mixed_precision="bf16")
    assert first.accelerator.mixed_precision == "no"  # the state of the first trainer was left alone
    train_steps(first, 1)


def test_checkpoint_contents_and_errors(tmp_path):
    trainer = BaseTrainer()
    trainer.add_model("net", make_net(), warmup_steps=1, total_steps=5)
    train_steps(trainer, 2)
    path = trainer.save(tmp_path / "trainer.safetensors")
    tensors, meta = load_checkpoint(path)
    state = extract_model_state(tensors, "net")
    assert set(state) == set(trainer.unwrap("net").state_dict())
    assert set(extract_model_state(tensors, "net", ema=True)) == set(trainer.ema("net").ema_model.state_dict())
    assert meta["versions"]["synthesis-core"] and meta["steps"] == {"net": 2}

    with pytest.raises(ValueError, match="results_folder"):
        trainer.save()
    other = BaseTrainer()
    other.add_model("other", make_net(), ema=False)
    with pytest.raises(CheckpointError, match="other"):
        other.load(path)
    wrong = BaseTrainer()
    wrong.add_model("net", nn.Sequential(nn.Linear(4, 3)), ema=False)
    with pytest.raises(CheckpointError, match="version"):
        wrong.load(path)
    assert BaseTrainer(results_folder=tmp_path / "empty").load("latest") is None

    with pytest.raises(ValueError, match="name"):
        trainer.step("missing")
    with pytest.raises(ValueError, match="mixed_precision"):
        BaseTrainer(mixed_precision="fp8")


def test_cycle_and_progress():
    assert [b for b, _ in zip(cycle([1, 2]), range(5))] == [1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="no batch"):
        next(cycle([]))
    bar = BaseTrainer().progress(3, desc="train")
    bar.update(3)
    bar.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    import torch.multiprocessing as mp

    sys.path.insert(0, str(Path(__file__).parent))  # so the spawned children can import the worker module
    try:
        import _distributed_worker

        mp.spawn(_distributed_worker.train_on_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    finally:
        sys.path.remove(str(Path(__file__).parent))

    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["num_processes"] for i in infos] == [2, 2]
    assert all("MULTI_CPU" in i["distributed_type"] for i in infos)
    assert [i["is_main"] for i in infos] == [True, False]
    assert infos[0]["losses"] != infos[1]["losses"]  # they trained on different data...
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # ...and still hold identical (all-reduced) weights
    init1 = load_file(str(tmp_path / "initial1.safetensors"))
    assert not torch.equal(w0["0.weight"], init1["0.weight"])
    checkpoints = sorted((tmp_path / "checkpoints").glob("checkpoint-*.safetensors"))
    # saved by both processes: the main one wrote the checkpoint, the other one its own RNG states
    assert [p.name for p in checkpoints] == [
        "checkpoint-00000005.rng-rank1.safetensors",
        "checkpoint-00000005.safetensors",
    ]
    assert [i["accumulate_misuse"] for i in infos] == ["RuntimeError", "RuntimeError"]
    assert infos[0]["main_only_saved"] and infos[1]["rng_after_load"] != infos[0]["rng_after_load"]
    tensors, meta = load_checkpoint(checkpoints[1])
    for k in w0:
        assert torch.equal(extract_model_state(tensors, "net")[k], w0[k])
