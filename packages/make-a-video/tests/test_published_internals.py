"""`MakeAVideo` is a configuration of the core's diffusion wrapper: its DDPM internals (q_sample ... p_losses) agree
with its training loss and sampling."""

import torch

torch.set_num_threads(1)


def test_p_losses_equals_the_training_loss(make_model):
    torch.manual_seed(0)
    model = make_model()
    g = torch.Generator().manual_seed(1)
    videos = torch.rand(2, 3, 4, 8, 8, generator=g)
    text_embeds = torch.randn(2, 5, 16, generator=g)
    noise = torch.randn(videos.shape, generator=g)
    t = torch.tensor([7, 80])
    loss = model(videos, text_embeds=text_embeds, noise=noise, times=t, cond_drop_prob=0.0)
    internal = model.p_losses(videos * 2 - 1, t, noise=noise, text_embeds=text_embeds, cond_drop_prob=0.0)
    torch.testing.assert_close(internal, loss)


def test_p_sample_with_guidance_is_the_posterior_at_the_guided_estimate(make_model):
    torch.manual_seed(0)
    model = make_model().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, 8, 8, generator=g)
    text_embeds = torch.randn(2, 5, 16, generator=g)
    t = torch.tensor([50, 50])
    with torch.no_grad():
        mean, _, _, x0 = model.p_mean_variance(x, t, cond_scale=3.0, text_embeds=text_embeds, return_x_start=True)
        guided = model.unet.forward_with_cond_scale(x, t, cond_scale=3.0, text_embeds=text_embeds)
    expected_x0 = model.threshold(model.predict_start(guided, x, t))
    torch.testing.assert_close(x0, expected_x0)
    torch.testing.assert_close(mean, model.q_posterior(expected_x0, x, t)[0])
    samples = model.p_sample_loop(
        (1, 3, 4, 8, 8),
        text_embeds=text_embeds[:1],
        cond_scale=3.0,
        progress=False,
        generator=torch.Generator().manual_seed(3),
    )
    assert samples.shape == (1, 3, 4, 8, 8) and torch.isfinite(samples).all()
