"""ImagenTrainer: all unets of a cascade in one process, EMA sampling, checkpoints (bit-equal round trip, identical
samples, periodic and remote checkpoints, rebuilding the cascade from a file), data, learning rates."""

import pytest
import torch
from PIL import Image

from imagen_pytorch import ElucidatedImagen, Imagen, ImagenTrainer, load_imagen_from_checkpoint
from imagen_pytorch.data import Dataset
from synthesis_core.checkpoint import CheckpointError

TEXT_DIM = 16


@pytest.fixture
def cascade(tiny_unet):
    def build(**kwargs):
        kwargs = dict(dict(image_sizes=(8, 16), text_embed_dim=TEXT_DIM, timesteps=10), **kwargs)
        return Imagen((tiny_unet(), tiny_unet()), **kwargs)

    return build


def batch(size=2):
    return torch.rand(size, 3, 16, 16), torch.randn(size, 4, TEXT_DIM)


def test_trains_every_unet_of_the_cascade_in_one_process(cascade):
    trainer = ImagenTrainer(cascade())
    images, embeds = batch(4)
    for unet_number in (1, 2, 1):
        loss = trainer(images, text_embeds=embeds, unet_number=unet_number, max_batch_size=2)
        assert isinstance(loss, float) and loss == loss
        trainer.update(unet_number=unet_number)
    assert trainer.steps.tolist() == [2, 1]
    with pytest.raises(ValueError, match="unet_number"):
        trainer(images, text_embeds=embeds, unet_number=3)


def test_loss_falls_when_fitting_one_batch(tiny_unet):
    imagen = Imagen(tiny_unet(), image_sizes=8, condition_on_text=False, pred_objectives="x_start", timesteps=10)
    trainer = ImagenTrainer(imagen, lr=3e-3, use_ema=False)
    images = torch.full((4, 3, 8, 8), 0.5)
    images[:, 0] = 0.9  # a plain colour to learn

    def fixed_loss():
        torch.manual_seed(123)  # the same noise and times every time
        with torch.no_grad():
            return imagen(images).item()

    before = fixed_loss()
    for _ in range(12):
        trainer(images)
        trainer.update()
    assert fixed_loss() < 0.25 * before


def test_checkpoint_round_trip_is_bit_equal_and_samples_identically(cascade, tmp_path):
    trainer = ImagenTrainer(cascade(), ema_update_every=1)
    images, embeds = batch()
    for unet_number in (1, 2):
        trainer(images, text_embeds=embeds, unet_number=unet_number)
        trainer.update(unet_number)
    path = tmp_path / "checkpoint.pt"
    trainer.save(path)

    other = ImagenTrainer(cascade(), ema_update_every=1)
    other.load(path)
    assert other.steps.tolist() == [1, 1]
    for a, b in zip(trainer.imagen.state_dict().values(), other.imagen.state_dict().values()):
        assert torch.equal(a, b)
    for unet_number in (1, 2):
        for a, b in zip(trainer.ema_unet(unet_number).parameters(), other.ema_unet(unet_number).parameters()):
            assert torch.equal(a, b)

    def sample(t):
        torch.manual_seed(7)
        return t.sample(text_embeds=embeds, cond_scale=2.0, steps=2, use_tqdm=False)

    assert torch.equal(sample(trainer), sample(other))

    # the cascade alone, rebuilt from the file (its config travels in the checkpoint)
    rebuilt = load_imagen_from_checkpoint(path)
    assert isinstance(rebuilt, Imagen) and rebuilt.image_sizes == (8, 16)
    for a, b in zip(trainer.imagen.state_dict().values(), rebuilt.state_dict().values()):
        assert torch.equal(a, b)
    rebuilt_ema = load_imagen_from_checkpoint(path, load_ema_if_available=True)
    for a, b in zip(trainer.ema_unet(2).parameters(), rebuilt_ema.unets[1].parameters()):
        assert torch.equal(a, b)
    untrained = load_imagen_from_checkpoint(path, load_weights=False)
    assert not all(torch.equal(a, b) for a, b in zip(rebuilt.parameters(), untrained.parameters()))


def test_sampling_uses_the_ema_unets_by_default(cascade):
    trainer = ImagenTrainer(cascade(), ema_update_every=1, ema_update_after_step=0)
    images, embeds = batch()
    for _ in range(3):
        trainer(images, text_embeds=embeds, unet_number=1)
        trainer.update(1)
    online = trainer.imagen.unets[0]
    with trainer.use_ema_unets():
        assert trainer.imagen.unets[0] is trainer.ema_unet(1)
    assert trainer.imagen.unets[0] is online

    def sample(use_ema=None):
        torch.manual_seed(3)
        kwargs = dict(text_embeds=embeds, steps=2, stop_at_unet_number=1, use_tqdm=False)
        if use_ema is None:  # the cascade itself, with its online unets
            return trainer.imagen.sample(**kwargs)
        return trainer.sample(use_ema=use_ema, **kwargs)

    with_ema, without_ema, online_cascade = sample(True), sample(False), sample()
    assert torch.equal(without_ema, online_cascade)
    assert not torch.equal(with_ema, online_cascade)
    with trainer.use_ema_unets():
        assert torch.equal(sample(), with_ema)


def test_periodic_checkpoints_keep_the_newest_and_resume(cascade, tmp_path):
    folder = tmp_path / "checkpoints"
    trainer = ImagenTrainer(cascade(), checkpoint_path=folder, checkpoint_every=1, max_checkpoints_keep=2)
    images, embeds = batch()
    for unet_number in (1, 1, 2):
        trainer(images, text_embeds=embeds, unet_number=unet_number)
        trainer.update(unet_number)
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint-00000002.safetensors",
        "checkpoint-00000003.safetensors",
    ]
    resumed = ImagenTrainer(cascade(), checkpoint_path=folder, checkpoint_every=1)
    assert resumed.steps.tolist() == [2, 1]
    for a, b in zip(trainer.imagen.parameters(), resumed.imagen.parameters()):
        assert torch.equal(a, b)


def test_remote_checkpoints_through_fsspec(cascade):
    fsspec = pytest.importorskip("fsspec")
    url = "memory://imagen-test-run"
    trainer = ImagenTrainer(cascade(), checkpoint_path=url, checkpoint_every=1)
    images, embeds = batch()
    trainer(images, text_embeds=embeds, unet_number=2)
    trainer.update(2)
    assert len(fsspec.filesystem("memory").glob("/imagen-test-run/checkpoint-*.safetensors")) == 1
    resumed = ImagenTrainer(cascade(), checkpoint_path=url)
    assert resumed.steps.tolist() == [0, 1]
    trainer.save("memory://elsewhere/final.safetensors")
    other = ImagenTrainer(cascade())
    other.load("memory://elsewhere/final.safetensors")
    assert other.steps.tolist() == [0, 1]
    fsspec.filesystem("memory").rm("/imagen-test-run", recursive=True)
    fsspec.filesystem("memory").rm("/elsewhere", recursive=True)


def test_strict_load_refuses_another_cascade_and_changes_nothing(cascade, tiny_unet, tmp_path):
    two = ImagenTrainer(cascade())
    images, embeds = batch()
    two(images, text_embeds=embeds, unet_number=1)
    two.update(1)
    path = two.save(tmp_path / "two-unets.safetensors")

    one = ImagenTrainer(Imagen(tiny_unet(), image_sizes=8, text_embed_dim=TEXT_DIM, timesteps=10))
    before = [p.detach().clone() for p in one.imagen.parameters()]
    with pytest.raises(CheckpointError, match="unet2"):
        one.load(path)
    assert all(torch.equal(a, b) for a, b in zip(before, one.imagen.parameters()))
    assert one.steps.tolist() == [0]
    one.load(path, strict=False)  # loads the unet both have
    assert one.steps.tolist() == [1]

    # a trainer of the second unet only resumes from a checkpoint of the whole cascade
    second_only = ImagenTrainer(cascade(), only_train_unet_number=2)
    second_only.load(path)
    assert second_only.steps.tolist() == [0, 0]


def test_elucidated_cascade_round_trips_through_its_checkpoint(tiny_unet, tmp_path):
    imagen = ElucidatedImagen(
        (tiny_unet(), tiny_unet()),
        image_sizes=(8, 16),
        text_embed_dim=TEXT_DIM,
        num_sample_steps=(3, 2),
        sigma_max=(80, 160),
    )
    trainer = ImagenTrainer(imagen)
    images, embeds = batch()
    trainer(images, text_embeds=embeds, unet_number=2)
    trainer.update(2)
    trainer.save(tmp_path / "edm.safetensors")
    rebuilt = load_imagen_from_checkpoint(tmp_path / "edm.safetensors")
    assert isinstance(rebuilt, ElucidatedImagen)
    assert rebuilt.num_sample_steps == (3, 2) and [h["sigma_max"] for h in rebuilt.edm_hparams] == [80, 160]
    torch.manual_seed(1)
    expected = trainer.sample(text_embeds=embeds, use_ema=False, use_tqdm=False)
    torch.manual_seed(1)
    assert torch.equal(rebuilt.sample(text_embeds=embeds, use_tqdm=False), expected)


def test_datasets_with_captions_and_validation_split(tiny_unet, tiny_t5, tmp_path):
    for k, caption in enumerate(["a red square", "a blue circle", "a green dot", "a grey sky"]):
        Image.fromarray((torch.rand(12, 12, 3) * 255).byte().numpy()).save(tmp_path / f"{k}.png")
        (tmp_path / f"{k}.txt").write_text(caption)
    imagen = Imagen(tiny_unet(), image_sizes=8, text_encoder_name=tiny_t5, timesteps=10)
    trainer = ImagenTrainer(imagen, split_valid_from_train=True, split_valid_fraction=0.25)
    dataset = Dataset(tmp_path, image_size=8, with_captions=True)
    assert len(dataset) == 4
    trainer.add_train_dataset(dataset, batch_size=2)
    assert len(trainer.valid_dl.dataset) == 1 and len(trainer.train_dl.dataset) == 3
    assert isinstance(trainer.train_step(unet_number=1), float)
    assert isinstance(trainer.valid_step(unet_number=1), float)
    assert trainer.steps.tolist() == [1]
    with pytest.raises(ValueError, match="no usable"):
        Dataset(tmp_path / "..", image_size=8, exts=("bmp",))


def test_learning_rates_warmup_and_only_training_one_unet(cascade):
    trainer = ImagenTrainer(cascade(), lr=(1e-3, 2e-3), warmup_steps=(10, None))
    assert trainer.get_lr(1) == pytest.approx(1e-4)  # first of 10 warmup steps
    assert trainer.get_lr(2) == pytest.approx(2e-3)
    images, embeds = batch()
    trainer(images, text_embeds=embeds, unet_number=1)
    trainer.update(1)
    assert trainer.get_lr(1) == pytest.approx(2e-4)

    only_second = ImagenTrainer(cascade(), only_train_unet_number=2)
    assert only_second(images, text_embeds=embeds, unet_number=2) > 0
    with pytest.raises(ValueError, match="only trains unet 2"):
        only_second(images, text_embeds=embeds, unet_number=1)
    with pytest.raises(ValueError, match="lr: expected one value per unet"):
        ImagenTrainer(cascade(), lr=(1e-4, 1e-4, 1e-4))
    with pytest.raises(ValueError, match="exactly one"):
        ImagenTrainer()
    with pytest.raises(ValueError, match="no training data"):
        ImagenTrainer(cascade()).train_step(unet_number=1)


def test_custom_unets_train_and_checkpoint_without_a_config(recording_unet, tmp_path, caplog):
    trainer = ImagenTrainer(Imagen(recording_unet(), image_sizes=8, condition_on_text=False))
    assert "will not record the cascade's config" in caplog.text
    trainer(torch.rand(2, 3, 8, 8))
    trainer.update()
    trainer.save(tmp_path / "custom.safetensors")
    with pytest.raises(ValueError, match="no imagen config"):
        load_imagen_from_checkpoint(tmp_path / "custom.safetensors")


def _fit_trainer(cascade, folder, **kwargs):
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(3)
    data = TensorDataset(
        torch.rand(6, 3, 16, 16, generator=generator), torch.randn(6, 4, TEXT_DIM, generator=generator)
    )
    torch.manual_seed(0)
    trainer = ImagenTrainer(
        cascade(),
        checkpoint_path=folder,
        checkpoint_every=2,
        num_train_steps=4,
        ema_update_every=1,
        ema_update_after_step=0,
        cpu=True,
        **kwargs,
    )
    trainer.add_train_dataloader(DataLoader(data, batch_size=2, shuffle=True))
    return trainer


def test_is_a_base_trainer_whose_fit_checkpoints_and_resumes_exactly(cascade, tmp_path):
    from synthesis_core.training import BaseTrainer

    straight = _fit_trainer(cascade, tmp_path / "straight", seed=7)
    assert isinstance(straight, BaseTrainer) and straight.engine is straight
    expected = []
    assert straight.fit(unet_number=1, log_fn=lambda logs: expected.append(logs["loss"])) == 4
    assert straight.steps.tolist() == [4, 0] and straight.step_counts == {"unet1": 4, "unet2": 0}
    assert [step for step, _ in straight.checkpoints.list()] == [2, 4]  # every checkpoint_every updates

    interrupted = _fit_trainer(cascade, tmp_path / "interrupted", seed=7)
    losses = []
    interrupted.fit(2, unet_number=1, log_fn=lambda logs: losses.append(logs["loss"]))
    resumed = _fit_trainer(cascade, tmp_path / "interrupted", seed=99, resume="latest")
    assert resumed.steps.tolist() == [2, 0]
    resumed.fit(unet_number=1, log_fn=lambda logs: losses.append(logs["loss"]))
    assert resumed.steps.tolist() == [4, 0]
    assert losses == pytest.approx(expected, rel=1e-6, abs=1e-7)

    fresh = _fit_trainer(cascade, tmp_path / "interrupted", resume=False)  # checkpoints there, left alone
    assert fresh.steps.tolist() == [0, 0]
    from_file = _fit_trainer(cascade, tmp_path / "elsewhere", resume=straight.checkpoints.path_for(2))
    assert from_file.steps.tolist() == [2, 0]
    with pytest.raises(ValueError, match="resume"):
        ImagenTrainer(cascade(), resume="latest")  # no checkpoint_path to look in


def test_save_pretrained_publishes_the_cascade_with_its_ema_unets(cascade, tmp_path):
    trainer = _fit_trainer(cascade, tmp_path / "run", seed=0)
    trainer.fit(2, unet_number=1)
    folder = trainer.save_pretrained()
    assert folder == tmp_path / "run" / "imagen"
    loaded = Imagen.from_pretrained(folder)
    ema_weights = trainer.get_ema_unet(1).state_dict()
    for key, value in loaded.unets[0].state_dict().items():
        assert torch.equal(value, ema_weights[key])
    assert any(
        not torch.equal(a, b) for a, b in zip(loaded.unets[0].parameters(), trainer.unet_being_trained(1).parameters())
    )
    online = Imagen.from_pretrained(trainer.save_pretrained(tmp_path / "online", ema=False))
    for a, b in zip(online.unets[0].parameters(), trainer.unet_being_trained(1).parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="name"):
        trainer.save_pretrained(tmp_path / "x", name="unet1")
