"""Fixtures for the imagen-pytorch tests: single-threaded, offline, tiny.

Besides tiny real U-Nets, the cascade is tested with stand-in U-Nets that follow the U-Net interface exactly
(`forward`, `forward_with_cond_scale`, `cast_model_parameters` and the attributes the cascade reads):
- `GaussianUnet`: the exact optimal denoiser for data whose pixels are i.i.d. N(mu, s^2), so every sampler's
  output can be compared with the known distribution;
- `RecordingUnet`: returns a constant and records every call, to check what the cascade feeds its U-Nets.
They are handed to the tests through fixtures (the test modules are imported by path, not as a package).
"""

import pytest
import torch
from torch import nn

from synthesis_core.diffusion import ContinuousSchedule, EDMPreconditioning, cfg_combine
from synthesis_core.testing import build_tiny_t5, configure_test_process, seed_each_test  # noqa: F401

configure_test_process()

CAPTIONS = [
    "a whale breaching from afar",
    "young girl blowing out candles on her birthday cake",
    "fireworks with blue and green sparkles",
    "a squirrel examines an acorn",
]


# ---------------------------------------------------------------------------------------------------------------
# stand-in U-Nets


class StandInUnet(nn.Module):
    """The attributes and methods the cascade uses; subclasses define `predict(x, time, **kwargs)`."""

    is_video = False

    def __init__(self, *, channels=3, lowres_cond=False, self_cond=False, cond_on_text=False, text_embed_dim=16):
        super().__init__()
        self.channels = self.channels_out = channels
        self.lowres_cond, self.self_cond = lowres_cond, self_cond
        self.cond_on_text, self.text_embed_dim = cond_on_text, text_embed_dim
        self.cond_images_channels = 0
        self.dummy = nn.Parameter(torch.zeros(()))  # the cascade finds its device through its parameters

    def cast_model_parameters(self, *, lowres_cond, text_embed_dim, channels, channels_out, cond_on_text):
        # stand-ins keep what they were built with; the cascade's casting is tested with the real Unet
        self.lowres_cond = lowres_cond
        return self

    def forward(self, x, time, *, cond_drop_prob=0.0, **kwargs):
        return self.predict(x, time, cond_drop_prob=cond_drop_prob, **kwargs) + 0 * self.dummy

    def forward_with_cond_scale(self, x, time, *, cond_scale=1.0, **kwargs):
        cond = self.predict(x, time, cond_drop_prob=0.0, **kwargs)
        if cond_scale == 1:
            return cond
        return cfg_combine(cond, self.predict(x, time, cond_drop_prob=1.0, **kwargs), cond_scale)


class GaussianUnet(StandInUnet):
    """The optimal noise prediction for pixels i.i.d. N(mu, s^2) (in [-1, 1] space) under a VP schedule:
    E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu). With `edm_sigma_data`, the raw
    network output F of the EDM preconditioning instead (inputs c_in x and c_noise = log(sigma) / 4)."""

    def __init__(self, mu, s, schedule="cosine", edm_sigma_data=None, **kwargs):
        super().__init__(**kwargs)
        self.mu, self.s = mu, s
        self.schedule = ContinuousSchedule(schedule)
        self.edm = EDMPreconditioning(edm_sigma_data) if edm_sigma_data else None

    def predict(self, x, time, **kwargs):
        mu, var = self.mu, self.s**2
        if self.edm is not None:
            sigma = (time * 4).exp().view(-1, *(1,) * (x.ndim - 1))
            x_noisy = x / self.edm.c_in(sigma)
            x0 = mu + var / (var + sigma**2) * (x_noisy - mu)
            return (x0 - self.edm.c_skip(sigma) * x_noisy) / self.edm.c_out(sigma)
        alpha, sigma = self.schedule.alpha_sigma(time)
        alpha, sigma = alpha.view(-1, *(1,) * (x.ndim - 1)), sigma.view(-1, *(1,) * (x.ndim - 1))
        x0 = mu + alpha * var / (alpha**2 * var + sigma**2) * (x - alpha * mu)
        return (x - alpha * x0) / sigma


class RecordingUnet(StandInUnet):
    """Predicts the constant `value` everywhere and records the keyword arguments of every call."""

    def __init__(self, value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.value = value
        self.calls = []

    def predict(self, x, time, **kwargs):
        self.calls.append(
            dict(
                x=x.detach().clone(),
                time=time.detach().clone(),
                **{k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()},
            )
        )
        return torch.full_like(x, self.value)


@pytest.fixture
def gaussian_unet():
    return GaussianUnet


@pytest.fixture
def recording_unet():
    return RecordingUnet


def tiny_unet_kwargs(**overrides):
    """The smallest real U-Net worth testing (2 levels, dim 8, attention at the lower level)."""
    kwargs = dict(
        dim=8,
        dim_mults=(1, 2),
        num_resnet_blocks=1,
        layer_attns=(False, True),
        layer_cross_attns=(False, True),
        attn_heads=2,
        attn_dim_head=8,
        cond_dim=16,
        attn_pool_num_latents=4,
        num_time_tokens=1,
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def tiny_unet():
    """Builds a tiny real `Unet` (or `Unet3D` with `video=True`); keyword arguments override the defaults."""
    from imagen_pytorch import Unet, Unet3D

    def build(video=False, **overrides):
        return (Unet3D if video else Unet)(**tiny_unet_kwargs(**overrides))

    return build


# ---------------------------------------------------------------------------------------------------------------
# a tiny local T5


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A folder holding a tiny T5 encoder (d_model 16) and its tokenizer: what users pass as text_encoder_name."""
    return build_tiny_t5(
        tmp_path_factory.mktemp("tiny-t5"), CAPTIONS, d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=60
    )
