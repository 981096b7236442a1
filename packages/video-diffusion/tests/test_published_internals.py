"""The published video-diffusion-pytorch 0.7 internals of `GaussianDiffusion` (q_sample ... p_losses), which the core's
diffusion wrapper implements once; the closed-form checks are in shared-core/tests/test_diffusion_wrapper.py."""

import pytest
import torch

from video_diffusion_pytorch import GaussianDiffusion, Unet3D

torch.set_num_threads(1)


def _model(**kwargs):
    torch.manual_seed(0)
    unet = Unet3D(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, cond_dim=6)
    return GaussianDiffusion(unet, image_size=8, num_frames=2, timesteps=20, loss_type="l2", **kwargs)


def test_p_losses_equals_the_training_loss_for_the_same_noise_and_times():
    diffusion = _model()
    g = torch.Generator().manual_seed(1)
    videos = torch.rand(2, 3, 2, 8, 8, generator=g)
    cond = torch.randn(2, 6, generator=g)
    noise = torch.randn(videos.shape, generator=g)
    t = torch.tensor([3, 17])
    loss = diffusion(videos, cond=cond, noise=noise, times=t, cond_drop_prob=0.0)
    internal = diffusion.p_losses(videos * 2 - 1, t, cond=cond, noise=noise, null_cond_prob=0.0)
    torch.testing.assert_close(internal, loss)
    # the same through the published forward path: x_t = q_sample, and the model regresses the noise
    x_t = diffusion.q_sample(videos * 2 - 1, t, noise=noise)
    pred = diffusion.model(x_t, t, cond=cond, null_cond_prob=0.0)
    torch.testing.assert_close(loss, ((pred - noise) ** 2).mean())


def test_p_sample_loop_and_guided_p_sample():
    diffusion = _model().eval()
    cond = torch.randn(2, 6, generator=torch.Generator().manual_seed(2))
    shape = (2, 3, 2, 8, 8)
    first = diffusion.p_sample_loop(
        shape, cond=cond, cond_scale=2.0, generator=torch.Generator().manual_seed(3), progress=False
    )
    again = diffusion.p_sample_loop(
        shape, cond=cond, cond_scale=2.0, generator=torch.Generator().manual_seed(3), progress=False
    )
    assert first.shape == shape
    torch.testing.assert_close(first, again)
    # clip_denoised keeps every x0 estimate in [-1, 1], so the samples stay within the posterior's reach of [0, 1]
    assert first.min() > -0.5 and first.max() < 1.5

    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    t = torch.full((2,), 10)
    mean, variance, log_variance = diffusion.p_mean_variance(x, t, cond=cond, cond_scale=2.0)
    assert mean.shape == shape and variance.shape == (2, 1, 1, 1, 1)
    torch.testing.assert_close(log_variance, variance.log())
    # t = 0: the step to the data is the mean, without noise
    mean0, _, _ = diffusion.p_mean_variance(x, torch.zeros(2, dtype=torch.long), cond=cond)
    torch.testing.assert_close(diffusion.p_sample(x, torch.zeros(2, dtype=torch.long), cond=cond), mean0)


def test_published_internals_reject_float_times():
    diffusion = _model()
    with pytest.raises(TypeError, match="t: "):
        diffusion.q_sample(torch.zeros(1, 3, 2, 8, 8), torch.tensor([0.5]))
