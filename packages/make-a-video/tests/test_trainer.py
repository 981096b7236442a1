"""Texts through a local T5 folder, MakeAVideoTrainer over captioned image and video folders (save/load), the CLI."""
import pytest
import torch

from make_a_video_pytorch import FrameInterpolator, MakeAVideo, MakeAVideoTrainer
from make_a_video_pytorch.cli import main
from synthesis_core.video import read_video


def _trainer(model, tmp_path, **kwargs):
    settings = dict(batch_size=2, num_train_steps=2, save_every=100, sample_every=100, results_folder=tmp_path / "run",
                    cpu=True, seed=0, ema_update_every=1, ema_update_after_step=0)
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


def test_co_training_on_captioned_folders_and_save_load_round_trip(make_model, tiny_t5, captioned_videos,
                                                                     captioned_images, tmp_path):
    model = make_model(text_encoder_name=tiny_t5)
    trainer = _trainer(model, tmp_path, video_folder=captioned_videos, image_folder=captioned_images)
    assert trainer.with_captions and len(trainer.video_dataset) == 4 and len(trainer.image_dataset) == 4
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss = trainer.train_step()
    assert loss > 0 and trainer.step_count == 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    path = trainer.save(tmp_path / "checkpoint.safetensors")

    fresh = _trainer(make_model(text_encoder_name=tiny_t5), tmp_path / "other", video_folder=captioned_videos,
                     image_folder=captioned_images)
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


def test_cli_trains_and_samples_a_model_and_an_interpolator(tmp_path):
    tiny = ["--text-encoder", "none", "--image-size", "8", "--num-frames", "4", "--dim", "8", "--dim-mults", "1,2",
            "--depth", "1", "--heads", "2", "--dim-head", "8", "--timesteps", "20", "--batch-size", "2",
            "--steps", "1", "--shapes", "4", "--cpu", "--seed", "0"]
    assert main(["train", *tiny, "--results-folder", str(tmp_path / "video")]) == 0
    assert main(["train", *tiny, "--interpolator", "--temporal-compression-levels", "",
                 "--results-folder", str(tmp_path / "interp")]) == 0
    out = tmp_path / "sample.gif"
    assert main(["sample", "--model", str(tmp_path / "video" / "model"), "--batch-size", "2", "--steps", "2",
                 "--interpolator", str(tmp_path / "interp" / "model"), "--factor", "2", "--out", str(out),
                 "--device", "cpu", "--seed", "0"]) == 0
    video = read_video(out)
    assert video.shape[1] == 8  # 4 sampled frames, interpolated to 8
    # errors are reported, not raised
    assert main(["sample", "--model", str(tmp_path / "interp" / "model"), "--out", str(out)]) == 2
