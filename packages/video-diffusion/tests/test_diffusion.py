"""GaussianDiffusion: exact sampling with an oracle model, training behaviour, ranges and errors."""

import pytest
import torch
from torch import nn

from synthesis_core.checkpoint import load_model_from_folder
from synthesis_core.diffusion import right_pad_dims_to
from video_diffusion_pytorch import GaussianDiffusion, Unet3D


def tiny_unet(**kwargs):
    return Unet3D(**{"dim": 8, "dim_mults": (1, 2), "attn_heads": 2, "attn_dim_head": 8, **kwargs})


def tiny_diffusion(unet=None, **kwargs):
    kwargs = {"image_size": 8, "num_frames": 3, "timesteps": 20, **kwargs}
    return GaussianDiffusion(default_unet() if unet is None else unet, **kwargs)


def default_unet():
    return tiny_unet()


class OracleModel(nn.Module):
    """Knows the data distribution is a single video `x0`: predicts the exact eps / x0 / v target for it."""

    channels = 3

    def __init__(self, x0, schedule, objective):
        super().__init__()
        self.register_buffer("x0", x0)
        self.schedule, self.objective = schedule, objective
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the diffusion a device
        self.calls = 0

    def forward(self, x, time, cond=None, **kwargs):
        self.calls += 1
        alpha, sigma = (right_pad_dims_to(x, v) for v in self.schedule.alpha_sigma(time))
        eps = (x - alpha * self.x0) / sigma
        return {"eps": eps, "x0": self.x0.expand_as(x), "v": alpha * eps - sigma * self.x0}[self.objective]

    def forward_with_cond_scale(self, x, time, cond=None, cond_scale=1.0, **kwargs):
        return self.forward(x, time)


def oracle_diffusion(objective, target01, **kwargs):
    diffusion = tiny_diffusion(unet=tiny_unet(), objective=objective, **kwargs)
    diffusion.model = OracleModel(target01 * 2 - 1, diffusion.schedule, diffusion.objective)
    return diffusion


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 5), ("dpmpp_2m", 4)])
def test_every_sampler_recovers_the_data_with_an_oracle_model(objective, sampler, steps):
    target = torch.rand(1, 3, 3, 8, 8)
    diffusion = oracle_diffusion(objective, target)
    out = diffusion.sample(batch_size=2, sampler=sampler, steps=steps, progress=False)
    assert out.shape == (2, 3, 3, 8, 8)
    torch.testing.assert_close(out, target.expand(2, -1, -1, -1, -1), atol=1e-4, rtol=0)
    assert diffusion.model.calls == (steps or 20)


def test_interpolate_mixes_in_data_space_and_returns_unit_range():
    x1, x2 = torch.rand(2, 3, 3, 8, 8), torch.rand(2, 3, 3, 8, 8)
    # an oracle of "no noise at all" returns x_t / alpha: interpolation from t=0 gives the mixture back
    diffusion = tiny_diffusion(timesteps=1000)

    class NoNoise(OracleModel):
        def forward(self, x, time, cond=None, **kwargs):
            return torch.zeros_like(x)

    diffusion.model = NoNoise(x1, diffusion.schedule, "eps")
    mixed = diffusion.interpolate(x1, x2, t=0, lam=0.25, progress=False)
    torch.testing.assert_close(mixed, 0.75 * x1 + 0.25 * x2, atol=0.05, rtol=0)

    diffusion = tiny_diffusion()
    out = diffusion.interpolate(x1, x2, progress=False)
    assert out.shape == x1.shape and 0 <= out.min() and out.max() <= 1


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    diffusion = tiny_diffusion(loss_type="l2", num_frames=2)
    videos = torch.rand(2, 3, 2, 8, 8)
    noise, times = torch.randn(2, 3, 2, 8, 8), torch.tensor([3, 12])
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=5e-3)
    losses = []
    for _ in range(12):
        loss = diffusion(videos, noise=noise, times=times)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_default_training_step_trains_the_null_condition():
    torch.manual_seed(0)
    diffusion = tiny_diffusion(unet=tiny_unet(cond_dim=4))
    null_embedding = diffusion.model.null_cond_emb
    videos, cond = torch.rand(8, 3, 3, 8, 8), torch.randn(8, 4)

    diffusion(videos, cond=cond, null_cond_prob=0.0).backward()
    assert null_embedding.grad is None or null_embedding.grad.abs().max() == 0

    for _ in range(10):  # default null_cond_prob=0.1: some of these 80 samples are dropped
        diffusion(videos, cond=cond).backward()
    assert null_embedding.grad.abs().max() > 0


def test_inputs_in_both_ranges_and_images_for_co_training():
    diffusion = tiny_diffusion(unet=tiny_unet(cond_dim=4))
    videos, noise, times = torch.rand(2, 3, 3, 8, 8), torch.randn(2, 3, 3, 8, 8), torch.tensor([2, 9])
    unit = diffusion(videos, noise=noise, times=times, null_cond_prob=0.0)
    symmetric = diffusion(videos * 2 - 1 - 1e-3 * (videos == 0), noise=noise, times=times, null_cond_prob=0.0)
    torch.testing.assert_close(unit, symmetric, atol=1e-3, rtol=0)  # same data, read from either range

    images = torch.rand(2, 3, 8, 8)  # (b, c, h, w): trained as one-frame videos
    loss = diffusion(images, cond=torch.randn(2, 4))
    loss.backward()
    assert torch.isfinite(loss)


def test_image_model_with_one_frame_trains_and_samples():
    diffusion = tiny_diffusion(num_frames=1, sample_steps=3, sampler="ddim")
    diffusion(torch.rand(2, 3, 1, 8, 8)).backward()
    assert diffusion.sample(batch_size=2, progress=False).shape == (2, 3, 1, 8, 8)


def test_text_conditioned_training_and_guided_sampling(tiny_bert):
    unet = tiny_unet(use_bert_text_cond=True, text_encoder_name=tiny_bert)
    diffusion = tiny_diffusion(unet=unet, text_use_bert_cls=True)
    captions = ["a red square moving left", "a blue circle moving right"]
    diffusion(torch.rand(2, 3, 3, 8, 8), cond=captions).backward()
    assert unet.cond_mlp[0].weight.grad.abs().max() > 0
    out = diffusion.sample(cond=captions, cond_scale=2.0, sampler="dpmpp_2m", steps=3, progress=False)
    assert out.shape == (2, 3, 3, 8, 8)


def test_sampling_is_deterministic_with_a_generator_and_thresholds():
    diffusion = tiny_diffusion(unet=tiny_unet(cond_dim=4), use_dynamic_thres=True)
    cond = torch.randn(2, 4)
    a = diffusion.sample(cond=cond, cond_scale=3.0, steps=4, generator=torch.Generator().manual_seed(1), progress=False)
    b = diffusion.sample(cond=cond, cond_scale=3.0, steps=4, generator=torch.Generator().manual_seed(1), progress=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert 0 <= a.min() and a.max() <= 1


def test_save_and_load_the_whole_diffusion(tmp_path):
    diffusion = tiny_diffusion(objective="v", beta_schedule="linear", loss_type="l2", timesteps=100)
    diffusion.save_pretrained(tmp_path / "model")
    loaded = load_model_from_folder(tmp_path / "model")
    assert isinstance(loaded, GaussianDiffusion) and isinstance(loaded.model, Unet3D)
    assert loaded.objective == "v" and loaded.num_frames == 3
    videos, noise, times = torch.rand(1, 3, 3, 8, 8), torch.randn(1, 3, 3, 8, 8), torch.tensor([5])
    torch.testing.assert_close(loaded(videos, noise=noise, times=times), diffusion(videos, noise=noise, times=times))


def test_bad_inputs_raise_clear_errors():
    diffusion = tiny_diffusion(unet=tiny_unet(cond_dim=4))
    with pytest.raises(ValueError, match=r"videos: expected shape \(batch, 3, 3, 8, 8\)"):
        diffusion(torch.rand(2, 3, 5, 8, 8))  # wrong frame count
    with pytest.raises(ValueError, match=r"videos: expected shape"):
        diffusion(torch.rand(2, 3, 3, 16, 16))  # wrong size
    with pytest.raises(ValueError, match="videos: expected pixel values"):
        diffusion(torch.rand(2, 3, 3, 8, 8) * 3)
    with pytest.raises(TypeError, match="videos"):
        diffusion(torch.randint(0, 255, (2, 3, 3, 8, 8)))
    with pytest.raises(ValueError, match="cond: expected shape"):
        diffusion(torch.rand(2, 3, 3, 8, 8), cond=torch.randn(2, 5))
    with pytest.raises(ValueError, match="cond: expected a batch of 2"):
        diffusion(torch.rand(2, 3, 3, 8, 8), cond=torch.randn(3, 4))
    with pytest.raises(ValueError, match="sampler"):
        diffusion.sample(batch_size=1, sampler="euler")
    with pytest.raises(ValueError, match="lam"):
        diffusion.interpolate(torch.rand(1, 3, 3, 8, 8), torch.rand(1, 3, 3, 8, 8), lam=2.0)
    with pytest.raises(ValueError, match="loss_type"):
        tiny_diffusion(loss_type="l3")
    with pytest.raises(ValueError, match="objective"):
        tiny_diffusion(objective="score")
    with pytest.raises(ValueError, match="channels"):
        tiny_diffusion(channels=1)
