"""`BaseTrainer.fit` (the loop with periodic callbacks), `make_dataloader` and `AutoencoderGANTrainer` (alternating
autoencoder / discriminator updates) on toy models."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from synthesis_core.training import AutoencoderGANTrainer, BaseTrainer, cycle, make_dataloader


def test_fit_runs_callbacks_on_their_periods_and_stops_at_the_step_count():
    trainer = BaseTrainer(seed=0)
    net = trainer.add_model("net", nn.Linear(3, 1), lr=1e-1, ema=False)
    x = torch.randn(32, 3)
    y = x @ torch.tensor([[1.0], [-1.0], [2.0]])
    calls, logged = [], []

    def train_step():
        loss = F.mse_loss(net(x), y)
        trainer.backward(loss, "net")
        trainer.step("net")
        return {"loss": loss.item()}

    final = trainer.fit(
        7,
        train_step,
        every=[
            (3, lambda: calls.append(("a", trainer.global_step))),
            (None, lambda: calls.append(("never", 0))),
            (5, lambda: calls.append(("b", trainer.global_step))),
        ],
        at_end=lambda: calls.append(("end", trainer.global_step)),
        log_fn=logged.append,
    )
    assert final == 7 and trainer.global_step == 7
    assert calls == [("a", 3), ("b", 5), ("a", 6), ("end", 7)]
    assert len(logged) == 7 and logged[-1]["loss"] < logged[0]["loss"]
    # already done: no step runs, only the final callback
    assert trainer.fit(7, train_step, at_end=lambda: calls.append(("end", 7))) == 7 and calls[-1] == ("end", 7)
    with pytest.raises(ValueError, match="num_train_steps"):
        trainer.fit(0, train_step)


def test_make_dataloader_keeps_a_small_dataset_and_rejects_an_empty_one():
    small = TensorDataset(torch.arange(3.0))
    batches = list(make_dataloader(small, 4, shuffle=False))
    assert len(batches) == 1 and batches[0][0].tolist() == [0.0, 1.0, 2.0]
    big = TensorDataset(torch.arange(10.0))
    assert [len(b[0]) for b in make_dataloader(big, 4)] == [4, 4]  # the partial last batch is dropped
    with pytest.raises(ValueError, match="dataset"):
        make_dataloader(TensorDataset(torch.zeros(0)), 2)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataloader(small, 0)


class ToyAutoencoder(nn.Module):
    """Linear autoencoder with a small discriminator whose adversarial loss flows into the decoder."""

    def __init__(self, use_gan: bool = True):
        super().__init__()
        self.encoder, self.decoder = nn.Linear(6, 3), nn.Linear(3, 6)
        self.discr = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)) if use_gan else None
        self.penalty_calls: list[bool] = []
        self.discr_grads_in_autoencoder_step: list[bool] = []

    def forward(self, x):
        recon = self.decoder(self.encoder(x))
        recon_loss = F.mse_loss(recon, x)
        loss = recon_loss
        if self.discr is not None:
            self.discr_grads_in_autoencoder_step.append(any(p.requires_grad for p in self.discr.parameters()))
            loss = loss + 0.01 * F.softplus(-self.discr(recon)).mean()
        return loss, recon_loss

    def discriminator_loss(self, x, *, apply_grad_penalty, discr):
        self.penalty_calls.append(apply_grad_penalty)
        with torch.no_grad():
            fake = self.decoder(self.encoder(x))
        return F.softplus(discr(fake)).mean() + F.softplus(-discr(x)).mean()

    def save_pretrained(self, folder):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors")
        return folder


class ToyTrainer(AutoencoderGANTrainer):
    progress_desc = "toy"
    progress_postfix = {"loss": "loss", "recon": "recon"}

    def __init__(self, model, data, **kwargs):
        super().__init__(**kwargs)
        self.add_autoencoder("toy", model, use_gan=model.discr is not None, lr=3e-2, ema=False)
        self.batches = cycle(make_dataloader(TensorDataset(data), 8))
        self.results = []

    def next_batch(self):
        return next(self.batches)[0]

    def autoencoder_loss(self, model, batch):
        loss, recon_loss = model(batch)
        return loss, {"recon": recon_loss}

    def save_results(self):
        self.results.append(self.step_count)


def low_rank_data(n=64):
    torch.manual_seed(0)
    return torch.randn(n, 3) @ torch.randn(3, 6)


def test_autoencoder_gan_trainer_alternates_and_learns(tmp_path):
    model = ToyAutoencoder()
    discr_before = [p.detach().clone() for p in model.discr.parameters()]
    trainer = ToyTrainer(
        model,
        low_rank_data(),
        num_train_steps=40,
        apply_grad_penalty_every=3,
        save_results_every=10,
        save_model_every=None,
        results_folder=tmp_path,
        seed=0,
    )
    # the autoencoder's optimizer holds no discriminator parameter
    discr_ids = {id(p) for p in model.discr.parameters()}
    toy_params = [p for group in trainer.optimizers["toy"].param_groups for p in group["params"]]
    assert len(toy_params) == 4 and not discr_ids & {id(p) for p in toy_params}

    logged = []
    trainer.train(log_fn=logged.append)
    assert trainer.step_count == 40 and trainer.step_counts["discr"] == 40
    assert set(logged[0]) == {"loss", "recon", "discr_loss"}
    assert logged[-1]["recon"] < 0.2 * logged[0]["recon"]
    # the discriminator is frozen during the autoencoder's step, trainable again after, and did train
    assert model.discr_grads_in_autoencoder_step and not any(model.discr_grads_in_autoencoder_step)
    assert all(p.requires_grad for p in model.discr.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(discr_before, model.discr.parameters()))
    # gradient penalty on the steps that are multiples of 3 (counted after the autoencoder's update)
    assert model.penalty_calls == [step % 3 == 0 for step in range(1, 41)]
    assert trainer.results == [10, 20, 30, 40]
    assert (tmp_path / "toy" / "model.safetensors").is_file() and trainer.checkpoints.latest() is not None


def test_autoencoder_trainer_without_gan_and_resume(tmp_path):
    data = low_rank_data()
    first = ToyTrainer(
        ToyAutoencoder(use_gan=False), data, num_train_steps=3, save_results_every=None, results_folder=tmp_path, seed=0
    )
    first.train()
    assert "discr" not in first.models and first.step_count == 3
    second = ToyTrainer(
        ToyAutoencoder(use_gan=False), data, num_train_steps=5, save_results_every=None, results_folder=tmp_path, seed=0
    )
    second.load("latest")
    logged = []
    second.train(log_fn=logged.append)
    assert second.step_count == 5 and len(logged) == 2 and set(logged[0]) == {"loss", "recon"}  # resumed at 3


def test_autoencoder_trainer_errors():
    with pytest.raises(ValueError, match="apply_grad_penalty_every"):
        ToyTrainer(ToyAutoencoder(), low_rank_data(), num_train_steps=2, apply_grad_penalty_every=0)
    with pytest.raises(ValueError, match="num_train_steps"):
        ToyTrainer(ToyAutoencoder(), low_rank_data(), num_train_steps=0)
    trainer = AutoencoderGANTrainer(num_train_steps=2)
    with pytest.raises(ValueError, match="use_gan"):
        trainer.add_autoencoder("ae", ToyAutoencoder(use_gan=False), use_gan=True)


def test_averaged_model_and_save_and_export(tmp_path):
    trainer = BaseTrainer(results_folder=tmp_path)
    trainer.add_model("plain", ToyAutoencoder(use_gan=False), ema=False)
    trainer.add_model("avg", ToyAutoencoder(use_gan=False), ema=True)
    assert trainer.averaged_model("plain") is trainer.unwrap("plain")
    assert trainer.averaged_model("avg") is trainer.ema("avg").ema_model
    folder = trainer.save_and_export("avg")
    assert folder == tmp_path / "avg" and (folder / "model.safetensors").is_file()
    assert trainer.checkpoints.latest() is not None
    assert trainer.save_and_export("avg", tmp_path / "explicit") == tmp_path / "explicit"
    assert (tmp_path / "explicit" / "model.safetensors").is_file()
