"""The published video-diffusion-pytorch 0.7 names: GaussianDiffusion(denoise_fn=...), Trainer.step_ema,
Trainer.reset_parameters, Trainer.save(milestone) / load(milestone), Trainer.train(prob_focus_present=...,
focus_present_mask=...)."""

import pytest
import torch

from video_diffusion_pytorch import GaussianDiffusion, Trainer, Unet3D


def tiny_unet():
    return Unet3D(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)


def test_denoise_fn_is_the_model(tmp_path):
    unet = tiny_unet()
    diffusion = GaussianDiffusion(denoise_fn=unet, image_size=8, num_frames=3, timesteps=10, sample_steps=2)
    assert diffusion.model is unet and diffusion.denoise_fn is unet
    videos = torch.rand(2, 3, 3, 8, 8)
    torch.manual_seed(0)
    by_keyword = diffusion(videos)
    torch.manual_seed(0)
    positional = GaussianDiffusion(unet, image_size=8, num_frames=3, timesteps=10, sample_steps=2)(videos)
    torch.testing.assert_close(by_keyword, positional)  # the same loss from the same model and noise

    diffusion.save_pretrained(tmp_path / "ckpt")
    loaded = GaussianDiffusion.from_pretrained(tmp_path / "ckpt")
    for a, b in zip(loaded.model.parameters(), unet.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_denoise_fn_and_model_together_or_neither_is_an_error():
    with pytest.raises(ValueError, match="denoise_fn"):
        GaussianDiffusion(tiny_unet(), denoise_fn=tiny_unet(), image_size=8, num_frames=3)
    with pytest.raises(TypeError, match="model"):
        GaussianDiffusion(image_size=8, num_frames=3)


def test_step_ema_copies_before_step_start_ema_then_averages(gif_folder, tmp_path):
    diffusion = GaussianDiffusion(tiny_unet(), image_size=8, num_frames=3, timesteps=10, sample_steps=2)
    trainer = Trainer(
        diffusion,
        gif_folder,
        train_batch_size=2,
        train_num_steps=1,
        gradient_accumulate_every=1,
        save_and_sample_every=100,
        step_start_ema=5,
        update_ema_every=1,
        ema_decay=0.5,
        results_folder=tmp_path / "results",
    )
    ema = trainer.ema()
    online = [p for p in ema.model.parameters()]
    averaged = [p for p in ema.ema_model.parameters()]

    with torch.no_grad():
        for p in online:
            p.add_(1.0)
    trainer.step_ema()  # step 0 < step_start_ema: a copy
    for a, b in zip(averaged, online):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    trainer.step_counts[next(iter(trainer.step_counts))] = (
        10  # past step_start_ema: ema = decay * ema + (1 - decay) * model
    )
    before = [p.detach().clone() for p in averaged]
    with torch.no_grad():
        for p in online:
            p.add_(1.0)
    trainer.step_ema()
    for a, b, o in zip(averaged, before, online):
        torch.testing.assert_close(a, 0.5 * b + 0.5 * o)


def make_trainer(folder, results, **kwargs):
    diffusion = GaussianDiffusion(tiny_unet(), image_size=8, num_frames=3, timesteps=10, sample_steps=2)
    settings = dict(
        train_batch_size=2,
        train_num_steps=1,
        gradient_accumulate_every=1,
        save_and_sample_every=2,
        sample_every=None,
        step_start_ema=0,
        update_ema_every=1,
        results_folder=results,
    )
    settings.update(kwargs)
    return Trainer(diffusion, folder, **settings)


def test_reset_parameters_copies_the_model_into_the_ema(gif_folder, tmp_path):
    trainer = make_trainer(gif_folder, tmp_path / "results")
    ema = trainer.ema()
    with torch.no_grad():
        for p in ema.model.parameters():
            p.add_(0.5)
    assert not all(torch.equal(a, b) for a, b in zip(ema.ema_model.parameters(), ema.model.parameters()))
    trainer.reset_parameters()
    for a, b in zip(ema.ema_model.parameters(), ema.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_save_and_load_by_milestone_are_the_numbered_checkpoints(gif_folder, tmp_path):
    results = tmp_path / "results"
    trainer = make_trainer(gif_folder, results, train_num_steps=4)
    trainer.train_step()
    trainer.train_step()
    path = trainer.save(1)  # the published call: milestone 1 = step 1 * save_and_sample_every
    assert path == trainer.checkpoints.path_for(2) and path.is_file()

    fresh = make_trainer(gif_folder, results, train_num_steps=4)
    fresh.load(1)
    assert fresh.step_count == 2
    for a, b in zip(trainer.diffusion.parameters(), fresh.diffusion.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    trainer.train_step()
    trainer.train_step()
    assert trainer.save(milestone=2) == trainer.checkpoints.path_for(4)
    latest = make_trainer(gif_folder, results, train_num_steps=4)
    latest.load(-1)  # -1: the latest milestone
    assert latest.step_count == 4
    latest.load(milestone=1)
    assert latest.step_count == 2
    with pytest.raises(FileNotFoundError, match="not found"):
        latest.load(milestone=7)
    with pytest.raises(ValueError, match="milestone: pass either milestone= or path="):
        trainer.save(tmp_path / "x.safetensors", milestone=1)
    with pytest.raises(ValueError, match="milestone >= 0"):
        trainer.save(-1)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_trainer(gif_folder, tmp_path / "empty").load(-1)


def test_train_passes_focus_present_for_this_call(gif_folder, tmp_path):
    trainer = make_trainer(gif_folder, tmp_path / "results", save_every=None)
    model = trainer.model
    seen = []
    original_forward = model.forward

    def recording_forward(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("prob_focus_present", "focus_present_mask")})
        return original_forward(*args, **kwargs)

    model.forward = recording_forward
    mask = torch.tensor([True, False])
    trainer.train(prob_focus_present=0.5, focus_present_mask=mask)
    assert seen and seen[0]["prob_focus_present"] == 0.5 and torch.equal(seen[0]["focus_present_mask"], mask)
    assert trainer.prob_focus_present == 0.0 and trainer.focus_present_mask is None  # for that call only

    trainer.num_train_steps = 2
    with pytest.raises(ValueError, match="focus_present_mask: expected one value per video of a batch"):
        trainer.train(focus_present_mask=torch.tensor([True, False, True]))
    with pytest.raises(TypeError, match="focus_present_mask: expected a bool tensor"):
        trainer.train(focus_present_mask=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="prob_focus_present"):
        trainer.train(prob_focus_present=1.5)
