"""The diffusion wrapper base: its DDPM internals against closed forms, and sampling with an exact denoiser."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synthesis_core.diffusion import (
    ContinuousSchedule,
    DiffusionWrapper,
    DiscreteSchedule,
    min_snr_weight,
    p2_weight,
    per_sample_loss,
    x0_to_target,
)

DATA_MEAN, DATA_STD = 0.2, 0.25


class GaussianDenoiser(nn.Module):
    """The exact noise prediction E[eps | x_t] for data x0 ~ N(DATA_MEAN, DATA_STD^2), independent per entry:
    sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2)."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the wrapper a device and a dtype
        self.calls = 0

    def forward(self, x_t, times, cond=None, **kwargs):
        self.calls += 1
        alpha, sigma = self.schedule.alpha_sigma(times, dtype=torch.float64)
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        alpha, sigma = alpha.reshape(shape), sigma.reshape(shape)
        eps = sigma * (x_t.double() - alpha * DATA_MEAN) / (alpha**2 * DATA_STD**2 + sigma**2)
        return eps.to(x_t.dtype) + self.anchor

    def forward_with_cond_scale(self, x_t, times, cond_scale=1.0, **kwargs):
        return self.forward(x_t, times, **kwargs)


class Wrapped(DiffusionWrapper, nn.Module):
    def __init__(self, schedule, **config):
        super().__init__()
        self.net = GaussianDenoiser(schedule)
        self.configure_diffusion(schedule=schedule, **config)

    @property
    def network(self):
        return self.net


def discrete(timesteps=100, **config):
    return Wrapped(DiscreteSchedule.from_name("cosine", timesteps), objective="eps", **config)


def test_q_sample_statistics():
    torch.manual_seed(0)
    model = discrete()
    x_start = torch.full((4, 1, 200, 200), 0.5)
    t = torch.tensor([0, 10, 50, 99])
    x_t = model.q_sample(x_start, t)
    abar = model.schedule.alphas_cumprod[t]
    for i in range(4):
        assert x_t[i].mean().item() == pytest.approx(abar[i].sqrt().item() * 0.5, abs=0.02)
        assert x_t[i].std().item() == pytest.approx((1 - abar[i]).sqrt().item(), rel=0.03)
    # with a given noise it is exactly alpha x0 + sigma noise, and predict_start_from_noise inverts it
    noise = torch.randn_like(x_start)
    x_t = model.q_sample(x_start, t, noise=noise)
    # (alpha is 2e-3 at the noisiest time: float32 rounding there is amplified 500 times)
    torch.testing.assert_close(model.predict_start_from_noise(x_t, t, noise)[:3], x_start[:3], atol=1e-4, rtol=0)
    mean, variance, log_variance = model.q_mean_variance(x_start, t)
    torch.testing.assert_close(mean[:, 0, 0, 0], (abar.sqrt() * 0.5).float())
    torch.testing.assert_close(variance.flatten(), (1 - abar).float())
    torch.testing.assert_close(log_variance.flatten(), (1 - abar).log().float())


def test_q_posterior_matches_the_ddpm_closed_form_in_float64():
    model = discrete(timesteps=50)
    betas = model.schedule.betas
    abar = model.schedule.alphas_cumprod
    abar_prev = torch.cat((torch.ones(1, dtype=torch.float64), abar[:-1]))
    t = torch.tensor([0, 1, 7, 25, 49])
    g = torch.Generator().manual_seed(1)
    x_start = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)

    mean, variance, log_variance = model.q_posterior(x_start, x_t, t)

    coef_x0 = betas[t] * abar_prev[t].sqrt() / (1 - abar[t])
    coef_xt = (1 - abar_prev[t]) * (1 - betas[t]).sqrt() / (1 - abar[t])
    expected_var = betas[t] * (1 - abar_prev[t]) / (1 - abar[t])
    assert mean.dtype == torch.float64
    torch.testing.assert_close(
        mean, coef_x0[:, None, None] * x_start + coef_xt[:, None, None] * x_t, atol=1e-12, rtol=1e-10
    )
    torch.testing.assert_close(variance.flatten(), expected_var, atol=1e-14, rtol=1e-10)
    torch.testing.assert_close(log_variance.flatten(), expected_var.clamp(min=1e-20).log(), atol=1e-10, rtol=1e-10)
    # t = 0 steps to the data itself: mean x0, no variance
    torch.testing.assert_close(mean[0], x_start[0])
    assert variance[0].item() == 0


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_p_sample_loop_with_an_exact_denoiser_matches_the_data_distribution(kind):
    # 1000 steps: the chain's own variance is then within 1% of the data's (0.1240 vs 0.125 for the discrete
    # cosine schedule, by the linear recursion of the Gaussian case; 0.117 with 100 steps)
    if kind == "discrete":
        model = discrete(timesteps=1000)
    else:
        model = Wrapped(ContinuousSchedule("cosine"), objective="eps", continuous_steps=1000)
    samples = model.p_sample_loop((2, 1, 64, 64), generator=torch.Generator().manual_seed(0), progress=False)
    assert model.net.calls == 1000
    # p_sample_loop returns [0, 1]: data N(mu, s^2) in [-1, 1] -> N((mu + 1) / 2, (s / 2)^2)
    assert samples.mean().item() == pytest.approx((DATA_MEAN + 1) / 2, abs=0.01)
    assert samples.std().item() == pytest.approx(DATA_STD / 2, rel=0.03)


def test_p_mean_variance_is_the_posterior_at_the_models_x0_estimate():
    model = discrete(timesteps=20)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([19, 5, 0])
    mean, variance, _ = model.p_mean_variance(x, t, clip_denoised=False)
    eps = model.net(x, t)
    expected, expected_var, _ = model.q_posterior(model.predict_start_from_noise(x, t, eps), x, t)
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(variance, expected_var)
    # the last step adds no noise
    torch.testing.assert_close(model.p_sample(x[2:], t[2:], clip_denoised=False), mean[2:])


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_p_losses_is_the_weighted_regression_on_the_target(objective):
    model = discrete(timesteps=50, loss_type="l2", min_snr_gamma=5.0, p2_loss_weight_gamma=0.5)
    model.objective = objective
    g = torch.Generator().manual_seed(3)
    x_start = torch.rand(4, 3, 2, 5, generator=g) * 2 - 1
    t = torch.tensor([1, 10, 30, 49])
    noise = torch.randn(x_start.shape, generator=g)
    loss = model.p_losses(x_start, t, noise=noise)

    alpha, sigma = model.schedule.alpha_sigma(t)
    x_t = model.schedule.add_noise(x_start, t, noise)
    pred = model.net(x_t, t)
    target = x0_to_target(x_start, noise, alpha, sigma, objective)
    snr = model.schedule.snr(t)
    weight = min_snr_weight(snr, 5.0, objective) * p2_weight(snr, gamma=0.5)
    expected = ((pred - target) ** 2).flatten(1).mean(1) * weight
    torch.testing.assert_close(loss, expected.mean())
    assert model.diffusion_loss(x_start, times=t, noise=noise).item() == loss.item()


def test_per_sample_loss_types_and_mask():
    pred, target = torch.tensor([[0.0, 3.0], [1.0, 1.0]]), torch.tensor([[0.5, 0.0], [1.0, 2.0]])
    torch.testing.assert_close(per_sample_loss(pred, target, "l1"), torch.tensor([1.75, 0.5]))
    torch.testing.assert_close(per_sample_loss(pred, target, "l2"), torch.tensor([(0.25 + 9) / 2, 0.5]))
    torch.testing.assert_close(per_sample_loss(pred, target, "huber"), torch.tensor([(0.125 + 2.5) / 2, 0.25]))
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(per_sample_loss(pred, target, "l1", mask), torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="loss_type"):
        per_sample_loss(pred, target, "l3")


def test_continuous_q_posterior_steps_between_any_two_times():
    model = Wrapped(ContinuousSchedule("cosine"), objective="eps", continuous_steps=10)
    x_start, x_t = torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    t, t_next = torch.tensor([0.9, 0.5]), torch.tensor([0.4, 0.0])
    mean, variance, _ = model.q_posterior(x_start, x_t, t, t_next)
    (a_t, s_t), (a_s, s_s) = (
        model.schedule.alpha_sigma(t, torch.float64),
        model.schedule.alpha_sigma(t_next, torch.float64),
    )
    # x0 = 0: the mean is x_t scaled by alpha_ts sigma_s^2 / sigma_t^2
    torch.testing.assert_close(mean[:, 0], (a_t / a_s) * s_s**2 / s_t**2)
    assert bool((variance > 0).all())
    # the default next time is one of `continuous_steps` steps earlier
    default_mean, _, _ = model.q_posterior(x_start, x_t, t)
    explicit, _, _ = model.q_posterior(x_start, x_t, t, t - 0.1)
    torch.testing.assert_close(default_mean, explicit)


def test_bad_inputs_name_the_argument():
    model = discrete(timesteps=10)
    with pytest.raises(TypeError, match="t:"):
        model.q_sample(torch.zeros(2, 3), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="noise"):
        model.q_sample(torch.zeros(2, 3), torch.tensor([1, 2]), noise=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="loss_type"):
        Wrapped(DiscreteSchedule.from_name("cosine", 10), loss_type="l5")
    with pytest.raises(TypeError, match="schedule"):
        Wrapped("cosine")
    assert math.isfinite(model.p_losses(torch.zeros(2, 3), torch.tensor([0, 9])).item())


def test_batched_cond_uncond_equals_two_separate_passes():
    from synthesis_core.diffusion import batched_cond_uncond

    calls = []

    def forward(x, time, *, drop_text=None, text=None, scale=1.0):
        calls.append(x.shape[0])
        null = torch.zeros(x.shape[0], dtype=torch.bool) if drop_text is None else drop_text
        used = torch.where(null[:, None], torch.zeros_like(text), text)
        return x * time[:, None] + used.sum(-1, keepdim=True) * scale

    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(3, 4, generator=g), torch.randn(3, 5, generator=g)
    cond, uncond = batched_cond_uncond(forward, x, torch.tensor(0.5), text=text, scale=2.0)
    assert calls == [6]  # one pass of twice the batch
    torch.testing.assert_close(cond, forward(x, torch.full((3,), 0.5), text=text, scale=2.0))
    torch.testing.assert_close(
        uncond, forward(x, torch.full((3,), 0.5), text=text, scale=2.0, drop_text=torch.ones(3, dtype=torch.bool))
    )


def test_training_time_range_draws_only_from_that_part_of_the_schedule():
    model = discrete(timesteps=100)
    times = model.sample_training_times(4000)
    assert int(times.min()) == 0 and int(times.max()) == 99  # default: the whole schedule
    model.training_time_range = (0.8, 1.0)
    times = model.sample_training_times(4000)
    assert int(times.min()) == 80 and int(times.max()) == 99
    # every one of those steps is drawn, about equally often
    counts = torch.bincount(times - 80, minlength=20).float()
    assert float(counts.min()) > 0.6 * float(counts.mean())

    continuous = Wrapped(ContinuousSchedule("cosine"), objective="eps")
    continuous.training_time_range = (0.25, 0.5)
    times = continuous.sample_training_times(2000)
    assert float(times.min()) >= 0.25 and float(times.max()) < 0.5
    assert abs(float(times.mean()) - 0.375) < 0.01

    # the training loss noises to those times
    seen = []
    model.network.forward = lambda x_t, t, **kwargs: seen.append(t) or torch.zeros_like(x_t)
    model.diffusion_loss(torch.zeros(64, 1, 2, 2))
    assert int(seen[0].min()) >= 80


@pytest.mark.parametrize("bad", [(0.5, 0.5), (0.9, 0.1), (-0.1, 0.5), (0.2, 1.5)])
def test_training_time_range_refuses_an_empty_or_out_of_range_interval(bad):
    model = discrete()
    model.training_time_range = bad
    with pytest.raises(ValueError, match="training_time_range"):
        model.sample_training_times(2)
