"""The published imagen-pytorch internals on the cascade (`p_losses`, `p_mean_variance`, `p_sample`,
`p_sample_loop`, taking the `unet`): the core's diffusion wrapper on each stage's continuous-time schedule."""

import pytest
import torch

from imagen_pytorch import Imagen

torch.set_num_threads(1)


def _imagen(unet, **kwargs):
    return Imagen(unets=unet, image_sizes=8, timesteps=50, condition_on_text=False, **kwargs)


def test_p_losses_equals_the_training_loss_for_the_same_draws(tiny_unet):
    torch.manual_seed(0)
    imagen = _imagen(tiny_unet(cond_on_text=False), pred_objectives="v", p2_loss_weight_gamma=0.5)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    loss = imagen(images, unet_number=1)
    torch.manual_seed(5)  # the draws of the training step: times, then the noise
    times = torch.rand(2)
    noise = torch.randn(2, 3, 8, 8)
    internal = imagen.p_losses(imagen.unets[0], images * 2 - 1, times, noise=noise, cond_drop_prob=0.1)
    torch.testing.assert_close(internal, loss)


def test_p_sample_loop_of_an_exact_denoiser_matches_the_data(gaussian_unet):
    mu, s = 0.1, 0.3
    imagen = _imagen(gaussian_unet(mu, s), dynamic_thresholding=False)
    samples = imagen.p_sample_loop(
        imagen.unets[0], (2, 3, 32, 32), generator=torch.Generator().manual_seed(0), use_tqdm=False
    )
    assert samples.shape == (2, 3, 32, 32)
    # 50 ancestral steps of the continuous cosine schedule; [-1, 1] data N(mu, s^2) -> [0, 1]
    assert samples.mean().item() == pytest.approx((mu + 1) / 2, abs=0.01)
    assert samples.std().item() == pytest.approx(s / 2, rel=0.1)


def test_p_mean_variance_and_p_sample_return_the_x0_estimate(gaussian_unet):
    imagen = _imagen(gaussian_unet(0.0, 0.5))
    unet = imagen.unets[0]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t, t_next = torch.full((2,), 0.6), torch.full((2,), 0.4)
    (mean, variance, log_variance), x0 = imagen.p_mean_variance(unet, x, t, t_next=t_next)
    stage = imagen.gaussian_stage(0)
    expected_x0 = stage.threshold(stage.predict_start(unet(x, t), x, t))
    torch.testing.assert_close(x0, expected_x0)
    torch.testing.assert_close(mean, stage.q_posterior(expected_x0, x, t, t_next)[0])
    # the step to t_next = 0 adds no noise
    last, _ = imagen.p_sample(unet, x, torch.full((2,), 0.02), t_next=torch.zeros(2))
    (last_mean, _, _), _ = imagen.p_mean_variance(unet, x, torch.full((2,), 0.02), t_next=torch.zeros(2))
    torch.testing.assert_close(last, last_mean)
    assert imagen.noise_schedulers is imagen.noise_schedules


def test_a_unet_of_another_cascade_is_refused(gaussian_unet):
    imagen = _imagen(gaussian_unet(0.0, 0.5))
    with pytest.raises(ValueError, match="unet"):
        imagen.p_losses(gaussian_unet(0.0, 0.5), torch.zeros(1, 3, 8, 8), torch.rand(1))
    with pytest.raises(TypeError, match="noise_scheduler"):
        imagen.p_sample(imagen.unets[0], torch.zeros(1, 3, 8, 8), torch.rand(1), noise_scheduler="cosine")
