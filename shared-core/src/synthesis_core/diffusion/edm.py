"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

Variance-exploding view: x = x0 + sigma * noise. `EDMPreconditioning` wraps a raw network F into the denoiser
D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) and gives the training weights; `sample_edm` is Algorithm 2
(stochastic Heun) for any denoiser D.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from synthesis_core.checks import check_in_range, check_positive_int, check_tensor
from synthesis_core.diffusion.samplers import _call_denoise, prepare_inpaint, randn_like
from synthesis_core.diffusion.schedules import right_pad_dims_to

__all__ = ["EDMPreconditioning", "edm_euler_step", "edm_heun_step", "sample_edm"]


class EDMPreconditioning:
    """The EDM scalings for data of standard deviation `sigma_data` (Karras et al. 2022, Table 1).

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = log(sigma) / 4; loss_weight = 1 / c_out^2, which makes the weighted x0-loss an F-loss of unit scale.
    All methods take sigma of any shape and return tensors of that shape (pad with `right_pad_dims_to`).
    """

    def __init__(self, sigma_data: float = 0.5):
        check_in_range("sigma_data", sigma_data, 0.0, None)
        if sigma_data == 0:
            raise ValueError("sigma_data: expected a positive value, got 0")
        self.sigma_data = sigma_data

    def c_skip(self, sigma: Tensor) -> Tensor:
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: Tensor) -> Tensor:
        return sigma * self.sigma_data * (sigma**2 + self.sigma_data**2).rsqrt()

    def c_in(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + self.sigma_data**2).rsqrt()

    def c_noise(self, sigma: Tensor) -> Tensor:
        return sigma.clamp(min=1e-20).log() * 0.25

    def loss_weight(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def sample_training_sigmas(
        self,
        batch_size: int,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Log-normal training noise levels: exp(P_mean + P_std * n), n ~ N(0, 1), shape (batch_size,)."""
        check_positive_int("batch_size", batch_size)
        normal = torch.randn((batch_size,), generator=generator, device=generator.device if generator else device)
        return (P_mean + P_std * normal).exp().to(device)

    def denoise(self, network: Callable[..., Tensor], x: Tensor, sigma: Tensor, **network_kwargs: Any) -> Tensor:
        """D(x, sigma) = c_skip x + c_out network(c_in x, c_noise, **network_kwargs) for sigma of shape (b,)."""
        sigma = sigma.to(device=x.device, dtype=torch.float32)
        padded = right_pad_dims_to(x, sigma)
        out = network(self.c_in(padded) * x, self.c_noise(sigma), **network_kwargs)
        return self.c_skip(padded) * x + self.c_out(padded) * out

    def network_target(self, x0: Tensor, x_noised: Tensor, sigma: Tensor) -> Tensor:
        """The regression target of the raw network: (x0 - c_skip x) / c_out (so that D(x) = x0 exactly)."""
        padded = right_pad_dims_to(x0, sigma)
        return (x0 - self.c_skip(padded) * x_noised) / self.c_out(padded)

    def __repr__(self) -> str:
        return f"EDMPreconditioning(sigma_data={self.sigma_data})"


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 2


def edm_euler_step(x_hat: Tensor, x0_hat: Tensor, sigma_hat: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
    """Euler step of dx/dsigma = (x - D(x)) / sigma; returns (x_next, derivative at sigma_hat)."""
    d = (x_hat - x0_hat) / sigma_hat
    return x_hat + (sigma_next - sigma_hat) * d, d


def edm_heun_step(
    x_hat: Tensor, d: Tensor, x0_hat_next: Tensor, x_next_euler: Tensor, sigma_hat: Tensor, sigma_next: Tensor
) -> Tensor:
    """Heun correction: average the Euler derivative `d` with the one at the Euler proposal (sigma_next > 0)."""
    d_next = (x_next_euler - x0_hat_next) / sigma_next
    return x_hat + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)


@torch.no_grad()
def sample_edm(
    denoise: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    sigmas: Tensor,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
    heun: bool = True,
    progress: bool = True,
    inpaint: Sequence[Tensor] | None = None,
    resample_times: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Karras et al. 2022 Algorithm 2: stochastic Heun sampling of x = x0 + sigma * noise.

    - `denoise(x, sigma_batch) -> x0_hat` with sigma_batch of shape (batch,) (the caller applies EDM
      preconditioning, see `EDMPreconditioning.denoise`).
    - `x_T`: noise already scaled by sigmas[0] (e.g. `sigmas[0] * randn`).
    - `sigmas`: descending noise levels ending with 0 (see `karras_sigmas`); one step per consecutive pair,
      Heun (2 calls) except the last step to sigma = 0, which is Euler (and returns D at the last sigma).
    - `S_churn` adds noise (gamma = min(S_churn / N, sqrt(2) - 1) for sigmas in [S_tmin, S_tmax]), `S_noise`
      inflates it. `inpaint=(known_x0, keep_mask)` pastes the known image noised to each new sigma into the kept
      region; `resample_times=r` redoes each step r-1 more times after re-noising it back (RePaint).
    """
    if not callable(denoise):
        raise TypeError(f"denoise: expected a callable (x, sigma_batch) -> x0_hat, got {type(denoise).__name__}")
    check_tensor("x_T", x_T, dtype_floating=True)
    if x_T.ndim < 2:
        raise ValueError(f"x_T: expected a batched tensor (batch, ...), got shape {tuple(x_T.shape)}")
    check_tensor("sigmas", sigmas, ndim=1, dtype_floating=True)
    sigma_list = sigmas.detach().double().cpu().tolist()
    if len(sigma_list) < 2 or any(a <= b for a, b in zip(sigma_list[:-1], sigma_list[1:])) or sigma_list[-1] < 0:
        raise ValueError(f"sigmas: expected at least 2 strictly descending non-negative noise levels, got {sigma_list}")
    check_in_range("S_churn", S_churn, 0.0, None)
    check_in_range("S_noise", S_noise, 0.0, None)
    check_positive_int("resample_times", resample_times)
    inpaint = prepare_inpaint(inpaint, x_T)

    x = x_T
    batch, num_steps = x.shape[0], len(sigma_list) - 1
    sigmas = sigmas.to(device=x.device, dtype=torch.float32)
    gamma_max = min(S_churn / num_steps, math.sqrt(2) - 1)

    def call(x_now: Tensor, sigma: Tensor) -> Tensor:
        return _call_denoise(denoise, x_now, sigma.expand(batch))

    def paste_known(x_now: Tensor, sigma: Tensor, known_keep: tuple[Tensor, Tensor]) -> Tensor:
        known, keep = known_keep
        return keep * (known + sigma * randn_like(known, generator)) + (1 - keep) * x_now

    if inpaint is not None:
        x = paste_known(x, sigmas[0], inpaint)

    x0_hat = x
    for i in tqdm(range(num_steps), desc="sampling (edm)", disable=not progress, leave=False):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # churn is decided on the host from the Python list: no data-dependent control flow on device values
        gamma = gamma_max if S_tmin <= sigma_list[i] <= S_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        last = sigma_list[i + 1] == 0

        for r in range(resample_times if inpaint is not None else 1):
            x_hat = x
            if gamma > 0:
                x_hat = x + (sigma_hat**2 - sigma**2).sqrt() * S_noise * randn_like(x, generator)
            x0_hat = call(x_hat, sigma_hat)
            x_next, d = edm_euler_step(x_hat, x0_hat, sigma_hat, sigma_next)
            if heun and not last:
                x_next = edm_heun_step(x_hat, d, call(x_next, sigma_next), x_next, sigma_hat, sigma_next)
            if inpaint is not None and not last:
                x_next = paste_known(x_next, sigma_next, inpaint)
                if r < resample_times - 1:
                    x_next = x_next + (sigma**2 - sigma_next**2).sqrt() * randn_like(x, generator)
            if last:
                break
            x = x_next
        x = x_next

    if inpaint is not None:
        known, keep = inpaint
        x = keep * known + (1 - keep) * x
    return x
