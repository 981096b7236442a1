"""Trainer: CPU training on gif/mp4 folders, samples and resumable checkpoints, captions, co-training, errors."""

import numpy as np
import pytest
import torch

from synthesis_core.video import read_video, save_video
from video_diffusion_pytorch import GaussianDiffusion, Trainer, Unet3D


def tiny_diffusion(**unet_kwargs):
    unet = Unet3D(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, **unet_kwargs)
    return GaussianDiffusion(unet, image_size=8, num_frames=3, timesteps=10, sample_steps=2)


def make_trainer(diffusion, folder, results, **kwargs):
    kwargs = {
        "train_batch_size": 2,
        "train_num_steps": 2,
        "save_and_sample_every": 2,
        "gradient_accumulate_every": 1,
        "num_sample_rows": 1,
        "step_start_ema": 0,
        "update_ema_every": 1,
        "results_folder": results,
        **kwargs,
    }
    return Trainer(diffusion, folder, **kwargs)


def test_trains_on_cpu_writes_samples_and_resumes(gif_folder, tmp_path):
    results = tmp_path / "results"
    trainer = make_trainer(tiny_diffusion(), gif_folder, results)
    trainer.train()
    assert trainer.step_count == 2
    sample = read_video(results / "sample-1.gif")
    assert sample.shape == (3, 3, 8, 8)
    assert trainer.checkpoints.latest() is not None

    resumed = make_trainer(tiny_diffusion(), gif_folder, results, train_num_steps=4)
    resumed.load("latest")
    assert resumed.step_count == 2
    for a, b in zip(trainer.diffusion.parameters(), resumed.diffusion.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(trainer.ema("diffusion").ema_model.parameters(), resumed.ema("diffusion").ema_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    resumed.train()
    assert resumed.step_count == 4
    assert (results / "sample-2.gif").is_file()


def test_text_conditioned_training_from_caption_sidecars(gif_folder, tiny_bert, captions, tmp_path):
    for k, path in enumerate(sorted(gif_folder.glob("*.gif"))):
        path.with_suffix(".txt").write_text(captions[k])
    diffusion = tiny_diffusion(use_bert_text_cond=True, text_encoder_name=tiny_bert)
    unet = diffusion.model
    seen = []
    embed_text = unet.embed_text
    unet.embed_text = lambda texts, **kwargs: seen.extend(texts) or embed_text(texts, **kwargs)
    before = unet.cond_mlp[0].weight.detach().clone()

    trainer = make_trainer(diffusion, gif_folder, tmp_path / "results", num_sample_rows=2)
    assert trainer.with_captions
    trainer.train()
    assert set(seen) <= set(captions) and len(set(seen)) >= 2  # batches of captions reached BERT
    assert (unet.cond_mlp[0].weight - before).abs().max() > 0  # and the condition pathway trained
    assert trainer.sample_captions(4) == captions[:4]


def test_captions_are_ignored_by_an_unconditional_model(gif_folder, tmp_path):
    (gif_folder / "0.txt").write_text("a caption")
    trainer = make_trainer(tiny_diffusion(), gif_folder, tmp_path / "results", train_num_steps=1)
    assert not trainer.with_captions
    trainer.train()


def test_crops_and_pads_frames_of_gifs_and_mp4s(gif_writer, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    gif_writer(folder / "long.gif", 5, 8, seed=1)
    gif_writer(folder / "short.gif", 2, 8, seed=2)
    frames = torch.stack([torch.from_numpy(np.array(f)) for f in gif_writer.frames(4, 8, seed=3)]).float() / 255
    save_video(frames.permute(3, 0, 1, 2), folder / "clip.mp4")

    cropping = make_trainer(tiny_diffusion(), folder, tmp_path / "a", frame_mode="crop")
    assert len(cropping.dataset) == 2  # the 2-frame gif is too short to crop to 3 frames
    padding = make_trainer(tiny_diffusion(), folder, tmp_path / "b", frame_mode="pad", train_num_steps=1)
    assert len(padding.dataset) == 3
    assert all(padding.dataset[i].shape == (3, 3, 8, 8) for i in range(3))
    padding.train()


def test_image_and_video_co_training(gif_folder, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        Image.fromarray((torch.rand(12, 12, 3) * 255).to(torch.uint8).numpy()).save(images / f"{k}.png")
    diffusion = tiny_diffusion()
    frame_counts = []
    forward = diffusion.model.forward
    diffusion.model.forward = lambda x, *args, **kwargs: frame_counts.append(x.shape[2]) or forward(x, *args, **kwargs)
    trainer = make_trainer(
        diffusion, gif_folder, tmp_path / "results", image_folder=images, train_num_steps=1, save_and_sample_every=10
    )
    trainer.train()
    assert frame_counts == [3, 1]  # one video batch, one image batch (temporal attention skipped)


def test_bad_arguments_raise_clear_errors(gif_folder, tmp_path):
    with pytest.raises(ValueError, match="folder"):
        make_trainer(tiny_diffusion(), tmp_path / "missing", tmp_path / "results")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable"):
        make_trainer(tiny_diffusion(), tmp_path / "empty", tmp_path / "results")
    with pytest.raises(ValueError, match="num_frames"):
        make_trainer(tiny_diffusion(), gif_folder, tmp_path / "results", num_frames=5)
    with pytest.raises(TypeError, match="diffusion_model"):
        make_trainer(tiny_diffusion().model, gif_folder, tmp_path / "results")
    with pytest.raises(ValueError, match="frame_mode"):
        make_trainer(tiny_diffusion(), gif_folder, tmp_path / "results", frame_mode="loop")


def test_the_common_trainer_shape_resume_fit_and_save_pretrained(gif_folder, tmp_path):
    results = tmp_path / "results"
    fresh = make_trainer(tiny_diffusion(), gif_folder, results, resume="latest")  # nothing to resume yet
    assert fresh.step_count == 0
    logs = fresh.train_step()
    assert set(logs) == {"loss"} and isinstance(logs["loss"], float) and logs["loss"] > 0
    fresh.save()

    resumed = make_trainer(tiny_diffusion(), gif_folder, results, train_num_steps=3, resume="latest")
    assert resumed.step_count == 1
    for a, b in zip(fresh.diffusion.state_dict().values(), resumed.diffusion.state_dict().values()):
        assert torch.equal(a, b)
    folder = resumed.train()  # fit() to step 3, a sample at step 2, then the EMA model published
    assert resumed.step_count == 3 and (results / "sample-1.gif").is_file()
    assert folder == results / "diffusion"
    published = GaussianDiffusion.from_pretrained(folder)
    for a, b in zip(published.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.equal(a, b)
    raw = resumed.save_pretrained(tmp_path / "raw", ema=False)
    for a, b in zip(
        GaussianDiffusion.from_pretrained(raw).state_dict().values(), resumed.diffusion.state_dict().values()
    ):
        assert torch.equal(a, b)


def test_a_dataset_trains_like_the_folder_it_holds(gif_folder, tmp_path):
    """`dataset=` instead of a folder (as every trainer takes one): the folder's own dataset given as `dataset=`
    trains to the same losses and weights as the folder."""
    torch.manual_seed(0)
    from_folder = make_trainer(tiny_diffusion(), gif_folder, tmp_path / "a", seed=3)
    expected = [from_folder.train_step()["loss"] for _ in range(2)]
    torch.manual_seed(0)
    from_dataset = Trainer(
        tiny_diffusion(),
        dataset=from_folder.dataset,
        train_batch_size=2,
        train_num_steps=2,
        save_and_sample_every=2,
        gradient_accumulate_every=1,
        num_sample_rows=1,
        step_start_ema=0,
        update_ema_every=1,
        results_folder=tmp_path / "b",
        seed=3,
    )
    assert from_dataset.dataset is from_folder.dataset
    assert [from_dataset.train_step()["loss"] for _ in range(2)] == pytest.approx(expected, rel=1e-6)
    for a, b in zip(from_folder.diffusion.parameters(), from_dataset.diffusion.parameters()):
        torch.testing.assert_close(a, b)

    videos = [torch.rand(3, 3, 8, 8) for _ in range(2)]
    trainer = Trainer(
        tiny_diffusion(),
        dataset=videos,
        train_batch_size=2,
        train_num_steps=1,
        save_and_sample_every=1,
        num_sample_rows=1,
        results_folder=tmp_path / "c",
    )
    trainer.train()
    assert trainer.step_count == 1 and (tmp_path / "c" / "sample-1.gif").is_file()
    with pytest.raises(ValueError, match="folder"):
        Trainer(tiny_diffusion(), gif_folder, dataset=videos)
    with pytest.raises(ValueError, match="folder"):
        Trainer(tiny_diffusion())
