"""Texts through a local T5 folder, MakeAVideoTrainer over captioned image and video folders (save/load)."""

import pytest
import torch

from make_a_video_pytorch import FrameInterpolator, MakeAVideo, MakeAVideoTrainer


def _trainer(model, tmp_path, **kwargs):
    settings = dict(
        batch_size=2,
        num_train_steps=2,
        save_every=100,
        sample_every=100,
        results_folder=tmp_path / "run",
        cpu=True,
        seed=0,
        ema_update_every=1,
        ema_update_after_step=0,
    )
    settings.update(kwargs)
    return MakeAVideoTrainer(model, **settings)


def test_texts_are_encoded_by_a_local_t5_folder(make_model, make_unet, tiny_t5):
    model = make_model(text_encoder_name=tiny_t5)
    loss = model(torch.rand(2, 3, 4, 8, 8), texts=["a red square moving left", "a blue circle"])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.sample(texts=["a green square"], progress=False).shape == (1, 3, 4, 8, 8)
    assert not any("shared" in k or "encoder.block" in k for k in model.state_dict())
    wrong = make_model(unet=make_unet(text_embed_dim=12), text_encoder_name=tiny_t5)
    with pytest.raises(ValueError, match="text_encoder_name: .* gives 16-wide embeddings"):
        wrong(torch.rand(2, 3, 4, 8, 8), texts=["a", "b"])


def test_co_training_on_captioned_folders_and_save_load_round_trip(
    make_model, tiny_t5, captioned_videos, captioned_images, tmp_path
):
    model = make_model(text_encoder_name=tiny_t5)
    trainer = _trainer(model, tmp_path, video_folder=captioned_videos, image_folder=captioned_images)
    assert trainer.with_captions and len(trainer.video_dataset) == 4 and len(trainer.image_dataset) == 4
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    logs = trainer.train_step()
    assert set(logs) == {"loss", "video_loss", "image_loss"} and all(isinstance(v, float) for v in logs.values())
    assert logs["loss"] == pytest.approx(logs["video_loss"] + logs["image_loss"]) and trainer.step_count == 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    path = trainer.save(tmp_path / "checkpoint.safetensors")

    fresh = _trainer(
        make_model(text_encoder_name=tiny_t5),
        tmp_path / "other",
        video_folder=captioned_videos,
        image_folder=captioned_images,
    )
    fresh.load(path)
    assert fresh.step_count == 1
    for (key, a), b in zip(trainer.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), key
    for a, b in zip(trainer.ema_model.state_dict().values(), fresh.ema_model.state_dict().values()):
        assert torch.equal(a, b)
    saved_state = trainer.optimizers["model"].state_dict()["state"]
    loaded_state = fresh.optimizers["model"].state_dict()["state"]
    assert saved_state.keys() == loaded_state.keys()
    for key in saved_state:
        assert torch.equal(saved_state[key]["exp_avg"], loaded_state[key]["exp_avg"])

    # the final model folder loads back as a MakeAVideo
    folder = fresh.save_model(tmp_path / "final")
    assert MakeAVideo.from_pretrained(folder).num_frames == 4


def test_image_only_training_leaves_temporal_layers_untouched(make_model, make_unet, captioned_images, tmp_path):
    model = make_model(unet=make_unet(text_embed_dim=None))  # unconditional: the captions are not used
    temporal = [p.clone() for p in model.unet.temporal_parameters()]
    trainer = _trainer(model, tmp_path, image_folder=captioned_images, sample_every=2, num_samples=1)
    trainer.train()
    assert trainer.step_count == 2
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.unet.temporal_parameters(), temporal))
    assert (tmp_path / "run" / "sample-2.gif").is_file() and (tmp_path / "run" / "model" / "config.json").is_file()


def test_trainer_bad_arguments(make_model, make_unet, captioned_images, captioned_videos, tmp_path):
    with pytest.raises(TypeError, match="model: expected a MakeAVideo"):
        MakeAVideoTrainer(torch.nn.Linear(2, 2), video_folder=captioned_videos)
    with pytest.raises(ValueError, match="give training data"):
        MakeAVideoTrainer(make_model(), results_folder=tmp_path)
    interpolator = make_model(unet=make_unet(cond_channels=4), cls=FrameInterpolator)
    with pytest.raises(ValueError, match="image_folder: a FrameInterpolator learns from videos only"):
        MakeAVideoTrainer(interpolator, image_folder=captioned_images, results_folder=tmp_path)
